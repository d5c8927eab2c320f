"""Disclosure control (runtime/disclosure.py, docs/proposals/nrm-process.md §12.4), attacked.

Two adversaries, written apart from the module's own audit, are given everything released
together (exact cells, rounded cells as their intervals, suppressed cells as unknown): one
propagates bounds on the full table's counts (over generated populations), the other
searches every full table of whole counts consistent with the release (over the hard cases
by name: a single case, all cases in one cell, k = 2 and k = 11, cells already public
elsewhere). Each suppressed cell must keep at least two values."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.disclosure import (
    Cell,
    Published,
    Unprotectable,
    cells_and_relations,
    interval,
    protect,
    values_of,
)

DIMS = ("sex", "form")
DOMAINS = {"sex": ("female", "male"), "form": ("labour", "sexual", "other")}
FULL = list(itertools.product(*(DOMAINS[d] for d in DIMS)))


def _members(cell: Cell, dims: Sequence[str]) -> list[int]:
    """The full-table cells (by position in FULL) that add up to `cell`."""
    table, values = cell
    index = [dims.index(d) for d in table]
    return [j for j, key in enumerate(FULL) if tuple(key[i] for i in index) == values]


def _constraints(
    release: Mapping[Cell, Published], round_to: int
) -> list[tuple[list[int], int, int]]:
    """What the release says: for each cell not suppressed, its full-table members add up
    to something inside its interval."""
    return [
        (_members(c, DIMS), *interval(p, round_to)) for c, p in release.items() if not p.suppressed
    ]


def full_table_bounds(
    release: Mapping[Cell, Published], round_to: int, cap: int
) -> dict[Cell, tuple[int, int]]:
    """A cheap adversary, apart from the module's: bounds on each full-table count (0 to
    `cap`) tightened through every published cell until nothing changes, then summed for
    each suppressed cell."""
    constraints = _constraints(release, round_to)
    lo, hi = [0] * len(FULL), [cap] * len(FULL)
    changed = True
    while changed:
        changed = False
        for members, low, high in constraints:
            for j in members:
                others_lo = sum(lo[m] for m in members if m != j)
                others_hi = sum(hi[m] for m in members if m != j)
                new = (max(lo[j], low - others_hi), min(hi[j], high - others_lo))
                if new != (lo[j], hi[j]):
                    lo[j], hi[j] = new
                    changed = True
    return {
        c: (sum(lo[m] for m in _members(c, DIMS)), sum(hi[m] for m in _members(c, DIMS)))
        for c, p in release.items()
        if p.suppressed
    }


def values_seen(
    release: Mapping[Cell, Published], round_to: int, *, cap: int, enough: int = 2
) -> dict[Cell, set[int]]:
    """The exact adversary: per suppressed cell, the values it takes in full tables of
    counts 0 to `cap` consistent with `release` (stops once every one has `enough`). Only
    for small populations: it searches."""
    constraints = _constraints(release, round_to)
    total_hi = cap
    hidden = [c for c, p in release.items() if p.suppressed]
    seen: dict[Cell, set[int]] = {c: set() for c in hidden}
    x = [0] * len(FULL)

    def feasible(upto: int) -> bool:
        for members, lo, hi in constraints:
            fixed = sum(x[j] for j in members if j < upto)
            free = [j for j in members if j >= upto]
            if fixed > hi or (not free and fixed < lo) or fixed + total_hi * len(free) < lo:
                return False
        return True

    def search(j: int) -> bool:
        if j == len(FULL):
            for c in hidden:
                seen[c].add(sum(x[m] for m in _members(c, DIMS)))
            return all(len(v) >= enough for v in seen.values())
        for v in range(total_hi + 1):
            x[j] = v
            if feasible(j + 1) and search(j + 1):
                return True
        x[j] = 0
        return False

    search(0)
    return seen


def attack(
    counts: dict[tuple[str, ...], int],
    *,
    k: int,
    round_to: int,
    public: Sequence[Cell] = (),
    exact: bool = True,
) -> dict[Cell, Published]:
    release = protect(counts, DIMS, DOMAINS, k=k, round_to=round_to, public=public)
    cells, _ = cells_and_relations(DIMS, DOMAINS)
    true = values_of(counts, DIMS, cells)
    for c, p in release.items():
        if 0 < true[c] < k and c not in public:
            assert p.suppressed, c  # primary suppression
        if not p.suppressed:
            lo, hi = interval(p, round_to)
            assert lo <= true[c] <= hi, c  # what is published is true
    cap = sum(counts.values()) + round_to + 2  # the adversary guesses the size generously
    for c, (lo, hi) in full_table_bounds(release, round_to, cap).items():
        assert lo < hi, (c, lo, hi)  # never pinned
    if exact:
        for c, values in values_seen(release, round_to, cap=cap).items():
            assert len(values) >= 2, (c, values)
    return release


populations = st.lists(st.sampled_from(FULL), max_size=14).map(
    lambda people: {key: people.count(key) for key in FULL if people.count(key)}
)


@settings(max_examples=150, deadline=None)
@given(populations, st.sampled_from([(2, 1), (3, 5), (11, 5)]))
def test_no_suppressed_cell_can_be_worked_out(
    counts: dict[tuple[str, ...], int], rule: tuple[int, int]
) -> None:
    k, round_to = rule
    attack(counts, k=k, round_to=round_to, exact=False)


@pytest.mark.parametrize(
    ("name", "counts", "k", "round_to"),
    [
        ("a single case", {("female", "sexual"): 1}, 11, 5),
        ("all cases in one cell", {("male", "labour"): 13}, 11, 5),
        ("all cases in one cell, below k", {("male", "labour"): 4}, 11, 5),
        ("k = 2, one singleton among many", {("female", "labour"): 9, ("male", "other"): 1}, 2, 1),
        (
            "k = 11 over a spread",
            {
                ("female", "labour"): 12,
                ("female", "sexual"): 3,
                ("male", "labour"): 20,
                ("male", "other"): 2,
            },
            11,
            5,
        ),
    ],
)
def test_the_hard_cases(
    name: str, counts: dict[tuple[str, ...], int], k: int, round_to: int
) -> None:
    release = attack(counts, k=k, round_to=round_to)
    zero = ("male", "sexual") if ("male", "sexual") not in counts else None
    if zero is not None and not release[(DIMS, zero)].suppressed:
        assert release[(DIMS, zero)].value == 0 or release[(DIMS, zero)].rounded


def test_zero_is_published_and_a_table_without_suppression_is_exact() -> None:
    counts = {key: 20 + i for i, key in enumerate(FULL[:-1])}  # the last cell nobody
    release = attack(counts, k=11, round_to=5)
    assert release[(DIMS, FULL[-1])] == Published(0, suppressed=False, rounded=False)
    assert not any(p.suppressed or p.rounded for p in release.values())


def test_a_cell_public_elsewhere_is_never_hidden_and_counts_against_the_rest() -> None:
    """The ledger publishes the grand total exactly; the release may not rely on hiding it."""
    counts = {("female", "sexual"): 3, ("male", "labour"): 30}
    release = attack(counts, k=11, round_to=5, public=[((), ())])
    assert release[((), ())] == Published(33, suppressed=False, rounded=False)


def test_what_cannot_be_hidden_is_not_published() -> None:
    """A cell below k whose every neighbour is public elsewhere: Unprotectable."""
    cells, _ = cells_and_relations(DIMS, DOMAINS)
    everything_but = [c for c in cells if c != (DIMS, ("female", "sexual"))]
    with pytest.raises(Unprotectable):
        protect({("female", "sexual"): 3}, DIMS, DOMAINS, k=11, round_to=5, public=everything_but)
