"""A short fuzz run in the normal test suite (the long run is scripts/fuzz.sh).

The targets live in fuzz/targets.py and are shared with the atheris harnesses:
any input gives events, replies or a protocol error, never another exception,
never an unbounded buffer. Hypothesis drives them from random bytes and from
mutations of the committed seed corpora (fuzz/corpus/<target>/), with a budget
that keeps the whole file well under 60 s on 2 cores.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]


def _load_targets():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("mailyard_fuzz_targets",
                                                  ROOT / "fuzz" / "targets.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


targets = _load_targets()
NAMES = sorted(targets.TARGETS)


def _seeds(name: str) -> list[bytes]:
    d = ROOT / "fuzz" / "corpus" / name
    return [p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()] if d.is_dir() else []


@st.composite
def _mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.integers(0, 3))
        pos = draw(st.integers(0, len(data)))
        if op == 0:
            data[pos:pos] = draw(st.binary(max_size=16))
        elif op == 1:
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == 2 and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        else:
            data[pos:pos] = draw(st.sampled_from([b"\r\n", b"\n.\n", b"\r", b"\x00", b"{99}\r\n",
                                                  b"=?utf-8?b?", b"--b\r\n", b"*\r\n"]))
    return bytes(data)


@pytest.mark.parametrize("name", NAMES)
def test_seed_corpus_is_committed_and_clean(name: str) -> None:
    seeds = _seeds(name)
    assert seeds, f"fuzz/corpus/{name}/ holds no seeds"
    for seed in seeds:
        targets.TARGETS[name](seed)


# Crashes the fuzzer once found in mailyard.message.parse, kept as regression cases.
KNOWN_MIME_CRASHES = [
    b"Content-Type: \x80multipart/mixed; boundary=b\r\n\r\n--b--\r\n",
    b"Subject: =?utf\x00-8?q?x?=\r\n\r\n",
]


@pytest.mark.parametrize("data", KNOWN_MIME_CRASHES, ids=["ct-8bit", "ew-nul"])
def test_known_mime_crash_fixed(data: bytes) -> None:
    targets.mime_structure(data)


@pytest.mark.parametrize("name", NAMES)
def test_fuzz_short(name: str) -> None:
    seeds = _seeds(name)
    target = targets.TARGETS[name]
    budget = 150 if name == "dkim" else 1000

    @settings(max_examples=budget, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(st.binary(max_size=600), _mutated(seeds)))
    def run(data: bytes) -> None:
        target(data)

    run()
