"""Random task trees and the terminal reports the framework would send for them.

A tree is what happens to one source inside a pipeline: every node is a task that is written by
the sink (``SINK``), fails (``FAIL``) or is processed into a list of slots (``Expand``), each slot
holding a child node or ``None`` (a filtered slot). Reports are derived exactly as the stage
adapter hands credit on (``nemo_curator.backends.stage_adapter``):

- surviving slots share the parent's credit via ``split_lineage``;
- when every slot is filtered (or the list is empty) one sentinel ``<id>_f`` carries the
  parent's whole credit to the end;
- a failed task becomes ``<id>_e`` with the parent's credit and a failure; that credit never
  returns;
- a child keeps its parent's id when the parent produced exactly one slot, else ``<id>_<slot>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

from nemo_curator.resumability.report import Report
from nemo_curator.tasks.credit import Credit, split_lineage

SINK = "sink"
FAIL = "fail"


@dataclass
class Expand:
    slots: list[Node | None] = field(default_factory=list)


Node = str | Expand


def tree_reports(source_id: str, node: Node) -> list[Report]:
    """The terminal reports of one source's tree, in depth-first order."""
    out: list[Report] = []
    _walk(source_id, node, source_id, {source_id: Credit.one()}, out)
    return out


def _walk(source_id: str, node: Node, task_id: str, lineage: dict[str, Credit], out: list[Report]) -> None:
    if node == SINK:
        out.extend(Report(sid, task_id, credit) for sid, credit in lineage.items())
        return
    if node == FAIL:
        out.extend(Report(sid, task_id + "_e", credit, failure="boom") for sid, credit in lineage.items())
        return
    assert isinstance(node, Expand)
    live = [(i, child) for i, child in enumerate(node.slots) if child is not None]
    if not live:
        out.extend(Report(sid, task_id + "_f", credit) for sid, credit in lineage.items())
        return
    single = len(node.slots) == 1
    for (i, child), share in zip(live, split_lineage(lineage, len(live)), strict=True):
        _walk(source_id, child, task_id if single else f"{task_id}_{i}", share, out)


def has_failure(node: Node) -> bool:
    if node == FAIL:
        return True
    if isinstance(node, Expand):
        return any(child is not None and has_failure(child) for child in node.slots)
    return False


def depth(node: Node) -> int:
    if isinstance(node, Expand):
        return 1 + max((depth(c) for c in node.slots if c is not None), default=0)
    return 0


@st.composite
def trees(
    draw: st.DrawFn,
    max_depth: int = 8,
    max_fanout: int = 4,
    max_nodes: int = 40,
    failures: bool = True,
) -> Node:
    """A random tree: fan-out 0..``max_fanout``, filtered slots, failures anywhere, bounded depth and size."""
    budget = [max_nodes]

    def leaf() -> Node:
        return FAIL if failures and draw(st.integers(0, 9)) == 0 else SINK

    def node(level: int) -> Node:
        budget[0] -= 1
        if level >= max_depth or budget[0] <= 0:
            return leaf()
        # About 60 % of nodes expand, so trees are often deep; 10 % of leaves fail.
        if draw(st.integers(0, 9)) < 4:
            return leaf()
        width = draw(st.integers(0, max_fanout))
        slots: list[Node | None] = []
        for _ in range(width):
            if draw(st.integers(0, 4)) == 0:
                slots.append(None)
            else:
                slots.append(node(level + 1))
        return Expand(slots)

    return node(0)


def source_id(i: int) -> str:
    """A framework-like 32-hex source id."""
    return f"{i:032x}"
