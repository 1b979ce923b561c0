"""The ``map_batches`` callables of the Ray Data executor and the task column they exchange.

Tasks travel through the dataset as rows of one column, ``task``, each holding one task
pickled by the framework (``large_binary``). Encoding the objects ourselves keeps Ray Data
from trying (and failing, with a warning per block) to convert arbitrary Python objects to
Arrow, and makes the column type independent of the tasks' contents: pandas or pyarrow
payloads, sentinels, lineage and task ids all round-trip unchanged.

The last stage's outputs of one call travel packed, as one row of the column ``tasks`` holding
the whole pickled list: only the driver consumes them, so one row per task would buy no
parallelism, and every block costs the driver's scheduling loop and delays the blocks queued
behind it on their way to the driver (and, with a checkpoint, to the ledger).

Every callable does the same thing and nothing more: decode the batch, hand the list to
``StageAdapter.process_batch`` and encode the list it returns, unchanged and in order
(sentinels included). Only the adapter calls user code; fan-out and filtering change the
number of rows, which ``map_batches`` allows.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa
from loguru import logger

from nemo_curator.backends.stage_adapter import StageAdapter, StageError
from nemo_curator.tasks import Task

if TYPE_CHECKING:
    import ray.data

#: The dataset's only column.
TASK_COLUMN = "task"
#: The last stage's column: each row is one call's outputs, pickled together as a list.
PACK_COLUMN = "tasks"
#: 64-bit offsets: one block of large payloads may exceed 2 GiB.
_COLUMN_TYPE = pa.large_binary()


def encode_tasks(tasks: list[Task], pack: bool = False) -> pa.Table:
    """One row per task, in order; with ``pack``, one row (of ``PACK_COLUMN``) for the whole list."""
    from ray import cloudpickle  # by value for classes defined in ``__main__``

    if pack:
        blobs = [cloudpickle.dumps(tasks, protocol=pickle.HIGHEST_PROTOCOL)] if tasks else []
        return pa.table({PACK_COLUMN: pa.array(blobs, type=_COLUMN_TYPE)})
    blobs = [cloudpickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL) for task in tasks]
    return pa.table({TASK_COLUMN: pa.array(blobs, type=_COLUMN_TYPE)})


def decode_tasks(batch: pa.Table) -> list[Task]:
    """The tasks of a batch (or block) made by :func:`encode_tasks`, in row order, packs unpacked."""
    if PACK_COLUMN in batch.column_names:
        return [task for blob in batch.column(PACK_COLUMN).to_pylist() for task in pickle.loads(blob)]
    return [pickle.loads(blob) for blob in batch.column(TASK_COLUMN).to_pylist()]


class StageBatchFn:
    """``map_batches`` callable for stages without ``setup``/``teardown`` (run as Ray tasks).

    ``pack`` (the last stage): each call's outputs leave as one packed row.
    """

    def __init__(self, adapter: StageAdapter, pack: bool = False) -> None:
        self._adapter = adapter
        self._pack = pack

    def __call__(self, batch: pa.Table) -> pa.Table:
        return encode_tasks(self._adapter.process_batch(decode_tasks(batch)), pack=self._pack)


class StageActor:
    """``map_batches`` callable class for stages with ``setup``/``teardown`` (an actor pool).

    Ray Data constructs one instance per actor: the constructor runs ``setup`` once, before
    any batch. ``teardown`` runs from ``__del__``, which Ray Data triggers when it releases an
    actor gracefully (pool shut down at the end of the run, or scaled down); it is best effort:
    an actor that crashes or is killed with ``ray.kill`` never runs it.

    A ``setup`` that raises does not fail the constructor: Ray would report that only as text
    (``ActorDiedError``). The adapter's ``StageError`` is kept and raised by every batch the
    actor receives instead, so the run fails with the error object itself.

    The adapter (and ``pack_outputs``, true for the last stage) are class attributes of a
    per-stage subclass (see :func:`stage_actor_class`), so they travel with the class
    definition rather than as constructor arguments.
    """

    adapter_template: StageAdapter
    pack_outputs: bool = False

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
        return encode_tasks(self._adapter.process_batch(decode_tasks(batch)), pack=self.pack_outputs)

    def __del__(self) -> None:
        if not getattr(self, "_set_up", False):
            return
        self._set_up = False
        try:
            self._adapter.teardown()
        except Exception as exc:  # never raise from a finalizer
            logger.warning("teardown of stage {!r} failed: {}", self._adapter.stage.name, exc)


def stage_batch_fn(adapter: StageAdapter, pack: bool = False) -> StageBatchFn:
    """The task callable of one stage; its class is named after the stage (Ray Data's operator name)."""
    cls = type(adapter.stage.name, (StageBatchFn,), {"__qualname__": adapter.stage.name})
    return cls(adapter, pack)


def stage_actor_class(adapter: StageAdapter, pack: bool = False) -> type[StageActor]:
    """The actor class of one stage, named after the stage and carrying its adapter."""
    name = adapter.stage.name
    attributes = {"__qualname__": name, "adapter_template": adapter, "pack_outputs": pack}
    return type(name, (StageActor,), attributes)


def setup_on_node(adapter: StageAdapter) -> None:
    """Remote body of the once-per-node ``setup_on_node`` call (see the executor)."""
    adapter.setup_on_node()


def iter_task_batches(dataset: ray.data.Dataset) -> Iterator[list[Task]]:
    """Stream the dataset's output to the driver, one list of tasks per block, as blocks finish.

    Empty blocks (a stage that filtered everything) are skipped; packed rows are unpacked.
    No prefetching: with Ray's default of one batch ahead, a finished block reached the driver
    only once the next one had, so each report lagged by a block's processing time (and the
    run is no faster with it).
    """
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
        if batch.num_rows:
            yield decode_tasks(batch)
