"""Fetch the OpenSPF RFC 7208 test suite from the pyspf sdist on PyPI.

    python tests/vectors/spf/fetch.py          # writes tests/vectors/spf/rfc7208-tests.yml

The YAML file is git-ignored and must never be committed (it is the openspf.org suite,
distributed inside pyspf). The test calls :func:`ensure_suite`, so a plain `pytest` run fetches
it on first use; if the download fails the test fails (nothing is skipped).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITE = HERE / "rfc7208-tests.yml"
MEMBER_SUFFIX = "/test/rfc7208-tests.yml"


def fetch(dest: Path = SUITE) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "pyspf",
                "-d",
                tmp,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"pip download pyspf failed:\n{proc.stdout}\n{proc.stderr}")
        archives = [p for p in Path(tmp).iterdir() if p.name.endswith((".tar.gz", ".tgz"))]
        if not archives:
            raise RuntimeError(f"no sdist downloaded into {tmp}: {list(Path(tmp).iterdir())}")
        with tarfile.open(archives[0]) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith(MEMBER_SUFFIX)), None)
            if member is None:
                raise RuntimeError(f"{archives[0].name} has no {MEMBER_SUFFIX}")
            f = tar.extractfile(member)
            assert f is not None
            data = f.read()
        # Atomic: parallel test workers may fetch at the same time.
        fd, tmpname = tempfile.mkstemp(dir=dest.parent, prefix=".rfc7208-")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmpname, dest)
    return dest


def ensure_suite(dest: Path = SUITE) -> Path:
    if dest.exists() and dest.stat().st_size > 0:
        return dest
    return fetch(dest)


if __name__ == "__main__":
    print(fetch())
