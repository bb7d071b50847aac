"""IMAP sequence sets (RFC 9051 §9 ``sequence-set``), kept as ranges.

A sequence set is never expanded into a list of numbers: ``1:4294967295`` is
one range and costs the same as ``1:2``. ``*`` stands for the largest number
in use (the highest UID or the message count) and is only resolved when the
set is applied to a mailbox, because it changes as mail arrives. ``$`` (RFC
5182 SEARCHRES) stands for the saved search result; the session resolves it.

``0`` is not a valid ``seq-number`` (RFC 9051 §9: ``seq-number = nz-number /
"*"``) and is refused by :func:`parse_sequence_set`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

MAX_NUMBER = 4294967295  # RFC 9051 §9 nz-number: 1 ... 2^32 - 1
STAR = 0  # internal marker for "*" inside a range (0 can never be a real number)


class SequenceError(ValueError):
    """The text is not a valid sequence set."""


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """Ranges ``(start, end)`` as written; ``STAR`` (0) stands for ``*``.

    ``saved`` is True when ``$`` (RFC 5182) is in the set: the saved search
    result is part of the set, in addition to ``ranges``. RFC 9051 §9 lets
    ``$`` end a list (``2:4,$``); we accept it anywhere in the list. The
    session substitutes the saved UIDs with :meth:`with_saved`.
    """

    ranges: tuple[tuple[int, int], ...] = ()
    saved: bool = False

    @property
    def uses_star(self) -> bool:
        return any(a == STAR or b == STAR for a, b in self.ranges)

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """Sorted, merged, inclusive ranges with ``*`` replaced by ``largest``.

        RFC 9051 §9: ``*:4`` is the same as ``4:*``; when the mailbox is empty,
        ``*`` is 0... we treat an empty mailbox as matching nothing.
        """
        out: list[tuple[int, int]] = []
        for a, b in self.ranges:
            a = largest if a == STAR else a
            b = largest if b == STAR else b
            if a > b:
                a, b = b, a
            if b < 1:
                continue
            out.append((max(a, 1), b))
        return merge_ranges(out)

    def contains(self, n: int, largest: int) -> bool:
        for a, b in self.ranges:
            a = largest if a == STAR else a
            b = largest if b == STAR else b
            if a > b:
                a, b = b, a
            if a <= n <= b:
                return True
        return False

    def select(self, values: Sequence[int], largest: int | None = None) -> Iterator[int]:
        """Yield the members of the ascending list ``values`` that are in the set.

        ``largest`` defaults to the last value (the highest UID in the mailbox).
        Cost is O(ranges * log(len(values)) + matches), never O(range width).
        """
        if not values:
            return
        if largest is None:
            largest = values[-1]
        for a, b in self.resolve(largest):
            i = bisect.bisect_left(values, a)
            j = bisect.bisect_right(values, b)
            yield from values[i:j]

    def select_indices(self, values: Sequence[int], largest: int | None = None
                       ) -> Iterator[int]:
        """Like :meth:`select` but yields 0-based positions in ``values``."""
        if not values:
            return
        if largest is None:
            largest = values[-1]
        for a, b in self.resolve(largest):
            i = bisect.bisect_left(values, a)
            j = bisect.bisect_right(values, b)
            yield from range(i, j)

    def seqnums(self, count: int) -> Iterator[int]:
        """Message sequence numbers 1..count in the set (``*`` = count)."""
        if count <= 0:
            return
        for a, b in self.resolve(count):
            yield from range(a, min(b, count) + 1)

    def with_saved(self, saved: Iterable[int]) -> SequenceSet:
        """This set with ``$`` replaced by the saved numbers."""
        if not self.saved:
            return self
        extra = [(n, n) for n in saved]
        return SequenceSet(tuple(merge_ranges(
            [r for r in self.ranges if STAR not in r] + extra))
            + tuple(r for r in self.ranges if STAR in r))

    def __str__(self) -> str:
        parts = [format_ranges(self.ranges)] if self.ranges else []
        if self.saved:
            parts.append("$")
        return ",".join(parts)


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _fmt(n: int) -> str:
    return "*" if n == STAR else str(n)


def format_ranges(ranges: Iterable[tuple[int, int]]) -> str:
    parts = []
    for a, b in ranges:
        parts.append(_fmt(a) if a == b else f"{_fmt(a)}:{_fmt(b)}")
    return ",".join(parts)


def from_numbers(numbers: Iterable[int]) -> SequenceSet:
    """The compact set for some numbers (for COPYUID, ESEARCH ALL, VANISHED)."""
    return SequenceSet(tuple(merge_ranges((n, n) for n in numbers)))


def _number(text: str, *, allow_star: bool) -> int:
    if text == "*":
        if not allow_star:
            raise SequenceError("'*' not allowed here")
        return STAR
    # RFC 9051 §9: nz-number = digit-nz *DIGIT, < 2^32
    if not text or not text.isascii() or not text.isdigit() or text[0] == "0":
        raise SequenceError(f"bad sequence number {text[:20]!r}")
    if len(text) > 10 or int(text) > MAX_NUMBER:
        raise SequenceError("sequence number out of range")
    return int(text)


def parse_sequence_set(text: str, *, allow_star: bool = True,
                       allow_saved: bool = True) -> SequenceSet:
    """Parse ``1,3:5,7:*`` or ``$``. Raises :class:`SequenceError`."""
    if not text:
        raise SequenceError("empty sequence set")
    ranges: list[tuple[int, int]] = []
    saved = False
    for item in text.split(","):
        if item == "$":
            if not allow_saved:
                raise SequenceError("'$' not allowed here")
            saved = True
            continue
        a, sep, b = item.partition(":")
        lo = _number(a, allow_star=allow_star)
        hi = _number(b, allow_star=allow_star) if sep else lo
        ranges.append((lo, hi))
    # Merge ranges without '*' now so that a set written as a million single
    # numbers costs one range per run, not one tuple per number.
    plain = [(min(a, b), max(a, b)) for a, b in ranges if a != STAR and b != STAR]
    starred = [r for r in ranges if r[0] == STAR or r[1] == STAR]
    return SequenceSet(tuple(merge_ranges(plain)) + tuple(starred), saved)
