"""From a backend's failure to the error a run raises: the adapter's ``StageError``, unwrapped.

A stage that raises inside a worker reaches the driver wrapped: Ray re-raises it as a
``RayTaskError`` (a subclass of both Ray's error and the original type, keeping the original
in ``.cause``), and the backend may wrap that again (Ray Data's ``UserCodeException``,
cosmos-xenna's ``RuntimeError(...) from`` it for a failed ``setup``). The caller gets the
adapter's own ``StageError`` instead, which names the stage and the task and chains the
user's exception as ``__cause__``, with the worker's traceback (as Ray formatted it) as a
note.

Frames: the tracebacks of the wrappers reach into the backend's driver-side frames, whose
locals hold the backend's scheduler and with it handles of the run's workers. Ray stops a
worker only once every handle is released, so those frames are cleared before the error is
raised, and the error is raised outside the ``except`` block (so the wrapper is not kept as
its ``__context__``). This matters most for cosmos-xenna: in cosmos-xenna 0.5.12 a worker
whose ``setup`` raised is dropped from its pool's books before the pool deletes it, so xenna
never kills it, and only releasing the handles its frames hold lets Ray stop it.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterator

from nemo_curator.backends.stage_adapter import StageError

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception linked from it (Ray's ``.cause``, causes, contexts), once each."""
    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        current = pending.pop(0)
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        # Ray's ``RayTaskError`` keeps the remote exception in ``.cause``.
        pending.extend([getattr(current, "cause", None), current.__cause__, current.__context__])


def find_stage_error(exc: BaseException) -> StageError | None:
    """The adapter's ``StageError`` inside whatever wrapped it, if any.

    Ray's dual-class wrapper of a ``StageError`` is itself a ``StageError`` whose ``.cause`` is
    the original; the original is returned (the first one in ``exception_chain`` order), or a
    wrapper if no original is linked.
    """
    found: StageError | None = None
    for current in exception_chain(exc):
        if isinstance(current, StageError):
            if not isinstance(getattr(current, "cause", None), StageError):
                return current
            found = found or current
    return found


def clear_traceback_frames(exc: BaseException) -> None:
    """Clear the locals of every finished frame in the tracebacks of ``exc`` and its chain."""
    for current in exception_chain(exc):
        if current.__traceback__ is not None:
            traceback.clear_frames(current.__traceback__)


def _remote_error(exc: BaseException) -> BaseException | None:
    """The first ``RayTaskError`` in the chain of ``exc`` (Ray's report of a worker's failure)."""
    from ray.exceptions import RayTaskError

    return next((e for e in exception_chain(exc) if isinstance(e, RayTaskError)), None)


def error_to_raise(
    exc: BaseException,
    *,
    where: str,
    stage_name: str | None = None,
    unwrap_remote: bool = True,
) -> BaseException:
    """The exception to raise for ``exc``, a run's (or a call's) failure as the backend raised it.

    - the adapter's ``StageError`` behind ``exc`` if there is one;
    - else, with ``unwrap_remote``, the exception a worker raised (Ray's ``RayTaskError.cause``),
      wrapped in a ``StageError`` when ``stage_name`` says which stage's worker it was;
    - else ``exc`` itself.
    Whatever is returned instead of ``exc`` carries Ray's report of the worker's failure as a
    note ``raised in <where>: ...``. The frames of ``exc``'s chain are cleared (see the module
    docstring); raise the result outside the ``except`` block that caught ``exc``.
    """
    clear_traceback_frames(exc)
    remote = _remote_error(exc)
    original: BaseException | None = find_stage_error(exc)
    if original is None and unwrap_remote and remote is not None:
        cause = getattr(remote, "cause", None)
        if isinstance(cause, Exception):
            original = cause if stage_name is None else StageError(stage_name, "<batch>", cause)
    if original is None or original is exc:
        return exc
    report = _ANSI_ESCAPE.sub("", str(remote if remote is not None else exc)).strip()
    if report:
        original.add_note(f"raised in {where}:\n{report}")
    return original
