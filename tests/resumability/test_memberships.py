"""Stable partitions, pure: the regrouping rule over many runs with files added, removed and rewritten."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nemo_curator.backends.stage_adapter import source_id_for
from nemo_curator.resumability.errors import CheckpointError
from nemo_curator.resumability.memberships import (
    NOTICE_OVERLAP,
    FileEntry,
    RecordedGroup,
    decode_record,
    encode_record,
    plan_partitions,
)
from nemo_curator.stages.file_partitioning import FilePartitioningStage
from nemo_curator.tasks import FileGroupTask

UNIVERSE = [f"/in/f{i:02d}.jsonl" for i in range(30)]


def partitioner(files_per_partition: int | None, blocksize: int | None) -> FilePartitioningStage:
    return FilePartitioningStage(file_paths=[__file__], files_per_partition=files_per_partition, blocksize=blocksize)


def group_id(members: tuple[FileEntry, ...]) -> str:
    """The source id the executor gives this group (as the stage records it)."""
    task = FileGroupTask(
        dataset_name="d", data=[p for p, _, _ in members], _metadata={"file_stats": {p: [s, m] for p, s, m in members}}
    )
    return source_id_for(task, "", 0)


# A run: which files exist (path index -> version), then which emitted groups complete and which
# incomplete ones were written anyway (a kill after the write, before the acknowledgement).
versions = st.dictionaries(st.integers(0, len(UNIVERSE) - 1), st.integers(0, 2), min_size=1, max_size=len(UNIVERSE))
runs = st.lists(st.tuples(versions, st.integers(0, 2**16), st.integers(0, 2**16)), min_size=1, max_size=5)
options = st.one_of(
    st.tuples(st.integers(1, 4), st.none()),
    st.tuples(st.none(), st.integers(100, 400)),
    st.just((None, None)),
)


def listing(present: dict[int, int]) -> list[FileEntry]:
    return sorted((UNIVERSE[i], 100 + 7 * i + v, 1000.5 + v) for i, v in present.items())


@given(options, runs)
def test_complete_groups_keep_membership_and_every_file_is_in_one_group(option, run_specs) -> None:
    stage = partitioner(*option)
    grouping = stage._grouping()
    recorded: list[RecordedGroup] = []
    complete: set[str] = set()
    outputs: dict[str, tuple[FileEntry, ...]] = {}  # what the sink wrote, per source id
    announced: set[str] = set()  # source ids named by a notice
    previous: tuple[list[FileEntry], set[tuple[FileEntry, ...]]] | None = None
    # A last run on the last listing that completes everything.
    run_specs = [*run_specs, (run_specs[-1][0], 2**16 - 1, 0)]
    for generation, (present, complete_mask, written_mask) in enumerate(run_specs, start=1):
        files = listing(present)
        history = [
            RecordedGroup(g.source_id, g.members, g.generation, g.grouping, g.source_id in complete) for g in recorded
        ]
        plan = plan_partitions(files, history, stage._groups, grouping)
        announced.update(n.source_id for n in plan.notices)
        assert not [n for n in plan.notices if n.kind == NOTICE_OVERLAP]

        # Every listed file is in exactly one group; groups hold only listed files as listed now.
        counts = Counter(m for g in plan.groups for m in g.members)
        assert set(counts) == set(files) and set(counts.values()) == {1}
        # A complete group with a file still listed unchanged is kept with its recorded membership.
        by_id = {g.source_id: g for g in history if g.complete}
        for group in by_id.values():
            same = tuple(m for m in group.members if m in set(files))
            if same:
                assert any(g.complete and g.source_id == group.source_id and g.members == same for g in plan.groups)
        assert all(g.source_id in complete for g in plan.groups if g.complete)
        emitted = [g.members for g in plan.emitted]
        # Nothing complete is emitted again.
        assert not {group_id(m) for m in emitted} & complete
        # Without any record the plan is the plain grouping; on an unchanged listing it is the last plan.
        if not history:
            assert [g.members for g in plan.groups] == [tuple(g) for g in stage._groups(files)]
        if previous is not None and previous[0] == files:
            assert set(emitted) <= previous[1]

        for k, members in enumerate(emitted):
            sid = group_id(members)
            recorded.append(RecordedGroup(sid, members, generation, grouping))
            if complete_mask >> (k % 16) & 1:
                complete.add(sid)
                outputs[sid] = members
            elif written_mask >> (k % 16) & 1:
                outputs[sid] = members
        previous = (files, {g.members for g in plan.emitted if group_id(g.members) not in complete})

    final = set(listing(run_specs[-1][0]))
    final_paths = {m[0] for m in final}
    # A group all of whose files were removed: its output stays, as documented for a removed file.
    outputs = {sid: members for sid, members in outputs.items() if any(m[0] in final_paths for m in members)}
    written = Counter(m for members in outputs.values() for m in members)
    silent = Counter(m for sid, members in outputs.items() if sid not in announced for m in members)
    # Every final file is in the output; a record beyond exactly-once is in an output named by a notice.
    assert final <= set(written)
    assert all(silent[m] <= (1 if m in final else 0) for m in silent)
    if not announced:
        assert written == Counter(final)


def test_only_free_files_form_new_groups() -> None:
    """Three per group: removing a file of a complete group or adding files moves no complete group."""
    stage = partitioner(3, None)
    files = listing({i: 0 for i in range(9)})
    groups = [tuple(files[i : i + 3]) for i in (0, 3, 6)]
    history = [RecordedGroup(group_id(g), g, 1, stage._grouping(), complete=k != 1) for k, g in enumerate(groups)]
    # f01 (complete group 0) removed; f09 and f10 added; group 1 (incomplete) unchanged.
    now = [f for f in files if f[0] != UNIVERSE[1]] + listing({9: 0, 10: 0})
    plan = plan_partitions(sorted(now), history, stage._groups, stage._grouping())
    assert [(g.members, g.complete) for g in plan.groups] == [
        ((files[0], files[2]), True),
        (groups[1], False),
        (groups[2], True),
        (tuple(listing({9: 0, 10: 0})), False),
    ]
    assert [(n.kind, n.path) for n in plan.notices] == [("missing", UNIVERSE[1])]


def test_record_roundtrip_and_corruption() -> None:
    members = [("/a/x.jsonl", 3, 1.25), ("/a/y.jsonl", 4, "2024-01-01T00:00:00")]
    data = encode_record("file_partitioning", 7, "g", [("sid", members)])
    (group,) = decode_record(data, "here")
    assert (group.source_id, group.members, group.generation, group.grouping) == ("sid", tuple(members), 7, "g")
    with pytest.raises(CheckpointError, match="partition record there is unreadable"):
        decode_record(data[:-3], "there")
