"""mailyard.ids: random ids from a buffer of CSPRNG bytes."""

from __future__ import annotations

import os
import re
import threading

from mailyard import ids


def test_ids_have_the_asked_length_in_hex_and_do_not_repeat() -> None:
    seen = {ids.token_hex(8) for _ in range(5000)}  # crosses several refills of the buffer
    assert len(seen) == 5000
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in seen)
    assert re.fullmatch(r"[0-9a-f]{12}", ids.token_hex(6))
    assert len(ids.token_hex(5000)) == 10000  # longer than one refill


def test_threads_never_get_the_same_id() -> None:
    got: list[list[str]] = [[] for _ in range(4)]

    def draw(out: list[str]) -> None:
        out.extend(ids.token_hex(8) for _ in range(3000))

    threads = [threading.Thread(target=draw, args=(g,)) for g in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for g in got for i in g]
    assert len(set(every)) == len(every) == 12000


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    ids.token_hex(8)  # the parent holds a buffer with bytes left
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        os.write(w, " ".join(ids.token_hex(8) for _ in range(100)).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        child = set(f.read().split())
    os.waitpid(pid, 0)
    parent = {ids.token_hex(8) for _ in range(100)}
    assert len(child) == 100
    assert not child & parent
