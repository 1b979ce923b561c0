"""The ``map_batches`` callables of the Ray Data executor and the packs of tasks they exchange.

Tasks travel through the dataset in *packs*: each row of the dataset's one column, ``tasks``,
is a list of tasks, each pickled by the framework (``large_list<large_binary>``). Encoding the
objects ourselves keeps Ray Data from trying (and failing, with a warning per block) to convert
arbitrary Python objects to Arrow, and makes the column type independent of the tasks'
contents: pandas or pyarrow payloads, sentinels, lineage and task ids all round-trip unchanged.

Why packs: Ray Data's cost is per row it batches and per block it schedules, not per byte
(measured on 2 CPUs: a map task per block costs tens of milliseconds of the driver's
scheduling loop, and batching a block row by row about as much per row). A call's outputs are
packed into ``pack_sizes`` rows: as few as possible, but as many as the call multiplied its
tasks (up to ``spread``, twice the cluster's CPUs), so that what a source or a fan-out made
still spreads over the workers of the next stage; and never more than ``max_tasks``
tasks (nor ``max_bytes`` of pickled tasks) in a pack, so that a pack's tasks are not held up for
long by each other, on the way to the next stage or (for the last stage) to the driver and the
checkpoint, and packs of large payloads stay bounded. With the executor's
default block size every row is a block of its own.

The last stage's outputs of one call travel as one pack: only the driver consumes them, so
more rows would buy no parallelism.

Every callable does the same thing and nothing more: decode the batch, hand the tasks to
``StageAdapter.process_batch`` in chunks of the stage's ``batch_size`` and encode the list it
returns, unchanged and in order (sentinels included). Only the adapter calls user code;
fan-out and filtering change the number of tasks, which ``map_batches`` allows.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
from loguru import logger

from nemo_curator.backends.stage_adapter import StageAdapter, StageError
from nemo_curator.tasks import Task

if TYPE_CHECKING:
    import ray.data

#: The dataset's only column: each row is a pack of pickled tasks.
TASKS_COLUMN = "tasks"
#: 64-bit offsets: one block of large payloads may exceed 2 GiB.
_COLUMN_TYPE = pa.large_list(pa.large_binary())


def pack_sizes(n: int, inputs: int, spread: int, max_tasks: int) -> list[int]:
    """How many of the ``n`` outputs of a call on ``inputs`` tasks go in each pack, in order.

    Invariants: the sizes sum to ``n``; every pack holds at least one and at most ``max_tasks``
    tasks; sizes differ by at most one (no straggler pack); a call that multiplies its tasks
    (a fan-out, a source) makes at least ``min(spread, n / inputs)`` packs, so that what one
    input became can spread over that many workers of the next stage, while a call that does
    not (a 1:1 map, a filter) keeps its input's packs whole.
    """
    if n <= 0:
        return []
    growth = -(-n // max(inputs, 1))
    packs = min(n, max(-(-n // max(max_tasks, 1)), min(max(spread, 1), growth)))
    base, extra = divmod(n, packs)
    return [base + 1] * extra + [base] * (packs - extra)


def encode_tasks(tasks: list[Task], sizes: list[int] | None = None, max_bytes: int | None = None) -> pa.Table:
    """The tasks in order, one pack (row) per entry of ``sizes`` (default: one task per pack).

    With ``max_bytes`` a pack is cut where its pickled tasks would exceed that many bytes (a
    task larger than that alone is a pack of its own), so packs of large payloads stay bounded.
    """
    from ray import cloudpickle  # by value for classes defined in ``__main__``

    blobs = [cloudpickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL) for task in tasks]
    if sizes is None:
        rows = [[blob] for blob in blobs]
    else:
        assert sum(sizes) == len(blobs), (sizes, len(blobs))
        rows, at = [], 0
        for size in sizes:
            rows.extend(_cut(blobs[at : at + size], max_bytes))
            at += size
    return pa.table({TASKS_COLUMN: pa.array(rows, type=_COLUMN_TYPE)})


def _cut(blobs: list[bytes], max_bytes: int | None) -> list[list[bytes]]:
    """``blobs`` in consecutive runs of at most ``max_bytes`` bytes each (a larger blob alone)."""
    if max_bytes is None or sum(map(len, blobs)) <= max_bytes:
        return [blobs]
    runs: list[list[bytes]] = [[]]
    held = 0
    for blob in blobs:
        if runs[-1] and held + len(blob) > max_bytes:
            runs.append([])
            held = 0
        runs[-1].append(blob)
        held += len(blob)
    return runs


def decode_tasks(batch: pa.Table) -> list[Task]:
    """The tasks of a batch (or block) made by :func:`encode_tasks`, in order, packs unpacked."""
    return [pickle.loads(blob) for row in batch.column(TASKS_COLUMN).to_pylist() for blob in row]


@dataclass(frozen=True)
class Packing:
    """How one stage's callable batches its input and packs its output.

    ``batch_size``: tasks per ``process_batch`` call (the stage's own ``batch_size``).
    ``spread`` and ``max_tasks``: see :func:`pack_sizes`. ``max_bytes``: see :func:`encode_tasks`.
    ``last``: the last stage, whose outputs of one call leave as one pack (within ``max_bytes``).
    """

    batch_size: int = 1
    spread: int = 1
    max_tasks: int = 1
    max_bytes: int | None = None
    last: bool = False

    def sizes(self, n: int, inputs: int) -> list[int]:
        if self.last:
            return [n] if n else []
        return pack_sizes(n, inputs, self.spread, self.max_tasks)


def _run_stage(adapter: StageAdapter, packing: Packing, batch: pa.Table) -> pa.Table:
    tasks = decode_tasks(batch)
    # Only a stage with its own ``process_batch`` sees batches; the adapter hands the others
    # their tasks one by one anyway (and a source stage filters a whole call at once).
    step = packing.batch_size if adapter.stage.overrides_process_batch() else len(tasks)
    if len(tasks) <= step:
        outputs = adapter.process_batch(tasks)
    else:
        outputs = [out for at in range(0, len(tasks), step) for out in adapter.process_batch(tasks[at : at + step])]
    return encode_tasks(outputs, packing.sizes(len(outputs), len(tasks)), packing.max_bytes)


class StageBatchFn:
    """``map_batches`` callable for stages without ``setup``/``teardown`` (run as Ray tasks).

    ``packing``: how it batches its input and packs its output (see :class:`Packing`).
    """

    def __init__(self, adapter: StageAdapter, packing: Packing) -> None:
        self._adapter = adapter
        self._packing = packing

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _run_stage(self._adapter, self._packing, batch)


class StageActor:
    """``map_batches`` callable class for stages with ``setup``/``teardown`` (an actor pool).

    Ray Data constructs one instance per actor: the constructor runs ``setup`` once, before
    any batch. ``teardown`` runs from ``__del__``, which Ray Data triggers when it releases an
    actor gracefully (pool shut down at the end of the run, or scaled down); it is best effort:
    an actor that crashes or is killed with ``ray.kill`` never runs it.

    A ``setup`` that raises does not fail the constructor: Ray would report that only as text
    (``ActorDiedError``). The adapter's ``StageError`` is kept and raised by every batch the
    actor receives instead, so the run fails with the error object itself.

    The adapter and its ``packing`` are class attributes of a per-stage subclass (see
    :func:`stage_actor_class`), so they travel with the class definition rather than as
    constructor arguments.
    """

    adapter_template: StageAdapter
    packing: Packing = Packing()

    def __init__(self) -> None:
        self._adapter = self.adapter_template
        self._set_up = False
        self._setup_error: StageError | None = None
        try:
            self._adapter.setup()
        except StageError as exc:
            self._setup_error = exc
            return
        self._set_up = True

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self._setup_error is not None:
            raise self._setup_error
        return _run_stage(self._adapter, self.packing, batch)

    def __del__(self) -> None:
        if not getattr(self, "_set_up", False):
            return
        self._set_up = False
        try:
            self._adapter.teardown()
        except Exception as exc:  # never raise from a finalizer
            logger.warning("teardown of stage {!r} failed: {}", self._adapter.stage.name, exc)


def stage_batch_fn(adapter: StageAdapter, packing: Packing) -> StageBatchFn:
    """The task callable of one stage; its class is named after the stage (Ray Data's operator name)."""
    cls = type(adapter.stage.name, (StageBatchFn,), {"__qualname__": adapter.stage.name})
    return cls(adapter, packing)


def stage_actor_class(adapter: StageAdapter, packing: Packing) -> type[StageActor]:
    """The actor class of one stage, named after the stage and carrying its adapter."""
    name = adapter.stage.name
    attributes = {"__qualname__": name, "adapter_template": adapter, "packing": packing}
    return type(name, (StageActor,), attributes)


def setup_on_node(adapter: StageAdapter) -> None:
    """Remote body of the once-per-node ``setup_on_node`` call (see the executor)."""
    adapter.setup_on_node()


def iter_task_batches(dataset: ray.data.Dataset) -> Iterator[list[Task]]:
    """Stream the dataset's output to the driver, one list of tasks per block, as blocks finish.

    Empty blocks (a stage that filtered everything) are skipped; packs are unpacked.
    No prefetching: with Ray's default of one batch ahead, a finished block reached the driver
    only once the next one had, so each report lagged by a block's processing time (and the
    run is no faster with it).
    """
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
        if batch.num_rows:
            yield decode_tasks(batch)
