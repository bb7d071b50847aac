"""SEARCH / UID SEARCH (RFC 9051 §6.4.4), ESEARCH (RFC 4731), SEARCHRES (RFC 5182),
MODSEQ search (RFC 7162 §3.1.5).

How a search runs:

1. BODY and TEXT keys are answered by the full-text index (``store.search_text``, fed
   at delivery and APPEND) and replaced in the key tree by the set of matching UIDs, so
   no message body is read for them;
2. the candidates are narrowed without reading any message: a UID set from step 1 or
   from the client, and for a header key (SUBJECT, FROM, HEADER ...) with an ASCII
   value of 3+ characters the messages whose indexed header text contains the value
   (``store.header_candidates``: those plus the messages not indexed (yet), a
   superset, since the index holds ``name: decoded value`` lines made by the same
   decoder the evaluator uses). AND intersects, OR unites, NOT and other keys leave "all". What we give up:
   a header past the index's first 10^6 characters of header text is not seen;
3. the candidates (or every message of the view) are evaluated with the core's evaluator
   (protocol/imap/search.py) on a :class:`MessageSearchContext` built from its index
   row; only when the tree has header or sent-date keys is the message header read
   (the first 64 KiB, or the whole message when the header is longer).

The key tree is at most ``max_depth`` (64) deep (the parser guarantees it), so the
substitution in step 1 recurses at most 64 levels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from mailyard.message.parse import find_body_start
from mailyard.message.searchctx import MessageSearchContext
from mailyard.protocol.imap import commands as c
from mailyard.protocol.imap import response as r
from mailyard.protocol.imap import search as sk
from mailyard.protocol.imap.sequence import from_numbers
from mailyard.server.imap import objectid
from mailyard.server.imap.reply import Reply, ok
from mailyard.storage.models import MessageRef

if TYPE_CHECKING:
    from mailyard.server.imap.session import Session

HEADER_PROBE = 65536
HEADER_KIND = "imap.HEADER"  # blob_cache kind of a message's header block
HEADER_CACHE_MAX = 16384  # longer header blocks are read from the message each time
_NOTHING: sk.SearchKey = sk.Not(sk.All())


async def _substitute(s: Session, key: sk.SearchKey) -> sk.SearchKey:
    view = s.view
    assert view is not None
    if isinstance(key, sk.Body | sk.Text):
        if isinstance(key, sk.Body):
            uids = await s.ctx.store.search_text(view.id, key.value, field="body")
        else:
            uids = await s.ctx.store.search_text(view.id, key.value, field="text")
        return sk.UidKey(from_numbers(uids)) if uids else _NOTHING
    if isinstance(key, sk.And):
        return sk.And(tuple([await _substitute(s, k) for k in key.keys]))
    if isinstance(key, sk.Or):
        return sk.Or(await _substitute(s, key.left), await _substitute(s, key.right))
    if isinstance(key, sk.Not):
        return sk.Not(await _substitute(s, key.key))
    return key


async def _candidates(s: Session, key: sk.SearchKey) -> set[int] | None:
    """A superset of the UIDs ``key`` can match, or None for "any" (step 2 above)."""
    view = s.view
    assert view is not None
    store = s.ctx.store
    if isinstance(key, sk.UidKey) and not key.sequence.saved:
        return set(key.sequence.select(view.uids))
    if isinstance(key, sk.Header) and len(key.value) >= 3 and key.value.isascii():
        # No wait for the indexer: what it has not taken in yet is a candidate.
        return await store.header_candidates(view.id, key.value)
    if isinstance(key, sk.And):
        out: set[int] | None = None
        for k in key.keys:
            got = await _candidates(s, k)
            if got is not None:
                out = got if out is None else out & got
                if not out:
                    break
        return out
    if isinstance(key, sk.Or):
        left = await _candidates(s, key.left)
        right = await _candidates(s, key.right) if left is not None else None
        return None if left is None or right is None else left | right
    return None


def has_modseq(key: sk.SearchKey) -> bool:
    return _has(key, lambda k: isinstance(k, sk.ModSeqKey))


def _has(key: sk.SearchKey, test: Callable[[sk.SearchKey], bool]) -> bool:
    stack = [key]
    while stack:
        k = stack.pop()
        if test(k):
            return True
        if isinstance(k, sk.And):
            stack.extend(k.keys)
        elif isinstance(k, sk.Or):
            stack += [k.left, k.right]
        elif isinstance(k, sk.Not):
            stack.append(k.key)
    return False


async def header_bytes(s: Session, ref: MessageRef) -> bytes:
    """The message header (and maybe some body): enough for header keys and SORT.

    The header block (up to and with its empty line) is cached per blob
    (``imap.HEADER``, latin-1 so any octet survives) when it is at most
    HEADER_CACHE_MAX octets: a repeated SEARCH SUBJECT or SORT reads no message."""
    store = s.ctx.store
    cached = await store.cache_get(ref.blob_id, HEADER_KIND)
    if cached is not None:
        return cached.encode("latin-1")
    blobs = store.blobs
    data = b""
    if ref.size > HEADER_PROBE:
        head = await blobs.read(ref.blob_id, 0, HEADER_PROBE)
        if b"\r\n\r\n" in head or b"\n\n" in head:
            data = head
    if not data:
        data = await blobs.read(ref.blob_id)
    end = find_body_start(data)
    if end <= HEADER_CACHE_MAX and (end < len(data) or len(data) == ref.size):
        block = data[:end]
        if find_body_start(block) == end:  # the block alone splits where the message did
            store.cache_put_later(ref.blob_id, HEADER_KIND, block.decode("latin-1"))
            return block
    return data


async def run_search(s: Session, key: sk.SearchKey) -> list[tuple[int, MessageRef]]:
    """(seq, ref) of the matching messages in the view, ascending."""
    view = s.view
    assert view is not None
    key = await _substitute(s, key)
    needs = sk.needs_text(key) & {"header", "sent"}
    env = sk.SearchEnv(max_seq=view.exists, max_uid=view.uids[-1] if view.uids else 0,
                       now=s.ctx.clock(),
                       saved_uids=frozenset(s.saved) if s.saved is not None else None)
    threads = _has(key, lambda k: isinstance(k, sk.ObjectIdKey) and k.kind == "THREADID")
    out: list[tuple[int, MessageRef]] = []
    wanted = await _candidates(s, key)
    if wanted is None:
        refs = await s.ctx.store.list_messages(view.id)
    elif wanted:
        refs = await s.ctx.store.get_messages(view.id, sorted(wanted))
    else:
        refs = []
    for m in refs:
        seq = view.seq_of(m.uid)
        if seq is None:
            continue
        data = await header_bytes(s, m) if needs else None
        tid = await objectid.thread_id_of(s.ctx.store, m) if threads else ""
        msg = MessageSearchContext(uid=m.uid, seq=seq, flags=s.flags_of(m),
                                   size=m.size, internaldate=m.internaldate,
                                   savedate=m.savedate, modseq=m.modseq,
                                   email_id=objectid.email_id(m), thread_id=tid, data=data)
        if sk.evaluate(key, msg, env):
            out.append((seq, m))
    return out


_FLAG_KEYS = (sk.And, sk.Or, sk.Not, sk.All, sk.HasFlag, sk.SeqKey, sk.UidKey)


async def _flag_search(s: Session, key: sk.SearchKey) -> list[tuple[int, int, int]] | None:
    """(seq, uid, modseq) of the matches when ``key`` asks only about flags, sequence
    numbers and UIDs (UNSEEN, FLAGGED, NOT DELETED ...): evaluated on the index rows of
    one range scan (``Store.flag_rows``), no MessageRef per message. None when the
    key needs more or the store has no ``flag_rows``."""
    view = s.view
    assert view is not None
    flag_rows = getattr(s.ctx.store, "flag_rows", None)
    if flag_rows is None or _has(key, lambda k: not isinstance(k, _FLAG_KEYS)):
        return None
    if not view.uids:
        return []
    env = sk.SearchEnv(max_seq=view.exists, max_uid=view.uids[-1], now=s.ctx.clock(),
                       saved_uids=frozenset(s.saved) if s.saved is not None else None)
    recent = view.recent if not s.rev2 else set()
    seq_of = view.seq_of
    evaluate = sk.evaluate
    # Without sequence or UID keys the answer depends on the flags alone: evaluated
    # once per distinct flag set (a mailbox has a handful), not once per message.
    by_flags: dict[tuple[str, bool], bool] | None = None
    if not _has(key, lambda k: isinstance(k, sk.SeqKey | sk.UidKey)):
        by_flags = {}
    out: list[tuple[int, int, int]] = []
    for uid, modseq, text in await flag_rows(view.id, view.uids[0], view.uids[-1]):
        seq = seq_of(uid)
        if seq is None:
            continue  # appended since the last announcement: not in this view yet
        is_recent = uid in recent
        if by_flags is not None:
            hit = by_flags.get((text, is_recent))
            if hit is not None:
                if hit:
                    out.append((seq, uid, modseq))
                continue
        flags = frozenset(text.split())
        if is_recent:
            flags |= {"\\Recent"}
        msg = MessageSearchContext(uid=uid, seq=seq, flags=flags, size=0, internaldate=0.0,
                                   modseq=modseq)
        matched = evaluate(key, msg, env)
        if by_flags is not None:
            by_flags[(text, is_recent)] = matched
        if matched:
            out.append((seq, uid, modseq))
    return out


async def cmd_search(s: Session, cmd: c.Search) -> Reply:
    view = s.view
    assert view is not None
    modseq_key = has_modseq(cmd.key)
    if modseq_key:
        s.condstore = True
    found = await _flag_search(s, cmd.key)
    if found is None:
        found = [(seq, m.uid, m.modseq) for seq, m in await run_search(s, cmd.key)]
    numbers = [uid if cmd.uid else seq for seq, uid, _ in found]
    uids = [uid for _, uid, _ in found]
    highest = max((ms for _, _, ms in found), default=0) if modseq_key else None
    done = ("UID " if cmd.uid else "") + "SEARCH completed"
    if cmd.returns is None and not s.rev2:
        s.send(r.search(numbers, modseq=highest))
        return ok(done)
    return answer_returns(s, cmd.tag, cmd.returns or (), uid=cmd.uid, numbers=numbers,
                          uids=uids, all_set=numbers, highest=highest, done=done)


def answer_returns(s: Session, tag: str, returns: Iterable[str], *, uid: bool,
                   numbers: list[int], uids: list[int], all_set: list[int] | str,
                   highest: int | None, done: str) -> Reply:
    """The answer to ``RETURN (...)`` of SEARCH (RFC 4731) and of SORT (ESORT, RFC 5267
    §3.2): an ESEARCH response, after SAVE (RFC 5182) has kept the result for "$".

    ``numbers`` are the matches as the client numbers them, in result order (MIN and
    MAX are its first and last), ``uids`` the same messages' UIDs, ``all_set`` what
    ALL gives (the numbers, or a sequence-set already written), ``highest`` the
    MODSEQ to report when the search had a MODSEQ key. ``RETURN ()`` means ALL."""
    opts = set(returns) or {"ALL"}
    if "SAVE" in opts:
        # RFC 5182 §2.4: with MIN and/or MAX, only those are saved.
        if opts & {"MIN", "MAX"} and not opts & {"ALL", "COUNT"}:
            keep = []
            if uids and "MIN" in opts:
                keep.append(uids[0])
            if uids and "MAX" in opts:
                keep.append(uids[-1])
            s.saved = sorted(set(keep))
        else:
            s.saved = sorted(uids)
        opts.discard("SAVE")
        if not opts:
            return ok(done + ", result saved")
    results: dict[str, int | list[int] | str] = {}
    if "MIN" in opts and numbers:
        results["MIN"] = numbers[0]
    if "MAX" in opts and numbers:
        results["MAX"] = numbers[-1]
    if "ALL" in opts:
        results["ALL"] = all_set
    if "COUNT" in opts:
        results["COUNT"] = len(numbers)
    if highest and numbers:
        results["MODSEQ"] = highest
    s.send(r.esearch(tag, uid=uid, results=results))
    return ok(done)
