"""Files posetune writes and reads: atomic writes, CSV and JSON, content hashes.

Every file of a run folder goes through :func:`atomic_write_bytes`, so a kill at any moment leaves
either the old file or the new one, never half of one.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's 0600 would hide the files from others


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temporary file, fsync and rename: a kill at any moment leaves the old or the new file
    (and at worst a ``.NAME.*.tmp`` orphan, which :func:`remove_orphans` clears later)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_orphans(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete the temporary files that a killed :func:`atomic_write_bytes` of one of ``names`` left in
    ``folder`` (only that pattern: posetune's own); returns what was removed."""
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{glob.escape(name)}.*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_csv(path: str | Path, rows: Sequence[dict] | Sequence[Sequence], header: Sequence[str] | None = None) -> None:
    buf = io.StringIO()
    if rows and isinstance(rows[0], dict):
        header = header or list(rows[0].keys())
        writer = csv.DictWriter(buf, fieldnames=list(header), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    else:
        writer = csv.writer(buf)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks (any :func:`hashlib.new` algorithm)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    return file_digest(path, "sha256")
