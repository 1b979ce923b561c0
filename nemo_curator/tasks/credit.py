"""Exact credit for completion accounting (weighted credit recovery).

A source starts with credit 1. Whoever turns one task into ``n`` children splits the
parent's credit among them *locally*, with no message; a task that ends returns its
credit. A source is complete exactly when the credit returned for it sums to 1.

Credits are dyadic rationals ``num / 2**exp`` stored as two Python ints. Splitting by any
``n`` stays exact: the numerator is shifted left by enough bits that every part gets at
least one unit, and the remainder is spread over the first parts. Sums only shift and add.

Invariants:
- every ``Credit`` is strictly positive and normalized (``num`` odd, or ``exp == 0``);
- ``sum(c.split(n)) == c`` exactly, and every part is > 0;
- equal values have equal ``(num, exp)`` pairs, so the wire form is canonical.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=False)
class Credit:
    """A strictly positive dyadic rational ``num / 2**exp``."""

    num: int
    exp: int = 0

    def __post_init__(self) -> None:
        if self.num <= 0 or self.exp < 0:
            raise ValueError(f"credit must be positive with exp >= 0, got {self.num}/2**{self.exp}")

    @staticmethod
    def one() -> Credit:
        return _ONE

    @staticmethod
    def make(num: int, exp: int) -> Credit:
        """Normalized credit ``num / 2**exp`` (strip common factors of two)."""
        if num > 0 and exp > 0:
            tz = (num & -num).bit_length() - 1
            if tz:
                shift = min(tz, exp)
                num >>= shift
                exp -= shift
        return Credit(num, exp)

    def split(self, n: int) -> list[Credit]:
        """Split into ``n`` strictly positive parts whose exact sum is ``self``."""
        if n < 1:
            raise ValueError(f"cannot split credit into {n} parts")
        if n == 1:
            return [self]
        bits = (n - 1).bit_length()
        num = self.num << bits
        exp = self.exp + bits
        q, r = divmod(num, n)
        big = Credit.make(q + 1, exp)
        small = Credit.make(q, exp)
        return [big] * r + [small] * (n - r)

    def __add__(self, other: Credit) -> Credit:
        if self.exp == other.exp:
            return Credit.make(self.num + other.num, self.exp)
        if self.exp > other.exp:
            return Credit.make(self.num + (other.num << (self.exp - other.exp)), self.exp)
        return Credit.make((self.num << (other.exp - self.exp)) + other.num, other.exp)

    def compare(self, other: Credit) -> int:
        """-1, 0 or 1 as ``self`` is below, equal to or above ``other``."""
        e = max(self.exp, other.exp)
        a = self.num << (e - self.exp)
        b = other.num << (e - other.exp)
        return (a > b) - (a < b)

    def is_one(self) -> bool:
        return self.num == 1 << self.exp

    def exceeds_one(self) -> bool:
        return self.num > 1 << self.exp

    def to_wire(self) -> str:
        """Canonical exact text form, e.g. ``"3/2^4"``; never a float."""
        return f"{self.num}/2^{self.exp}"

    @staticmethod
    def from_wire(text: str) -> Credit:
        num, _, exp = text.partition("/2^")
        return Credit.make(int(num), int(exp or 0))

    def __float__(self) -> float:  # for display only
        return self.num / (1 << self.exp)

    def __repr__(self) -> str:
        return f"Credit({self.to_wire()})"

    def __reduce__(self) -> tuple[type[Credit], tuple[int, int]]:
        # Credits ride in every tracked task's lineage across each stage boundary: rebuilding
        # from the two ints (validated again) pickles in about half the time of a frozen
        # slotted dataclass's default state protocol.
        return (Credit, (self.num, self.exp))


_ONE = Credit(1, 0)


def split_lineage(lineage: dict[str, Credit], n: int) -> list[dict[str, Credit]]:
    """Split every source's credit in ``lineage`` into ``n`` parts, one mapping per part."""
    parts: list[dict[str, Credit]] = [{} for _ in range(n)]
    for source_id, credit in lineage.items():
        for part, share in zip(parts, credit.split(n), strict=True):
            part[source_id] = share
    return parts


def merge_lineages(lineages: list[dict[str, Credit]]) -> dict[str, Credit]:
    """Sum per-source credit over several tasks (for batches that merge tasks)."""
    merged: dict[str, Credit] = {}
    for lineage in lineages:
        for source_id, credit in lineage.items():
            prev = merged.get(source_id)
            merged[source_id] = credit if prev is None else prev + credit
    return merged
