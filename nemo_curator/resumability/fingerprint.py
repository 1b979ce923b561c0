"""Pipeline fingerprints: a stable hash of the stage sequence and each stage's configuration.

A checkpoint records the fingerprint of the pipeline that wrote it; resuming with a different
pipeline is refused (``FingerprintMismatchError``) unless the user explicitly allows it.

What counts, per stage, in order:
- the stage class (``module.qualname``);
- its configuration: dataclass fields for dataclass stages, else the public instance attributes,
  plus ``name`` either way; minus ``resources``, ``batch_size`` (they change how, not what, a
  stage computes) and every attribute the stage lists in ``fingerprint_ignore`` (e.g. input paths);
- never storage options (an attribute ``storage_options``, or that key of a dict attribute such
  as ``read_kwargs``): they say how to reach the data, not what is computed, they hold
  credentials that the checkpoint would keep in clear, and a rotated token would refuse a resume.

Values are made canonical so that the hash is stable across processes and runs: dict keys and
sets are sorted, memory addresses are stripped from reprs, callables and classes count by
``module.qualname``, dataclasses and plain objects by class and public attributes (to a depth
of 8). Nothing uses Python's randomized ``hash()``. A stage holding something large or volatile
in a public attribute (a loaded model, a client) should list it in ``fingerprint_ignore`` or
create it in ``setup()``.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

FINGERPRINT_VERSION = 1

#: Attributes never part of a stage's fingerprint (they change how, not what, it computes).
EXCLUDED_ATTRIBUTES = frozenset({"resources", "batch_size", "fingerprint_ignore", "storage_options"})
#: A key left out of every dict attribute (e.g. ``read_kwargs["storage_options"]``).
EXCLUDED_KEY = "storage_options"

_MAX_DEPTH = 8
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{4,}")


def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "?"
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__qualname__
    return f"{module}.{name}"


def _strip_addresses(text: str) -> str:
    return _ADDRESS.sub("0x?", text)


def _sort_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def canonical(value: Any, _depth: int = 0, _seen: frozenset[int] = frozenset()) -> Any:
    """A JSON-serialisable, process-independent form of ``value`` (see the module docstring)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return {"float": repr(value)}
    if _depth > _MAX_DEPTH or id(value) in _seen:
        return {"ref": _qualname(type(value))}
    seen = _seen | {id(value)}
    depth = _depth + 1
    if isinstance(value, enum.Enum):
        return {"enum": f"{_qualname(type(value))}.{value.name}"}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"bytes": hashlib.blake2b(bytes(value), digest_size=16).hexdigest()}
    if isinstance(value, PurePath):
        return {"path": str(value)}
    if isinstance(value, Mapping):
        items = [[canonical(k, depth, seen), canonical(v, depth, seen)] for k, v in value.items()]
        return {"dict": sorted(items, key=_sort_key)}
    if isinstance(value, list | tuple):
        return [canonical(v, depth, seen) for v in value]
    if isinstance(value, set | frozenset):
        return {"set": sorted((canonical(v, depth, seen) for v in value), key=_sort_key)}
    if isinstance(value, type):
        return {"class": _qualname(value)}
    if isinstance(value, functools.partial):
        return {
            "partial": canonical(value.func, depth, seen),
            "args": canonical(value.args, depth, seen),
            "kwargs": canonical(value.keywords, depth, seen),
        }
    if dataclasses.is_dataclass(value):
        return {
            "dataclass": _qualname(type(value)),
            "fields": {
                f.name: canonical(getattr(value, f.name, None), depth, seen)
                for f in dataclasses.fields(value)
                if not f.name.startswith("_")
            },
        }
    if callable(value) and hasattr(value, "__qualname__"):
        owner = getattr(value, "__self__", None)
        if owner is not None and not isinstance(owner, type) and not _is_module(owner):
            return {"method": _qualname(value), "of": canonical(owner, depth, seen)}
        return {"callable": _qualname(value)}
    if type(value).__repr__ is object.__repr__ and hasattr(value, "__dict__"):
        attrs = {k: canonical(v, depth, seen) for k, v in sorted(vars(value).items()) if not k.startswith("_")}
        return {"object": _qualname(type(value)), "attrs": attrs}
    return {"repr": _qualname(type(value)), "value": _strip_addresses(repr(value))}


def _is_module(obj: Any) -> bool:
    return type(obj).__name__ == "module"


def stage_config(stage: Any) -> dict[str, Any]:
    """The canonical configuration of one stage (the part of it that the fingerprint covers)."""
    ignore = set(EXCLUDED_ATTRIBUTES) | set(getattr(stage, "fingerprint_ignore", ()) or ())
    fields = [f.name for f in dataclasses.fields(stage)] if dataclasses.is_dataclass(stage) else list(vars(stage))
    names = [n for n in fields if not n.startswith("_")]
    if "name" not in names:
        names.append("name")
    return {
        n: canonical(_without_storage_options(getattr(stage, n, None))) for n in sorted(set(names)) if n not in ignore
    }


def _without_storage_options(value: Any) -> Any:
    if isinstance(value, Mapping) and EXCLUDED_KEY in value:
        return {k: v for k, v in value.items() if k != EXCLUDED_KEY}
    return value


def describe_fingerprint(stages: Sequence[Any]) -> list[dict[str, Any]]:
    """Per stage: ``index``, ``class``, ``name``, canonical ``config`` and its ``digest`` (JSON-serialisable)."""
    out: list[dict[str, Any]] = []
    for i, stage in enumerate(stages):
        config = stage_config(stage)
        cls = _qualname(type(stage))
        payload = json.dumps({"class": cls, "config": config}, sort_keys=True, separators=(",", ":"))
        out.append(
            {
                "index": i,
                "class": cls,
                "name": str(getattr(stage, "name", "")),
                "config": config,
                "digest": hashlib.blake2b(payload.encode(), digest_size=8).hexdigest(),
            }
        )
    return out


def fingerprint_of_description(description: Sequence[Mapping[str, Any]]) -> str:
    """The pipeline fingerprint (32 hex digits) of a ``describe_fingerprint`` result."""
    payload = json.dumps(
        {"version": FINGERPRINT_VERSION, "stages": [{"class": d["class"], "config": d["config"]} for d in description]},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


def pipeline_fingerprint(stages: Sequence[Any]) -> str:
    """A stable hash (32 hex digits) of the stage classes and their configuration, in order."""
    return fingerprint_of_description(describe_fingerprint(stages))


_SCALAR_TAGS = ("float", "enum", "class", "callable", "path", "bytes")


def _short(value: Any, limit: int = 80) -> str:
    """A canonical value for people: ``0.5`` rather than ``{"float": "0.5"}``; strings keep quotes."""
    if value is _ABSENT:
        return "<absent>"
    tag, inner = next(iter(value.items())) if isinstance(value, dict) and len(value) == 1 else (None, None)
    text = inner if tag in _SCALAR_TAGS and isinstance(inner, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_ABSENT = object()


def diff_descriptions(stored: Sequence[Mapping[str, Any]] | None, current: Sequence[Mapping[str, Any]]) -> list[str]:
    """Human lines naming the stages that differ (empty when ``stored`` is unknown or identical)."""
    if not stored:
        return []
    lines: list[str] = []
    if len(stored) != len(current):
        lines.append(f"number of stages changed: {len(stored)} -> {len(current)}")
    for i in range(max(len(stored), len(current))):
        if i >= len(stored):
            new = current[i]
            lines.append(f"stage {i} added: {new['class']} (name {new['name']!r})")
            continue
        if i >= len(current):
            old = stored[i]
            lines.append(f"stage {i} removed: {old['class']} (name {old['name']!r})")
            continue
        old, new = stored[i], current[i]
        if old["class"] != new["class"]:
            lines.append(f"stage {i}: class changed {old['class']} -> {new['class']}")
            continue
        old_cfg, new_cfg = old.get("config", {}), new.get("config", {})
        for key in sorted(set(old_cfg) | set(new_cfg)):
            a, b = old_cfg.get(key, _ABSENT), new_cfg.get(key, _ABSENT)
            if a != b:
                lines.append(f"stage {i} ({new['name']!r}): {key}: {_short(a)} -> {_short(b)}")
    return lines
