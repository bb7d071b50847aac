"""Sequence sets and the search evaluator."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailyard.protocol.imap import search as s
from mailyard.protocol.imap.sequence import (
    STAR,
    SequenceError,
    SequenceSet,
    from_numbers,
    parse_sequence_set,
)


# -- sequence sets ----------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "largest", "resolved"), [
    ("1", 10, [(1, 1)]),
    ("1:4294967295", 10, [(1, 4294967295)]),
    ("*:1", 7, [(1, 7)]),
    ("*", 7, [(7, 7)]),
    ("5:*", 3, [(3, 5)]),  # RFC 9051 §9: n:* with n > * means *:n
    ("3,1,2,7:9,8", 100, [(1, 3), (7, 9)]),
    ("2,4:7,9,12:*", 15, [(2, 2), (4, 7), (9, 9), (12, 15)]),
])
def test_resolve(text: str, largest: int, resolved: list[tuple[int, int]]) -> None:
    assert parse_sequence_set(text).resolve(largest) == resolved


@pytest.mark.parametrize("bad", ["0", "0:5", "1:0", "", ",", "1,", "a", "-1", "01",
                                 "4294967296", "1:*:3", "99999999999999999999", "$:1"])
def test_invalid(bad: str) -> None:
    with pytest.raises(SequenceError):
        parse_sequence_set(bad)


def test_saved_and_star_flags() -> None:
    assert parse_sequence_set("$").saved
    with pytest.raises(SequenceError):
        parse_sequence_set("$", allow_saved=False)
    with pytest.raises(SequenceError):
        parse_sequence_set("1:*", allow_star=False)
    assert parse_sequence_set("1:*").uses_star
    mixed = parse_sequence_set("2:4,$")
    assert mixed.saved and str(mixed) == "2:4,$"
    assert mixed.with_saved([9, 1]).resolve(100) == [(1, 4), (9, 9)]


def test_select_is_bisect_not_expansion() -> None:
    seq = parse_sequence_set("1:4294967295")
    uids = list(range(1, 200_001, 2))
    assert sum(1 for _ in seq.select(uids)) == len(uids)
    assert list(parse_sequence_set("3:7,100").select([1, 3, 5, 8, 100, 200])) == [3, 5, 100]
    assert list(parse_sequence_set("*").select([4, 9, 12])) == [12]
    assert list(parse_sequence_set("2:*").select_indices([4, 9, 12])) == [0, 1, 2]
    assert list(parse_sequence_set("1").select([])) == []


def test_membership() -> None:
    seq = parse_sequence_set("1:3,10:*")
    assert seq.contains(2, 20) and seq.contains(15, 20) and not seq.contains(5, 20)
    assert SequenceSet(((STAR, STAR),)).contains(9, 9)


def test_str_round_trip_and_compact() -> None:
    assert str(parse_sequence_set("1:3,5,7:*")) == "1:3,5,7:*"
    assert str(from_numbers([5, 1, 2, 3, 9, 10])) == "1:3,5,9:10"


@given(st.sets(st.integers(min_value=1, max_value=500), max_size=60),
       st.lists(st.integers(min_value=1, max_value=500), max_size=80))
def test_select_matches_naive(members: set[int], values: list[int]) -> None:
    seq = from_numbers(members)
    sorted_values = sorted(set(values))
    got = list(seq.select(sorted_values, largest=500))
    assert got == [v for v in sorted_values if v in members]


# -- search evaluation ------------------------------------------------------------------------
@dataclass
class Msg:
    uid: int = 1
    seq: int = 1
    flags: frozenset[str] = frozenset()
    size: int = 100
    internaldate: float = 0.0
    savedate: float | None = None
    modseq: int = 1
    email_id: str = "E1"
    thread_id: str = "T1"
    headers: dict[str, list[str]] = field(default_factory=dict)
    sent: dt.date | None = None
    body: str = ""
    calls: list[str] = field(default_factory=list)

    def header(self, name: str) -> list[str]:
        self.calls.append("header")
        return self.headers.get(name.lower(), [])

    def sent_date(self) -> dt.date | None:
        return self.sent

    def body_text(self) -> str:
        self.calls.append("body")
        return self.body

    def full_text(self) -> str:
        return "\n".join(v for vs in self.headers.values() for v in vs) + "\n" + self.body


ENV = s.SearchEnv(max_seq=10, max_uid=100, now=1_000_000.0, saved_uids=frozenset({5}))


def day(y: int, m: int, d: int) -> float:
    return dt.datetime(y, m, d, 12, tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(("key", "msg", "expected"), [
    (s.All(), Msg(), True),
    (s.HasFlag("\\seen"), Msg(flags=frozenset({"\\Seen"})), True),
    (s.Not(s.HasFlag("\\Seen")), Msg(flags=frozenset({"\\Seen"})), False),
    (s.HasFlag("$junk"), Msg(flags=frozenset({"$Junk"})), True),
    (s.Header("Subject", "WORLD"), Msg(headers={"subject": ["Hello world"]}), True),
    (s.Header("Subject", "ünïcode"), Msg(headers={"subject": ["ÜNÏCODE test"]}), True),
    (s.Header("X-Missing", ""), Msg(), False),
    (s.Header("X-Present", ""), Msg(headers={"x-present": [""]}), True),
    (s.Body("needle"), Msg(body="hay NEEDLE hay"), True),
    (s.Text("from-header"), Msg(headers={"from": ["x from-header"]}), True),
    (s.SizeKey("larger", 99), Msg(size=100), True),
    (s.SizeKey("larger", 100), Msg(size=100), False),
    (s.SizeKey("smaller", 101), Msg(size=100), True),
    (s.SeqKey(SequenceSet(((STAR, STAR),))), Msg(seq=10), True),
    (s.UidKey(SequenceSet(((50, STAR),))), Msg(uid=100), True),
    (s.UidKey(SequenceSet((), saved=True)), Msg(uid=5), True),
    (s.UidKey(SequenceSet((), saved=True)), Msg(uid=6), False),
    (s.ModSeqKey(5), Msg(modseq=5), True),
    (s.ModSeqKey(6), Msg(modseq=5), False),
    (s.DateKey("internal", "on", dt.date(2020, 3, 4)), Msg(internaldate=day(2020, 3, 4)), True),
    (s.DateKey("internal", "before", dt.date(2020, 3, 4)), Msg(internaldate=day(2020, 3, 4)),
     False),
    (s.DateKey("internal", "since", dt.date(2020, 3, 4)), Msg(internaldate=day(2020, 3, 4)),
     True),
    (s.DateKey("sent", "before", dt.date(2020, 1, 1)), Msg(sent=dt.date(2019, 12, 31)), True),
    (s.DateKey("sent", "on", dt.date(2020, 1, 1)), Msg(sent=None), False),
    (s.DateKey("save", "on", dt.date(2020, 3, 4)), Msg(internaldate=day(2020, 3, 4)), True),
    (s.Within("younger", 100), Msg(internaldate=1_000_000.0 - 50), True),
    (s.Within("older", 100), Msg(internaldate=1_000_000.0 - 50), False),
    (s.Or(s.HasFlag("\\Seen"), s.SizeKey("larger", 1)), Msg(), True),
    (s.And(()), Msg(), True),
    (s.ObjectIdKey("EMAILID", "E1"), Msg(), True),
    (s.SaveDateSupported(), Msg(), True),
])
def test_evaluate(key: s.SearchKey, msg: Msg, expected: bool) -> None:
    assert s.evaluate(key, msg, ENV) is expected


def test_short_circuit_skips_body() -> None:
    msg = Msg(flags=frozenset())
    key = s.And((s.HasFlag("\\Seen"), s.Body("x")))
    assert not s.evaluate(key, msg, ENV)
    assert msg.calls == []
    key2 = s.Or(s.All(), s.Body("x"))
    assert s.evaluate(key2, msg, ENV) and msg.calls == []


def test_deep_tree_no_recursion_error() -> None:
    key: s.SearchKey = s.All()
    for _ in range(100_000):
        key = s.Not(key)
    assert s.evaluate(key, Msg(), ENV) is True  # even number of NOTs
    assert s.depth(key) == 100_001
    assert s.needs_text(key) == set()


def test_needs_text() -> None:
    key = s.And((s.Header("From", "x"), s.Or(s.Body("a"), s.Not(s.Text("b"))),
                 s.DateKey("sent", "on", dt.date(2000, 1, 1))))
    assert s.needs_text(key) == {"header", "body", "text", "sent"}


@given(st.integers(min_value=0, max_value=30), st.booleans())
def test_not_parity(n: int, seen: bool) -> None:
    key: s.SearchKey = s.HasFlag("\\Seen")
    for _ in range(n):
        key = s.Not(key)
    msg = Msg(flags=frozenset({"\\Seen"}) if seen else frozenset())
    assert s.evaluate(key, msg, ENV) is (seen if n % 2 == 0 else not seen)


@given(st.text(alphabet="0123456789:,*$ x", max_size=40))
def test_parse_sequence_set_any_text(text: str) -> None:
    try:
        seq = parse_sequence_set(text)
    except SequenceError:
        return
    # whatever parses must resolve, and its text form must parse to the same set
    assert parse_sequence_set(str(seq)).resolve(1000) == seq.resolve(1000)
