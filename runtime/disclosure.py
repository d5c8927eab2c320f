"""Disclosure control for published statistics (docs/proposals/nrm-process.md §12.4): one
table of counts of people (e.g. stage, sex, age group and form of exploitation) released with
every marginal of it, so that no count below `k` can be read or worked out from what is
released together. Pure.

The rule:

1. **Primary suppression.** A cell counting 1 to k - 1 is suppressed. Zero is published: it
   says that nobody fell in a cell, not who did.
2. **Secondary suppression.** In every additive relation (the cells of a row of a table
   against their total in the marginal one dimension smaller), a relation with exactly one
   suppressed cell gets a second: the smallest other cell that is not zero, else the
   smallest other. Repeated until no relation has exactly one.
3. **Rounding.** In every table holding a suppressed cell, the published cells are rounded
   to the nearest multiple of `round_to` (halves up) and marked rounded.
4. **Audit.** The release is attacked as an adversary would: integer bounds propagated
   through every relation from the published values (a rounded one standing for its whole
   interval, a cell already public elsewhere for its exact value). A suppressed cell whose
   bounds meet is disclosed; one more cell of one of its relations is suppressed and the
   audit runs again. A cell that cannot be protected (everything around it is public
   elsewhere) raises `Unprotectable`: publish nothing rather than something that leaks.

Cells already public elsewhere (`public`: the ledger's own counts, which are marginals of
the same table) are never suppressed nor rounded: hiding them would protect nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

#: A cell: the dimensions of its table (a sub-tuple of the release's, in order) and its
#: value in each of them. The grand total is `((), ())`.
Cell = tuple[tuple[str, ...], tuple[str, ...]]

_UNBOUNDED: Final = 1 << 62


class Unprotectable(ValueError):
    """A cell below the threshold that no further suppression can hide."""


@dataclass(frozen=True, slots=True)
class Published:
    """A cell as released: its value (None when suppressed), whether it was rounded."""

    value: int | None
    suppressed: bool
    rounded: bool


@dataclass(frozen=True, slots=True)
class Relation:
    """A total and the cells that add up to it."""

    total: Cell
    parts: tuple[Cell, ...]

    @property
    def members(self) -> tuple[Cell, ...]:
        return (self.total, *self.parts)


def cells_and_relations(
    dims: Sequence[str], domains: Mapping[str, Sequence[str]]
) -> tuple[list[Cell], list[Relation]]:
    """Every cell of every table over a subset of `dims` (the full table and each marginal)
    and every additive relation between a table and the one a dimension smaller."""
    cells: list[Cell] = []
    relations: list[Relation] = []
    for size in range(len(dims) + 1):
        for table in itertools.combinations(dims, size):
            for values in itertools.product(*(domains[d] for d in table)):
                cells.append((table, values))
            for i, dim in enumerate(table):
                smaller = table[:i] + table[i + 1 :]
                for values in itertools.product(*(domains[d] for d in smaller)):
                    parts = tuple((table, (*values[:i], v, *values[i:])) for v in domains[dim])
                    relations.append(Relation((smaller, values), parts))
    return cells, relations


def values_of(
    counts: Mapping[tuple[str, ...], int], dims: Sequence[str], cells: Iterable[Cell]
) -> dict[Cell, int]:
    """The count of every cell, summed from the full table's `counts` (missing: zero)."""
    out: dict[Cell, int] = {}
    for table, values in cells:
        index = [dims.index(d) for d in table]
        out[(table, values)] = sum(
            n for key, n in counts.items() if tuple(key[i] for i in index) == values
        )
    return out


def round_half_up(value: int, step: int) -> int:
    return (value + step // 2) // step * step


def interval(p: Published, step: int) -> tuple[int, int]:
    """What a reader of `p` knows of the true count: exact, a rounding interval, or (for a
    suppressed cell) nothing but that it is a count."""
    if p.suppressed or p.value is None:
        return 0, _UNBOUNDED
    if not p.rounded:
        return p.value, p.value
    # round_half_up(x) == v  <=>  v <= x + step // 2 <= v + step - 1
    return max(0, p.value - step // 2), p.value + step - 1 - step // 2


def bounds(
    published: Mapping[Cell, Published], relations: Sequence[Relation], step: int
) -> dict[Cell, tuple[int, int]]:
    """Integer bounds on every cell consistent with `published`, propagated through
    `relations` (total = sum of parts) until nothing tightens."""
    lo: dict[Cell, int] = {}
    hi: dict[Cell, int] = {}
    for cell, p in published.items():
        lo[cell], hi[cell] = interval(p, step)
    changed = True
    while changed:
        changed = False
        for r in relations:
            parts_lo = sum(lo[c] for c in r.parts)
            parts_hi = sum(hi[c] for c in r.parts)
            updates = [(r.total, parts_lo, parts_hi)]
            for c in r.parts:
                updates.append(
                    (c, lo[r.total] - (parts_hi - hi[c]), hi[r.total] - (parts_lo - lo[c]))
                )
            for c, new_lo, new_hi in updates:
                new_lo, new_hi = max(lo[c], new_lo), min(hi[c], new_hi, _UNBOUNDED)
                if (new_lo, new_hi) != (lo[c], hi[c]):
                    lo[c], hi[c] = new_lo, new_hi
                    changed = True
    return {c: (lo[c], hi[c]) for c in published}


def protect(
    counts: Mapping[tuple[str, ...], int],
    dims: Sequence[str],
    domains: Mapping[str, Sequence[str]],
    *,
    k: int,
    round_to: int,
    public: Iterable[Cell] = (),
) -> dict[Cell, Published]:
    """The release of `counts` (full-table key → count) and all its marginals under the
    rule of the module docstring; Unprotectable when some cell below `k` cannot be hidden."""
    if k < 2 or round_to < 1:
        raise ValueError("k is at least 2 and round_to at least 1")
    cells, relations = cells_and_relations(dims, domains)
    value = values_of(counts, dims, cells)
    fixed = frozenset(public)
    suppressed = {c for c in cells if 0 < value[c] < k and c not in fixed}
    while True:
        _secondary(suppressed, relations, value, fixed)
        release = _release(cells, value, suppressed, fixed, round_to)
        known = bounds(release, relations, round_to)
        disclosed = [c for c in sorted(suppressed) if known[c][0] == known[c][1]]
        if not disclosed:
            return release
        more = _cover(disclosed[0], suppressed, relations, value, fixed)
        if more is None:
            raise Unprotectable("a cell below the threshold cannot be hidden in this release")
        suppressed.add(more)


def _secondary(
    suppressed: set[Cell],
    relations: Sequence[Relation],
    value: Mapping[Cell, int],
    fixed: frozenset[Cell],
) -> None:
    changed = True
    while changed:
        changed = False
        for r in relations:
            hidden = [c for c in r.members if c in suppressed]
            if len(hidden) != 1:
                continue
            choice = _smallest(r.members, suppressed, value, fixed)
            if choice is not None:
                suppressed.add(choice)
                changed = True


def _smallest(
    members: Iterable[Cell],
    suppressed: set[Cell],
    value: Mapping[Cell, int],
    fixed: frozenset[Cell],
) -> Cell | None:
    """The smallest member that may still be suppressed, one that is not zero first."""
    free = [c for c in members if c not in suppressed and c not in fixed]
    if not free:
        return None
    return min(free, key=lambda c: (value[c] == 0, value[c], c))


def _cover(
    cell: Cell,
    suppressed: set[Cell],
    relations: Sequence[Relation],
    value: Mapping[Cell, int],
    fixed: frozenset[Cell],
) -> Cell | None:
    """One more cell to suppress beside a disclosed `cell`: the smallest free member of one
    of its relations."""
    options = [
        c
        for r in relations
        if cell in r.members
        for c in [_smallest(r.members, suppressed, value, fixed)]
        if c is not None
    ]
    return min(options, key=lambda c: (value[c] == 0, value[c], c)) if options else None


def _release(
    cells: Sequence[Cell],
    value: Mapping[Cell, int],
    suppressed: set[Cell],
    fixed: frozenset[Cell],
    round_to: int,
) -> dict[Cell, Published]:
    rounded_tables = {table for table, _ in suppressed}
    out: dict[Cell, Published] = {}
    for c in cells:
        if c in suppressed:
            out[c] = Published(None, suppressed=True, rounded=False)
        elif c[0] in rounded_tables and c not in fixed and round_to > 1:
            out[c] = Published(round_half_up(value[c], round_to), suppressed=False, rounded=True)
        else:
            out[c] = Published(value[c], suppressed=False, rounded=False)
    return out
