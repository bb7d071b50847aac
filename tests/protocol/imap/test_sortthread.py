"""SORT / THREAD algorithms (RFC 5256, RFC 5957): mailyard.protocol.imap.sortthread."""

from __future__ import annotations

import re
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailyard.protocol.imap.sortthread import (
    SortItem,
    ThreadNode,
    base_subject,
    casemap,
    format_threads,
    sent_date,
    sort_messages,
    subject_info,
    thread_messages,
    thread_orderedsubject,
    thread_references,
    thread_refs,
)

T0 = 1_000_000_000.0  # 2001-09-09T01:46:40Z


def item(seq: int, *, uid: int | None = None, size: int = 100, internal: float = T0,
         **headers: str) -> SortItem:
    """headers as keyword args: message_id= -> Message-ID, in_reply_to= -> In-Reply-To."""
    names = {"message_id": "Message-ID", "in_reply_to": "In-Reply-To"}
    h = {names.get(k, k.capitalize()): v for k, v in headers.items()}
    return SortItem(seq=seq, uid=uid if uid is not None else seq * 10, size=size,
                    internaldate=internal, headers=h)


def date(n: int) -> str:
    """A Date: header n minutes after 2020-01-01 00:00 UTC."""
    return f"Wed, 1 Jan 2020 {n // 60:02d}:{n % 60:02d}:00 +0000"


# -- base subject (RFC 5256 §2.1) ----------------------------------------------------------
@pytest.mark.parametrize(("raw", "base", "reply"), [
    ("hello", "HELLO", False),
    ("Re: hello", "HELLO", True),
    ("RE: Re: re: hello", "HELLO", True),
    ("Fw: hello", "HELLO", True),
    ("Fwd: hello", "HELLO", True),
    ("FWD:hello", "HELLO", True),
    ("Re: [list] Fwd: Re: hello (fwd)", "HELLO", True),
    ("[list] hello", "HELLO", False),
    ("[list] [other] hello", "HELLO", False),
    ("[list]", "[LIST]", False),            # (4) only if a non-empty base remains
    ("[a] [b]", "[B]", False),               # last blob becomes the base
    ("Re[2]: hello", "HELLO", True),         # subj-refwd may carry a blob
    ("Re [2] : hello", "HELLO", True),       # *WSP around it
    ("[list] Re: hello", "HELLO", True),     # *subj-blob subj-refwd is one leader
    ("hello (fwd)", "HELLO", True),
    ("hello (fwd) (FWD)  ", "HELLO", True),
    ("hello(fwd)", "HELLO", True),
    ("[fwd: hello]", "HELLO", True),         # (6)
    ("[Fwd: Re: [list] hello (fwd)]", "HELLO", True),
    ("[fwd: [fwd: hello]]", "HELLO", True),
    ("Re: [fwd: hello] (fwd)", "HELLO", True),
    ("  \t hello \t  world  ", "HELLO WORLD", False),
    ("hello\r\n world", "HELLO WORLD", False),  # folded header
    ("Reply: hello", "REPLY: HELLO", False),    # "re" must be followed by WSP/blob/":"
    ("Re hello", "RE HELLO", False),
    ("Fwdx: hello", "FWDX: HELLO", False),
    ("Re:", "", True),
    ("", "", False),
    ("[unterminated hello", "[UNTERMINATED HELLO", False),
    ("hello [fwd: x]", "HELLO [FWD: X]", False),
])
def test_base_subject_table(raw: str, base: str, reply: bool) -> None:
    assert subject_info(raw) == (base, reply)
    assert base_subject(raw) == base
    assert base_subject(raw.encode()) == base


def test_base_subject_decodes_rfc2047_before_extraction() -> None:
    # "Re: " inside an encoded-word is still a leader: decoding is step (1).
    assert subject_info("=?utf-8?q?Re=3A_caf=C3=A9?=") == (casemap("CAFÉ"), True)
    assert base_subject("=?iso-8859-1?q?R=E9sum=E9?= (fwd)") == casemap("résumé")
    # Adjacent encoded-words join without the whitespace between them (RFC 2047 §6.2).
    assert base_subject("=?utf-8?q?Re:?= =?utf-8?q?_hi?=") == "HI"
    # Raw UTF-8 (RFC 6532) is accepted as is.
    assert base_subject("Re: Grüße".encode()) == casemap("grüße")


def test_base_subject_case_and_compatibility_folding() -> None:
    assert base_subject("HeLLo") == base_subject("hello") == base_subject("HELLO")
    # i;unicode-casemap: NFKD folds compatibility forms (fullwidth letters).
    assert base_subject("ｈｅｌｌｏ") == "HELLO"
    assert base_subject("Ａｂｃ") == base_subject("abc")


def test_base_subject_none_and_garbage() -> None:
    assert subject_info(None) == ("", False)
    assert base_subject(b"\xff\xfe Re: x") != ""
    assert base_subject("=?bogus-charset?q?x?=") == "=?BOGUS-CHARSET?Q?X?="


_PATHOLOGICAL = {
    "many-re": "Re: " * 100_000 + "x",
    "many-blobs": "[a]" * 100_000 + "x",
    "blobs-then-re": "[a] " * 50_000 + "Re: x",
    "nested-fwd": "[fwd:" * 50_000 + "x" + "]" * 50_000,
    "many-fwd-trailers": "x" + " (fwd)" * 50_000,
    "open-brackets": "[" * 200_000,
    "unterminated-refwd-blob": "Re [" + "a" * 200_000,
    "re-blob-no-colon": "[a] Re [b] " * 30_000 + "x",
}


@pytest.mark.parametrize("raw", list(_PATHOLOGICAL.values()), ids=list(_PATHOLOGICAL))
def test_base_subject_pathological_inputs_are_fast(raw: str) -> None:
    start = time.perf_counter()
    subject_info(raw)
    # Linear work is well under a second; a quadratic scan of these would take hours.
    assert time.perf_counter() - start < 30


def test_base_subject_pathological_results() -> None:
    assert base_subject("Re: " * 1000 + "x") == "X"
    assert base_subject("[a]" * 1000 + "x") == "X"
    assert base_subject("[fwd:" * 1000 + "x" + "]" * 1000) == "X"
    assert base_subject("x" + " (fwd)" * 1000) == "X"


# -- sent date (RFC 5256 §2.2) -------------------------------------------------------------
def test_sent_date_adjusts_time_zone() -> None:
    a = item(1, date="Wed, 1 Jan 2020 12:00:00 +0200")
    b = item(2, date="Wed, 1 Jan 2020 10:00:00 +0000")
    c = item(3, date="Wed, 1 Jan 2020 05:00:00 -0500")
    assert sent_date(a) == sent_date(b) == sent_date(c) == 1_577_872_800.0


@pytest.mark.parametrize("bad", ["", "garbage", "Wed, 31 Feb 2020 10:00:00 +0000",
                                 "1 Jan 2020 25:00:00 +0000", "1 Jan 99999 00:00 +0000",
                                 "1 Jan 2020 00:00 +9999", "\xff\x00"])
def test_sent_date_falls_back_to_internal_date(bad: str) -> None:
    assert sent_date(item(1, internal=1234.5, date=bad)) == 1234.5
    assert sent_date(item(1, internal=1234.5)) == 1234.5


# -- SORT (RFC 5256 §3, RFC 5957) ----------------------------------------------------------
def test_sort_arrival_size_and_seq_tiebreak() -> None:
    msgs = [item(1, internal=30, size=5), item(2, internal=10, size=5),
            item(3, internal=20, size=1), item(4, internal=10, size=9)]
    assert sort_messages(msgs, [(False, "ARRIVAL")]) == [2, 4, 3, 1]
    assert sort_messages(msgs, [(True, "ARRIVAL")]) == [1, 3, 2, 4]  # ties stay ascending
    assert sort_messages(msgs, [(False, "SIZE")]) == [3, 1, 2, 4]
    assert sort_messages(msgs, [(True, "SIZE")]) == [4, 1, 2, 3]
    assert sort_messages(msgs, [(False, "SIZE"), (True, "ARRIVAL")]) == [3, 1, 2, 4]
    assert sort_messages(msgs, [(True, "SIZE"), (False, "ARRIVAL")]) == [4, 2, 1, 3]
    assert sort_messages(reversed(msgs), [(False, "SIZE")]) == [3, 1, 2, 4]
    assert sort_messages(msgs, [(False, "ARRIVAL")], uid=True) == [20, 40, 30, 10]
    assert sort_messages([], [(False, "DATE")]) == []


def test_sort_date_uses_sent_date_with_internal_fallback() -> None:
    msgs = [
        item(1, internal=T0, date="Sat, 1 Jan 2000 10:00:00 +0000"),
        item(2, internal=T0, date="Sat, 1 Jan 2000 11:00:00 +0200"),  # 09:00Z
        item(3, internal=900_000_000.0),                              # 1998, no Date
        item(4, internal=2_000_000_000.0, date="not a date"),         # 2033
        item(5, internal=0, date="Sat, 1 Jan 2000 10:00:00 +0000"),   # tie with 1
    ]
    assert sort_messages(msgs, [(False, "DATE")]) == [3, 2, 1, 5, 4]
    assert sort_messages(msgs, [(True, "DATE")]) == [4, 1, 5, 2, 3]


def test_sort_subject_uses_base_subject() -> None:
    msgs = [item(1, subject="Re: beta"), item(2, subject="alpha"),
            item(3, subject="[list] Fwd: Alpha"), item(4, subject="gamma (fwd)"),
            item(5), item(6, subject="BETA")]
    assert sort_messages(msgs, [(False, "SUBJECT")]) == [5, 2, 3, 1, 6, 4]
    assert sort_messages(msgs, [(True, "SUBJECT")]) == [4, 1, 6, 2, 3, 5]


def test_sort_address_keys_use_addr_mailbox_of_first_address() -> None:
    msgs = [
        item(1, **{"from": "Zed <alice@z.example>", "to": "b@x", "cc": "y@x"}),
        item(2, **{"from": "carol@a.example, aaron@a.example", "to": "A@x", "cc": "x@x"}),
        item(3, **{"from": '"Bob" <BOB@b.example>', "to": "c@x"}),
        item(4),  # missing headers sort as the empty string, first
        item(5, **{"from": "Friends: dave@d.example;", "to": "undisclosed-recipients:;"}),
    ]
    assert sort_messages(msgs, [(False, "FROM")]) == [4, 1, 3, 2, 5]
    assert sort_messages(msgs, [(False, "TO")]) == [4, 5, 2, 1, 3]
    assert sort_messages(msgs, [(False, "CC")]) == [3, 4, 5, 2, 1]
    assert sort_messages(msgs, [(True, "CC")]) == [1, 2, 3, 4, 5]


def test_sort_display_keys_rfc5957() -> None:
    msgs = [
        item(1, **{"from": "Zed <alice@z.example>", "to": "Yves <a@x>"}),
        item(2, **{"from": "bob@b.example"}),                  # no name: addr-spec
        item(3, **{"from": '"" <aaa@c.example>'}),              # empty name: addr-spec
        item(4, **{"from": "=?utf-8?q?=C3=89mile?= <e@x>", "to": "b@y"}),  # decoded
        item(5, **{"from": '"carol, the great" <c@x>'}),
    ]
    assert sort_messages(msgs, [(False, "DISPLAYFROM")]) == [3, 2, 5, 4, 1]
    assert sort_messages(msgs, [(False, "DISPLAYTO")]) == [2, 3, 5, 4, 1]
    # Plain FROM compares addr-mailbox instead.
    assert sort_messages(msgs, [(False, "FROM")]) == [3, 1, 2, 5, 4]


def test_sort_headers_case_insensitive_and_getter() -> None:
    a = SortItem(seq=1, uid=1, size=1, internaldate=0, headers={"SUBJECT": "b"})
    b = SortItem(seq=2, uid=2, size=1, internaldate=0, headers={"subject": b"a"})
    c = SortItem(seq=3, uid=3, size=1, internaldate=0,
                 headers=lambda n: "0" if n.lower() == "subject" else None)
    assert sort_messages([a, b, c], [(False, "SUBJECT")]) == [3, 2, 1]


def test_sort_unknown_key() -> None:
    with pytest.raises(ValueError):
        sort_messages([item(1)], [(False, "BOGUS")])


# -- serializer ----------------------------------------------------------------------------
def N(i: int | None, *kids: ThreadNode) -> ThreadNode:
    return ThreadNode(i, list(kids))


def test_format_threads_rfc5256_shapes() -> None:
    # RFC 5256 §4 examples.
    assert format_threads([N(2), N(3, N(6, N(4, N(23)), N(44, N(7, N(96)))))]) \
        == "(2)(3 6 (4 23)(44 7 96))"
    assert format_threads([N(None, N(3), N(5))]) == "((3)(5))"
    assert format_threads([N(1), N(2, N(3, N(4))), N(5, N(6), N(7))]) == "(1)(2 3 4)(5 (6)(7))"
    assert format_threads([]) == ""
    assert format_threads([N(None)]) == ""


def test_format_threads_deep_trees_are_iterative() -> None:
    depth = sys.getrecursionlimit() * 10
    chain = N(depth)
    for i in range(depth - 1, 0, -1):
        chain = N(i, chain)
    assert format_threads([chain]) == "(" + " ".join(map(str, range(1, depth + 1))) + ")"
    # Nested branching: every level has a leaf and a subtree.
    tree = N(2 * depth)
    for i in range(depth - 1, 0, -1):
        tree = N(2 * i, N(2 * i + 1), tree)
    out = format_threads([tree])
    assert out.startswith("(2 (3)(4 (5)(6 ")
    assert out.count("(") == out.count(")") == 2 * (depth - 1) + 1


# -- THREAD=ORDEREDSUBJECT -----------------------------------------------------------------
def test_orderedsubject() -> None:
    msgs = [
        item(1, subject="apple", date=date(10)),
        item(2, subject="Re: apple", date=date(5)),   # older: becomes the parent
        item(3, subject="banana", date=date(1)),
        item(4, subject="[x] Apple (fwd)", date=date(20)),
        item(5, subject="cherry", date=date(7)),
        item(6, subject="Re: cherry", date=date(8)),
        item(7, date=date(3)),                        # empty subjects group together
        item(8, subject="Re:", date=date(30)),
    ]
    threads = thread_orderedsubject(msgs)
    assert format_threads(threads) == "(3)(7 8)(2 (1)(4))(5 6)"
    assert format_threads(thread_messages(msgs, "ORDEREDSUBJECT", uid=True)) \
        == "(30)(70 80)(20 (10)(40))(50 60)"


def test_orderedsubject_ties_by_sequence() -> None:
    msgs = [item(3, subject="x"), item(1, subject="x"), item(2, subject="y")]
    assert format_threads(thread_orderedsubject(msgs)) == "(1 3)(2)"


# -- THREAD=REFERENCES ---------------------------------------------------------------------
def test_references_rfc5256_example_shape() -> None:
    msgs = [
        item(2, message_id="<two@x>", subject="other", date=date(0)),
        item(3, message_id="<3@x>", subject="topic", date=date(1)),
        item(6, message_id="<6@x>", references="<3@x>", subject="Re: topic", date=date(2)),
        item(4, message_id="<4@x>", references="<3@x> <6@x>", subject="Re: topic", date=date(3)),
        item(23, message_id="<23@x>", references="<3@x> <6@x> <4@x>", subject="Re: topic",
             date=date(4)),
        item(44, message_id="<44@x>", in_reply_to="<6@x>", subject="Re: topic", date=date(5)),
        item(7, message_id="<7@x>", references="<44@x>", subject="Re: topic", date=date(6)),
        item(96, message_id="<96@x>", references="<3@x> <6@x> <44@x> <7@x>",
             subject="Re: topic", date=date(7)),
    ]
    assert format_threads(thread_references(msgs)) == "(2)(3 6 (4 23)(44 7 96))"
    assert format_threads(thread_messages(list(reversed(msgs)), "REFERENCES")) \
        == "(2)(3 6 (4 23)(44 7 96))"


def test_references_missing_parent_gives_dummy_root() -> None:
    msgs = [
        item(3, message_id="<a@x>", references="<gone@x>", subject="Re: one", date=date(1)),
        item(5, message_id="<b@x>", references="<gone@x>", subject="Re: two", date=date(2)),
    ]
    assert format_threads(thread_references(msgs)) == "((3)(5))"
    # A dummy with one child is dropped and the child promoted.
    one = [item(3, message_id="<a@x>", references="<gone1@x> <gone2@x>", subject="s")]
    assert format_threads(thread_references(one)) == "(3)"


def test_references_nested_dummies_are_pruned() -> None:
    # <m1> -> (missing <d>) -> <m2>, <m3>: the dummy is not at the root, so its
    # children are promoted to siblings under <m1>.
    msgs = [
        item(1, message_id="<m1@x>", subject="t", date=date(0)),
        item(2, message_id="<m2@x>", references="<m1@x> <d@x>", subject="Re: t", date=date(1)),
        item(3, message_id="<m3@x>", references="<m1@x> <d@x>", subject="Re: t", date=date(2)),
    ]
    assert format_threads(thread_references(msgs)) == "(1 (2)(3))"


def test_references_in_reply_to_only_when_no_references() -> None:
    msgs = [
        item(1, message_id="<p@x>", subject="a", date=date(0)),
        item(2, message_id="<q@x>", subject="b", date=date(1)),
        # References wins over In-Reply-To.
        item(3, message_id="<r@x>", references="<p@x>", in_reply_to="<q@x>", subject="c",
             date=date(2)),
        # References without a valid id: In-Reply-To's first valid id.
        item(4, message_id="<s@x>", references="junk <>", in_reply_to="bla <q@x> <p@x>",
             subject="d", date=date(3)),
    ]
    assert format_threads(thread_references(msgs)) == "(1 3)(2 4)"


def test_references_message_ids_are_case_sensitive() -> None:
    msgs = [item(1, message_id="<ID@x>", subject="a", date=date(0)),
            item(2, message_id="<y@x>", references="<id@x>", subject="b", date=date(1))]
    assert format_threads(thread_references(msgs)) == "(1)(2)"


def test_references_missing_and_duplicate_message_ids() -> None:
    msgs = [
        item(1, message_id="<dup@x>", subject="first", date=date(0)),
        item(2, message_id="<dup@x>", subject="second", date=date(1)),  # duplicate: own id
        item(3, subject="third", date=date(2)),                          # no id
        item(4, message_id="not an id", subject="fourth", date=date(3)),  # invalid id
        item(5, message_id="<r@x>", references="<dup@x>", subject="fifth", date=date(4)),
    ]
    # The reply attaches to the first (lowest sequence) holder of <dup@x>.
    assert format_threads(thread_references(msgs)) == "(1 5)(2)(3)(4)"


def test_references_loops_are_not_created() -> None:
    msgs = [
        item(1, message_id="<a@x>", references="<b@x>", subject="one", date=date(0)),
        item(2, message_id="<b@x>", references="<a@x>", subject="two", date=date(1)),
        item(3, message_id="<c@x>", references="<c@x>", subject="three", date=date(2)),
        item(4, message_id="<d@x>", references="<e@x> <d@x> <e@x>", subject="four",
             date=date(3)),
        item(5, message_id="<e@x>", references="<d@x> <e@x> <d@x>", subject="five",
             date=date(4)),
    ]
    threads = thread_references(msgs)
    out = format_threads(threads)
    assert sorted(int(n) for n in re.findall(r"\d+", out)) == [1, 2, 3, 4, 5]
    # <a> got the dummy <b> as parent first; when <b> arrives, making <a> its
    # parent would close a loop, so that link is not made (step 1.B).
    assert out == "(2 1)(3)(5 4)"


def test_references_last_reference_reparents() -> None:
    # <c> first says its parent is <a>; a later message's References say a->b->c.
    # Step 1.A never changes an existing parent, so <c> stays under <a>.
    msgs = [
        item(1, message_id="<a@x>", subject="a", date=date(0)),
        item(2, message_id="<c@x>", references="<a@x>", subject="c", date=date(1)),
        item(3, message_id="<b@x>", subject="b", date=date(2)),
        item(4, message_id="<d@x>", references="<a@x> <b@x> <c@x>", subject="d", date=date(3)),
    ]
    assert format_threads(thread_references(msgs)) == "(1 (2 4)(3))"
    # Step 1.B: the message's own parent is always its last reference, breaking a
    # link made earlier from someone else's References.
    msgs = [
        item(1, message_id="<a@x>", subject="a", date=date(0)),
        item(2, message_id="<z@x>", references="<a@x> <c@x>", subject="z", date=date(1)),
        item(3, message_id="<b@x>", subject="b", date=date(2)),
        item(4, message_id="<c@x>", references="<b@x>", subject="c", date=date(3)),
    ]
    assert format_threads(thread_references(msgs)) == "(1)(3 4 2)"


def test_references_subject_grouping() -> None:
    msgs = [
        # Two unlinked threads with the same base subject, neither a reply:
        # a new dummy parents both.
        item(1, message_id="<1@x>", subject="lunch", date=date(0)),
        item(2, message_id="<2@x>", subject="Lunch", date=date(1)),
        # A reply without references joins the non-reply with its subject.
        item(3, message_id="<3@x>", subject="meeting", date=date(2)),
        item(4, message_id="<4@x>", subject="Re: meeting", date=date(3)),
        # Empty subjects are never grouped.
        item(5, message_id="<5@x>", date=date(4)),
        item(6, message_id="<6@x>", subject="Re:", date=date(5)),
    ]
    assert format_threads(thread_references(msgs)) == "((1)(2))(3 4)(5)(6)"
    # REFS does no subject grouping.
    assert format_threads(thread_refs(msgs)) == "(1)(2)(3)(4)(5)(6)"


def test_references_subject_grouping_with_dummies() -> None:
    msgs = [
        # Dummy root (missing <p>) whose first child has subject "plan".
        item(1, message_id="<1@x>", references="<p@x>", subject="Re: plan", date=date(0)),
        item(2, message_id="<2@x>", references="<p@x>", subject="Re: plan", date=date(1)),
        # A second dummy root with the same subject: children merge.
        item(3, message_id="<3@x>", references="<q@x>", subject="Re: plan", date=date(2)),
        item(4, message_id="<4@x>", references="<q@x>", subject="plan", date=date(3)),
        # A plain message with that subject becomes a child of the dummy.
        item(5, message_id="<5@x>", subject="Plan", date=date(4)),
    ]
    assert format_threads(thread_references(msgs)) == "((1)(2)(3)(4)(5))"


def test_references_reply_in_table_is_replaced_by_original() -> None:
    msgs = [
        item(1, message_id="<1@x>", subject="Re: x", date=date(0)),
        item(2, message_id="<2@x>", subject="x", date=date(1)),
        item(3, message_id="<3@x>", subject="Re: x", date=date(2)),
    ]
    # <2> (not a reply) holds the subject table entry; both replies go under it.
    assert format_threads(thread_references(msgs)) == "(2 (1)(3))"


def test_references_children_sorted_by_date_then_seq() -> None:
    msgs = [
        item(1, message_id="<r@x>", subject="r", date=date(0)),
        item(2, message_id="<a@x>", references="<r@x>", subject="a", date=date(9)),
        item(3, message_id="<b@x>", references="<r@x>", subject="b", date=date(5)),
        item(4, message_id="<c@x>", references="<r@x>", subject="c", date=date(5)),
        item(5, message_id="<d@x>", references="<r@x>", subject="d", internal=0.0),
    ]
    assert format_threads(thread_references(msgs)) == "(1 (5)(3)(4)(2))"


@pytest.mark.parametrize("order", ["forward", "backward", "full-refs"])
def test_references_deep_chain_no_recursion_error(order: str) -> None:
    n = 10_000
    msgs = []
    for i in range(1, n + 1):
        if order == "full-refs":
            refs = " ".join(f"<{j}@x>" for j in range(max(1, i - 50), i))
        else:
            refs = f"<{i - 1}@x>" if i > 1 else ""
        msgs.append(SortItem(seq=i, uid=i, size=1, internaldate=float(i),
                             headers={"Message-ID": f"<{i}@x>", "References": refs,
                                      "Subject": "Re: deep"}))
    if order == "backward":
        msgs = [SortItem(seq=n + 1 - m.seq, uid=m.uid, size=1, internaldate=m.internaldate,
                         headers=m.headers) for m in msgs]
    start = time.perf_counter()
    threads = thread_references(msgs)
    out = format_threads(threads)
    assert time.perf_counter() - start < 60
    assert out.count("(") == 1
    assert len(out.split()) == n
    assert len(format_threads(thread_refs(msgs)).split()) == n


def test_references_long_reference_loop() -> None:
    n = 5000
    # Every message names the next one as its parent: a ring.
    msgs = [item(i, message_id=f"<{i}@x>", references=f"<{i % n + 1}@x>", subject=f"s{i}",
                 date=date(i % 1000)) for i in range(1, n + 1)]
    out = format_threads(thread_references(msgs))
    assert sorted(int(x) for x in re.findall(r"\d+", out)) == list(range(1, n + 1))


def test_thread_unknown_algorithm() -> None:
    with pytest.raises(ValueError):
        thread_messages([], "BOGUS")


# -- fuzz: any headers -> no exception, every message exactly once --------------------------
_ids = st.sampled_from(["<a@x>", "<b@x>", "<c@x>", "<d@x>", "<e@x>", "<>", "<a@X>", "junk"])
_text = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(["Re:", "Fwd:", "fw", "[", "]", "[fwd:", "(fwd)", " ", "\t",
                              "x", "=?utf-8?q?Re=3A?=", "=?x?b?", "?=", "\r\n", "é", "ß"]),
             max_size=12).map("".join),
)
_value = st.one_of(_text, st.binary(max_size=40), _ids,
                   st.lists(_ids, max_size=6).map(" ".join))
_headers = st.dictionaries(
    st.sampled_from(["Subject", "Date", "From", "To", "Cc", "Message-ID", "References",
                     "In-Reply-To", "subject", "message-id"]),
    _value, max_size=8)
_items = st.lists(st.tuples(_headers, st.floats(allow_nan=False, allow_infinity=False,
                                                 min_value=-1e12, max_value=1e12),
                            st.integers(0, 10**9)), max_size=25)


def _ids_in(out: str) -> list[int]:
    return sorted(int(x) for x in re.findall(r"\d+", out))


def _balanced(out: str) -> bool:
    depth = 0
    for ch in out:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_items, st.lists(st.tuples(st.booleans(), st.sampled_from(
    ["ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"])),
    min_size=1, max_size=4))
def test_fuzz_any_headers(rows: list[tuple[dict, float, int]],
                          criteria: list[tuple[bool, str]]) -> None:
    msgs = [SortItem(seq=i + 1, uid=100 + i, size=size, internaldate=t, headers=h)
            for i, (h, t, size) in enumerate(rows)]
    seqs = list(range(1, len(msgs) + 1))
    assert sorted(sort_messages(msgs, criteria)) == seqs
    assert sorted(sort_messages(msgs, criteria, uid=True)) == [s + 99 for s in seqs]
    for alg in ("ORDEREDSUBJECT", "REFERENCES", "REFS"):
        threads = thread_messages(msgs, alg)
        out = format_threads(threads)
        assert _ids_in(out) == seqs, (alg, out)
        assert _balanced(out)
        assert "()" not in out
        if msgs:
            assert out.startswith("(") and out.endswith(")")


def _adversarial_chain(n: int, attackers: int) -> list[SortItem]:
    """A chain 1 <- 2 <- ... <- n, then messages whose References repeat
    "<leaf> <root>": each pair asks for a loop test that walks the whole chain."""
    msgs = [SortItem(seq=i, uid=i, size=1, internaldate=float(i),
                     headers={"Message-ID": f"<{i}@x>",
                              "References": f"<{i - 1}@x>" if i > 1 else ""})
            for i in range(1, n + 1)]
    refs = " ".join([f"<{n}@x> <1@x>"] * 500)
    msgs += [SortItem(seq=n + 1 + k, uid=n + 1 + k, size=1, internaldate=0.0,
                      headers={"Message-ID": f"<atk{k}@x>", "References": refs})
             for k in range(attackers)]
    return msgs


def test_references_loop_checks_are_bounded() -> None:
    # Unbounded: 1,000 * 500 walks of 5,000 steps (minutes); bounded: about a second.
    msgs = _adversarial_chain(5000, 1000)
    start = time.perf_counter()
    out = format_threads(thread_references(msgs))
    assert time.perf_counter() - start < 60
    assert _ids_in(out) == list(range(1, 6001))
    # The chain itself is intact: 1 is the root, 5000 hangs at the bottom.
    assert out.startswith("(1 (")
    assert " 4999 5000" in out


def test_references_exhausted_budget_refuses_links_but_keeps_messages(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import mailyard.protocol.imap.sortthread as mod

    monkeypatch.setattr(mod, "LOOP_CHECK_STEPS", 0)
    monkeypatch.setattr(mod, "LOOP_CHECK_STEPS_PER_MESSAGE", 0)
    # Arriving newest first, every link needs a walk (the child has children).
    msgs = [item(i, message_id=f"<{i}@x>", references=f"<{i - 1}@x>" if i > 1 else "",
                 subject=f"s{i}", date=date(i)) for i in range(5, 0, -1)]
    out = format_threads(thread_references(msgs))
    assert _ids_in(out) == [1, 2, 3, 4, 5]
    assert _balanced(out)
    monkeypatch.undo()
    assert format_threads(thread_references(msgs)) == "(1 2 3 4 5)"


def test_lone_surrogates_and_control_bytes_do_not_raise() -> None:
    # str header values may carry lone surrogates (surrogateescape'd raw bytes or not).
    msgs = [
        SortItem(seq=1, uid=1, size=1, internaldate=0,
                 headers={"Subject": "\ud800 re: x", "From": "\udcff <a\ud800@b>",
                          "Date": "\ud800", "Message-ID": "<\ud800>", "References": "<\ud800>"}),
        SortItem(seq=2, uid=2, size=1, internaldate=0, headers=lambda n: "\udfff\x00\x01"),
    ]
    crit = [(False, "SUBJECT"), (False, "DISPLAYFROM"), (True, "DATE"), (False, "FROM")]
    assert sorted(sort_messages(msgs, crit)) == [1, 2]
    for alg in ("ORDEREDSUBJECT", "REFERENCES", "REFS"):
        assert _ids_in(format_threads(thread_messages(msgs, alg))) == [1, 2]


def test_thread_node_repr_is_not_recursive() -> None:
    root = cur = ThreadNode(1)
    for i in range(2, sys.getrecursionlimit() * 5):
        nxt = ThreadNode(i)
        cur.children.append(nxt)
        cur = nxt
    assert repr(root) == "ThreadNode(id=1, children=1)"
