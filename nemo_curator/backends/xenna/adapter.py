"""One cosmos-xenna stage wrapping one ``StageAdapter``.

The wrapper is pickled to every xenna worker of its stage. It holds no logic of its own:
each worker calls ``adapter.process_batch`` on the batch xenna hands it and forwards the
returned list unchanged (sentinel tasks included), so task ids, lineage and failure
handling are exactly those of the shared adapter.

Importing this module imports cosmos-xenna (which reconfigures loguru on import); the
executor therefore imports it only when a run starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cosmos_xenna.pipelines import v1 as xenna

from nemo_curator.backends.stage_adapter import StageAdapter
from nemo_curator.tasks import Task


@dataclass
class OutputPack:
    """All outputs of one call of the last stage, as one object for xenna.

    xenna stores every output of a stage as its own object (a ``ray.put`` each) and, in
    SERVING mode, fetches the last stage's outputs one ``ray.get`` at a time in its main loop.
    One object per call saves both; the driver unpacks it.
    """

    tasks: list[Task]


class XennaStageAdapter(xenna.Stage):
    """A xenna stage whose workers run ``adapter`` with ``cpus``/``gpus`` per worker.

    ``cpus`` may be smaller than the stage's own request: the executor scales requests down
    when a shared cluster is too small for one worker per stage. With ``pack_outputs`` (the
    last stage, in every mode) each call returns its outputs as one ``OutputPack``.
    """

    def __init__(self, adapter: StageAdapter, cpus: float, gpus: float, pack_outputs: bool = False) -> None:
        self._adapter = adapter
        self._cpus = cpus
        self._gpus = gpus
        self._pack_outputs = pack_outputs

    @property
    def stage_name(self) -> str:
        return self._adapter.stage.name

    @property
    def stage_batch_size(self) -> int:
        return max(1, int(self._adapter.stage.batch_size))

    @property
    def required_resources(self) -> xenna.Resources:
        return xenna.Resources(cpus=self._cpus, gpus=self._gpus)

    def setup_on_node(self, node_info: xenna.NodeInfo, worker_metadata: xenna.WorkerMetadata) -> None:
        self._adapter.setup_on_node(node_info, worker_metadata)

    def setup(self, worker_metadata: xenna.WorkerMetadata) -> None:
        self._adapter.setup(worker_metadata)

    def process_data(self, in_data: list[Task]) -> list[Task] | list[OutputPack]:
        # Always a list (never None): xenna drops a ``None`` result, and an empty list is
        # simply "no outputs" to it.
        outputs = self._adapter.process_batch(list(in_data))
        if self._pack_outputs:
            return [OutputPack(outputs)] if outputs else []
        return outputs

    def destroy(self) -> None:
        # xenna calls ``destroy`` once per worker before killing it and logs (does not
        # raise) what it raises.
        self._adapter.teardown()

    def __repr__(self) -> str:
        return f"XennaStageAdapter({self.stage_name!r}, cpus={self._cpus:g}, gpus={self._gpus:g})"


def named_stage_class(stage_name: str) -> type[XennaStageAdapter]:
    """A subclass of ``XennaStageAdapter`` named after the stage.

    xenna names pools, workers and log lines after the class of the stage
    (``"Stage 03 - <class name>"``), so this makes them name the user's stage. Ray pickles
    the class by value (it is not importable), which workers load like any other.
    """
    name = re.sub(r"\W", "_", stage_name) or "stage"
    return type(name, (XennaStageAdapter,), {"__module__": __name__, "__qualname__": name})
