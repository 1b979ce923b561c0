"""Pipeline fingerprints: stable across processes, sensitive to configuration, blind to resources."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from nemo_curator.resumability.fingerprint import (
    canonical,
    describe_fingerprint,
    diff_descriptions,
    fingerprint_of_description,
    pipeline_fingerprint,
)
from nemo_curator.stages.resources import Resources
from tests.resumability.examples import budget
from tests.resumability.fingerprint_stages import Helper, Mode, PlainStage, ScoreFilter

PIPELINE_CODE = """
from nemo_curator.resumability.fingerprint import pipeline_fingerprint
from tests.resumability.fingerprint_stages import Helper, Mode, PlainStage, ScoreFilter
stages = [
    ScoreFilter(min_score=0.25, options={"b": 2, "a": {1, 2, 3}}, mode=Mode.EXACT, helper=Helper(0.1)),
    PlainStage(factor=3),
]
print(pipeline_fingerprint(stages))
"""


def _pipeline() -> list[object]:
    return [
        ScoreFilter(min_score=0.25, options={"a": {3, 2, 1}, "b": 2}, mode=Mode.EXACT, helper=Helper(0.1)),
        PlainStage(factor=3),
    ]


def test_fingerprint_is_stable_across_processes() -> None:
    root = Path(__file__).resolve().parents[2]
    outputs = {
        subprocess.run(
            [sys.executable, "-c", PIPELINE_CODE],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": str(seed), "PATH": "/usr/bin:/bin"},
        ).stdout.strip()
        for seed in (1, 2)
    }
    assert outputs == {pipeline_fingerprint(_pipeline())}
    assert len(outputs.pop()) == 32


def test_configuration_changes_change_the_fingerprint() -> None:
    base = pipeline_fingerprint(_pipeline())
    variants = [
        [
            ScoreFilter(min_score=0.3, options={"a": {1, 2, 3}, "b": 2}, mode=Mode.EXACT, helper=Helper(0.1)),
            _pipeline()[1],
        ],
        [
            ScoreFilter(min_score=0.25, options={"a": {1, 2}, "b": 2}, mode=Mode.EXACT, helper=Helper(0.1)),
            _pipeline()[1],
        ],
        [
            ScoreFilter(min_score=0.25, options={"a": {1, 2, 3}, "b": 2}, mode=Mode.FAST, helper=Helper(0.1)),
            _pipeline()[1],
        ],
        [
            ScoreFilter(min_score=0.25, options={"a": {1, 2, 3}, "b": 2}, mode=Mode.EXACT, helper=Helper(0.2)),
            _pipeline()[1],
        ],
        [
            ScoreFilter(
                min_score=0.25, options={"a": {1, 2, 3}, "b": 2}, mode=Mode.EXACT, helper=Helper(0.1), fn=str.upper
            ),
            _pipeline()[1],
        ],
        [_pipeline()[0], PlainStage(factor=4)],
        [_pipeline()[0], PlainStage(factor=3, label="y")],
        [_pipeline()[1], _pipeline()[0]],
        [_pipeline()[0]],
        [_pipeline()[0].with_(name="renamed"), _pipeline()[1]],
    ]
    prints = [pipeline_fingerprint(v) for v in variants]
    assert base not in prints
    assert len(set(prints)) == len(prints)


def test_resources_batch_size_ignored_attributes_and_private_state_do_not_count() -> None:
    base = pipeline_fingerprint(_pipeline())
    first, second = _pipeline()
    first.with_(resources=Resources(cpus=4.0), batch_size=64)
    first.input_path = "/somewhere/else"
    second._cache["x"] = 1
    second.resources = Resources(cpus=2.0)
    assert pipeline_fingerprint([first, second]) == base


def test_canonical_values_strip_addresses_and_name_callables() -> None:
    helper = Helper(0.5)
    value = canonical({"fn": len, "lam": partial(int, base=2), "obj": helper, "cls": Helper, "meth": helper.__init__})
    text = json.dumps(value)
    assert "0x" not in text
    assert "builtins.len" in text and "tests.resumability.fingerprint_stages.Helper" in text

    class Opaque:
        def __repr__(self) -> str:
            return f"<Opaque at {hex(id(self))}>"

    assert canonical(Opaque()) == canonical(Opaque())


@budget()
@given(
    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5) | st.floats(allow_nan=False), max_size=8)
)
def test_dict_order_does_not_matter(mapping: dict[str, object]) -> None:
    reversed_mapping = dict(reversed(list(mapping.items())))
    assert canonical(mapping) == canonical(reversed_mapping)
    assert json.loads(json.dumps(canonical(mapping))) == canonical(mapping)


def test_describe_and_diff_name_the_changed_stage() -> None:
    old = describe_fingerprint(_pipeline())
    assert fingerprint_of_description(old) == pipeline_fingerprint(_pipeline())
    assert [d["class"] for d in old] == [
        "tests.resumability.fingerprint_stages.ScoreFilter",
        "tests.resumability.fingerprint_stages.PlainStage",
    ]
    assert "input_path" not in old[0]["config"] and "resources" not in old[0]["config"]
    assert old[1]["config"] == {"factor": 3, "label": "x", "name": "plain"}
    stored = json.loads(json.dumps(old))  # as read back from the checkpoint metadata
    changed = _pipeline()
    changed[1] = PlainStage(factor=5)
    lines = diff_descriptions(stored, describe_fingerprint(changed))
    assert lines == ["stage 1 ('plain'): factor: 3 -> 5"]
    lines = diff_descriptions(stored, describe_fingerprint(_pipeline()[:1]))
    assert "number of stages changed: 2 -> 1" in lines and any("stage 1 removed" in line for line in lines)
    assert diff_descriptions(None, old) == []
    tweaked = [ScoreFilter(min_score=0.5, options={"a": {1, 2, 3}, "b": 2}, mode=Mode.FAST), PlainStage(label="y")]
    lines = diff_descriptions(stored, describe_fingerprint(tweaked))
    assert lines[0].startswith("stage 0 ('score_filter'): helper: {") and lines[0].endswith("... -> null")
    assert lines[1:] == [
        "stage 0 ('score_filter'): min_score: 0.25 -> 0.5",
        "stage 0 ('score_filter'): mode: tests.resumability.fingerprint_stages.Mode.EXACT -> "
        "tests.resumability.fingerprint_stages.Mode.FAST",
        "stage 1 ('plain'): factor: 3 -> 2",
        'stage 1 (\'plain\'): label: "x" -> "y"',
    ]
