"""The selected mailbox as one session sees it: UID -> sequence number map and known modseqs.

RFC 9051 §2.3.1.2: sequence numbers are positions in the session's view, which changes
only when the session *tells* the client (EXISTS, EXPUNGE/VANISHED). So the view is the
session's own copy, updated from the store's change feed at command boundaries:

* ``uids`` is a sorted ``array('I')`` (UIDs only grow, so appends are ``append``); the
  sequence number of a UID is ``bisect_left + 1`` — O(log n) for 100k messages;
* ``modseq`` maps UID -> the modseq the client was last told about (or that SELECT saw),
  so a ``flags`` change that this session already reported (its own STORE) is not sent
  twice: only a row whose modseq moved past the known one is announced. It is kept as
  one baseline (the highest modseq SELECT saw: every later change has a higher one,
  since modseqs grow mailbox-wide) plus the UIDs told about since; ``uid in modseq``
  means "in the view";
* expunges that arrive while EXPUNGE responses are not allowed (during FETCH, STORE,
  SEARCH, RFC 9051 §7.5.1) wait in ``pending_expunge``; the UIDs stay in the view (their
  sequence numbers must not shift) until the session announces them.

Memory: 4 octets per message (100k messages: 400 KB per selected session) plus a dict
entry per message whose flags changed since SELECT; MessageRef rows are fetched on demand.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable, Iterator, Sequence

from mailyard.protocol.imap.sequence import SequenceSet
from mailyard.storage.interface import MailboxIndex
from mailyard.storage.models import Mailbox, MessageRef


class KnownModseq:
    """UID -> known modseq for the UIDs of a view: a baseline plus exceptions."""

    __slots__ = ("_told", "_view", "baseline")

    def __init__(self, view: MailboxView, baseline: int) -> None:
        self._view = view
        self.baseline = baseline
        self._told: dict[int, int] = {}

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and self._view.seq_of(uid) is not None

    def __getitem__(self, uid: int) -> int:
        if uid not in self:
            raise KeyError(uid)
        return self._told.get(uid, self.baseline)

    def get(self, uid: int, default: int = 0) -> int:
        if uid not in self:
            return default
        return self._told.get(uid, self.baseline)

    def __setitem__(self, uid: int, modseq: int) -> None:
        self._told[uid] = modseq

    def __delitem__(self, uid: int) -> None:
        self._told.pop(uid, None)

    def __len__(self) -> int:
        return len(self._view.uids)

    def __iter__(self) -> Iterator[int]:
        return iter(self._view.uids)


class MailboxView:
    def __init__(self, mailbox: Mailbox, messages: Sequence[MessageRef], *,
                 readonly: bool) -> None:
        self.mailbox = mailbox
        self.readonly = readonly
        self.uids: array[int] = array("I", sorted(m.uid for m in messages))
        self.modseq = KnownModseq(self, max((m.modseq for m in messages), default=0))
        self.pending_expunge: set[int] = set()
        self.recent: set[int] = set()  # \Recent for this session (recent.py)
        self.keywords: set[str] = set()
        self.first_unseen: int | None = None  # UID, as SELECT saw it
        for m in messages:
            self.note_flags(m.flags)
            if self.first_unseen is None and "\\Seen" not in m.flags:
                self.first_unseen = m.uid

    @classmethod
    def from_index(cls, mailbox: Mailbox, index: MailboxIndex, *,
                   readonly: bool) -> MailboxView:
        """The view from ``Store.mailbox_index``: no per-message objects at all."""
        view = cls(mailbox, (), readonly=readonly)
        view.uids = array("I", index.uids)
        view.modseq.baseline = index.modseq
        view.keywords = set(index.keywords)
        view.first_unseen = index.first_unseen
        return view

    @property
    def id(self) -> int:
        return self.mailbox.id

    @property
    def exists(self) -> int:
        return len(self.uids)

    def note_flags(self, flags: Iterable[str]) -> bool:
        """Remember keywords in use; True when a new one appeared (FLAGS must be resent)."""
        new = False
        for f in flags:
            if not f.startswith("\\") and f not in self.keywords:
                self.keywords.add(f)
                new = True
        return new

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return i + 1
        return None

    def uid_of(self, seq: int) -> int:
        return self.uids[seq - 1]

    def add(self, refs: Iterable[MessageRef]) -> int:
        """Add new messages (UIDs above the current ones); returns how many were new."""
        n = 0
        for m in sorted(refs, key=lambda r: r.uid):
            if self.seq_of(m.uid) is not None:
                continue
            if self.uids and m.uid < self.uids[-1]:
                bisect.insort(self.uids, m.uid)  # cannot happen with growing UIDs
            else:
                self.uids.append(m.uid)
            self.modseq[m.uid] = m.modseq
            self.note_flags(m.flags)
            n += 1
        return n

    def remove(self, uids: Iterable[int]) -> list[int]:
        """Remove UIDs; returns the sequence numbers to announce, in the order
        EXPUNGE responses must be sent (descending, so each stays valid)."""
        present = sorted({u for u in uids if u in self.modseq})
        if not present:
            return []
        seqs = [bisect.bisect_left(self.uids, u) + 1 for u in present]
        gone = set(present)
        if len(present) == 1:
            del self.uids[seqs[0] - 1]
        else:
            self.uids = array("I", [u for u in self.uids if u not in gone])
        for u in present:
            del self.modseq[u]
            self.pending_expunge.discard(u)
            self.recent.discard(u)
        return sorted(seqs, reverse=True)

    # -- sequence sets -------------------------------------------------------------------
    def select_uids(self, seqset: SequenceSet, *, uid: bool,
                    saved: Sequence[int] | None = None) -> list[int]:
        """The UIDs a sequence set names, ascending. ``$`` (RFC 5182) adds the saved UIDs."""
        out: list[int] = []
        if seqset.ranges:
            plain = SequenceSet(seqset.ranges)
            if uid:
                # RFC 9051 §6.4.9: "*" is the largest UID in use; a range beyond it
                # still names that one message (e.g. 4:* with UIDs up to 3).
                out = list(plain.select(self.uids))
            else:
                out = [self.uids[i - 1] for i in plain.seqnums(len(self.uids))]
        if seqset.saved and saved:
            extra = [u for u in saved if u in self.modseq]
            out = sorted(set(out).union(extra))
        return out
