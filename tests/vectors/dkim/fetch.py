"""dkimpy's own test vectors (``dkim/tests/data`` in the dkimpy sdist on PyPI).

The installed dkimpy wheel does not ship them, so :func:`dkimpy_data` downloads the sdist of
the installed version with ``pip download --no-deps --no-binary :all:`` and extracts the data
directory into the system temp dir (outside the tree; nothing is committed). A failed download
fails the tests that need it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path


def dkimpy_data() -> Path:
    ver = version("dkimpy")
    dest = Path(tempfile.gettempdir()) / f"mailyard-dkimpy-{ver}-data"
    if (dest / "test.txt").exists():
        return dest
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
                f"dkimpy=={ver}",
                "-d",
                tmp,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"pip download dkimpy failed:\n{proc.stdout}\n{proc.stderr}")
        archive = next(p for p in Path(tmp).iterdir() if p.name.endswith(".tar.gz"))
        staging = Path(tmp) / "data"
        staging.mkdir()
        with tarfile.open(archive) as tar:
            for m in tar.getmembers():
                if "/dkim/tests/data/" in m.name and m.isfile():
                    f = tar.extractfile(m)
                    assert f is not None
                    (staging / Path(m.name).name).write_bytes(f.read())
        # Atomic publish: parallel workers may race; the loser's copy is discarded.
        tmp_dest = Path(tempfile.mkdtemp(dir=dest.parent, prefix=dest.name + "."))
        shutil.rmtree(tmp_dest)
        shutil.copytree(staging, tmp_dest)
        try:
            os.rename(tmp_dest, dest)
        except OSError:
            shutil.rmtree(tmp_dest, ignore_errors=True)
    return dest
