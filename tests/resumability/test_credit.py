"""Exact credit arithmetic and the columnar report batch."""

from __future__ import annotations

import pickle
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st
from ray import cloudpickle

from nemo_curator.resumability.keys import decode_credit, encode_credit
from nemo_curator.resumability.report import Report, ReportBatch
from nemo_curator.tasks.credit import Credit, merge_lineages, split_lineage
from tests.resumability.examples import budget

credits = st.builds(Credit.make, st.integers(1, 2**70), st.integers(0, 80)).filter(lambda c: not c.exceeds_one())


def frac(c: Credit) -> Fraction:
    return Fraction(c.num, 2**c.exp)


@budget()
@given(credits, st.integers(1, 300))
def test_split_is_exact_positive_and_normalized(credit: Credit, n: int) -> None:
    parts = credit.split(n)
    assert len(parts) == n
    assert all(frac(p) > 0 for p in parts)
    assert all(p.num % 2 == 1 or p.exp == 0 for p in parts)
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    assert total == credit
    assert sum(frac(p) for p in parts) == frac(credit)


@budget()
@given(credits, credits, credits)
def test_addition_is_exact_commutative_associative(a: Credit, b: Credit, c: Credit) -> None:
    assert frac(a + b) == frac(a) + frac(b)
    assert a + b == b + a
    assert (a + b) + c == a + (b + c)
    assert (a + b).compare(a) == 1
    assert a.compare(a) == 0


@budget()
@given(credits)
def test_wire_round_trip_is_exact(credit: Credit) -> None:
    assert Credit.from_wire(credit.to_wire()) == credit
    num, exp = decode_credit(encode_credit(credit.num, credit.exp))
    assert Credit.make(num, exp) == credit
    assert "." not in credit.to_wire()
    # Between workers credits travel pickled, inside each task's lineage.
    for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)):
        back = loads(dumps({"source": credit}))["source"]
        assert type(back) is Credit and (back.num, back.exp) == (credit.num, credit.exp)


@budget()
@given(st.lists(st.integers(1, 6), min_size=1, max_size=6))
def test_nested_splits_sum_to_one(widths: list[int]) -> None:
    level = [Credit.one()]
    for width in widths:
        level = [part for credit in level for part in credit.split(width)]
    total = level[0]
    for part in level[1:]:
        total = total + part
    assert total.is_one()
    assert not total.exceeds_one()


def test_split_and_merge_lineages_keep_each_source_exact() -> None:
    a, b = "a" * 32, "b" * 32
    merged = merge_lineages([{a: Credit.make(1, 1)}, {a: Credit.make(1, 2), b: Credit.one()}])
    assert merged == {a: Credit.make(3, 2), b: Credit.one()}
    parts = split_lineage(merged, 3)
    assert set(parts[0]) == {a, b}
    total_a = parts[0][a] + parts[1][a] + parts[2][a]
    assert total_a == Credit.make(3, 2)


@budget()
@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=40), st.text(max_size=80), credits, st.none() | st.text(max_size=20)),
        max_size=30,
    )
)
def test_report_batch_round_trips_exactly(rows: list[tuple[str, str, Credit, str | None]]) -> None:
    reports = [Report(s, t, c, f) for s, t, c, f in rows]
    batch = ReportBatch.from_reports(reports)
    assert len(batch) == len(reports)
    assert batch.reports() == reports
    assert all(isinstance(n, int) for n in batch.nums)
