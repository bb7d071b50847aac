"""Golden transcripts (STYLE.md habit 4): RFC 9051 examples run against the
parser (C:/P: lines) and the serialiser (S: lines must re-serialise exactly)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailyard.protocol.imap import commands as c
from mailyard.protocol.imap.parser import CommandParser
from mailyard.protocol.imap.response import Atom, serialize

HERE = Path(__file__).parent / "transcripts"
FILES = sorted(HERE.glob("*.txt"))


def _tokens(line: str) -> list[Any]:
    """Tokenise a server line into response values: atoms (``[...]`` kept
    whole), quoted strings, numbers, NIL and parenthesised lists."""
    root: list[Any] = []
    stack = [root]
    i = 0
    n = len(line)
    while i < n:
        ch = line[i]
        if ch == " ":
            i += 1
        elif ch == "(":
            new: list[Any] = []
            stack[-1].append(new)
            stack.append(new)
            i += 1
        elif ch == ")":
            stack.pop()
            i += 1
        elif ch == '"':
            j = i + 1
            buf = []
            while line[j] != '"':
                if line[j] == "\\":
                    j += 1
                buf.append(line[j])
                j += 1
            stack[-1].append("".join(buf))
            i = j + 1
        else:
            j = i
            depth = 0
            while j < n and (depth or line[j] not in " ()"):
                if line[j] == "[":
                    depth += 1
                elif line[j] == "]":
                    depth -= 1
                j += 1
            tok = line[i:j]
            if tok.isdigit():
                stack[-1].append(int(tok))
            elif tok == "NIL":
                stack[-1].append(None)
            else:
                stack[-1].append(Atom(tok))
            i = j
    assert len(stack) == 1
    return root


def _run(path: Path) -> int:
    parser = CommandParser()
    checked = 0

    def next_event() -> Any:
        ev = parser.next()
        assert not isinstance(ev, c.NeedData), "expected an event"
        return ev

    for lineno, raw in enumerate(path.read_text("utf-8").splitlines(), 1):
        where = f"{path.name}:{lineno}"
        if not raw or raw.startswith("#"):
            continue
        kind, _, rest = raw.partition(": ")
        if kind == "C":
            parser.feed(rest.encode("utf-8") + b"\r\n")
        elif kind == "+":
            ev = next_event()
            assert ev == c.NeedContinuation(int(rest), ev.tag), where
        elif kind == "P":
            ev = next_event()
            name, *attrs = rest.split(" ", 1)
            assert type(ev).__name__ == name, (where, ev)
            if attrs:
                for pair in _split_attrs(attrs[0]):
                    key, _, want = pair.partition("=")
                    assert str(getattr(ev, key)) == want, (where, key, getattr(ev, key))
            checked += 1
        elif kind == "S":
            toks = _tokens(rest)
            out = b" ".join(serialize(t) for t in toks)
            assert out == rest.encode("utf-8"), where
            checked += 1
        else:
            raise AssertionError(f"{where}: unknown line kind {kind!r}")
    assert isinstance(parser.next(), c.NeedData)
    return checked


def _split_attrs(text: str) -> list[str]:
    """Split ``a=1 b=(x, y)`` on spaces outside brackets and quotes."""
    out: list[str] = []
    depth = 0
    quote = ""
    cur = ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == " " and depth == 0 and "=" in cur:
            out.append(cur)
            cur = ""
            continue
        cur += ch
    if cur:
        out.append(cur)
    return out


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_transcript(path: Path) -> None:
    assert _run(path) > 10
