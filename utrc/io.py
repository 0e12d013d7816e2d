"""Writing result files atomically, and the stamp that says what produced them.

Every file utrc, the search, the workflow scripts and the report write goes through
`atomic_write_text` / `atomic_write_json` / `atomic_write_bytes`: the data goes to a temporary file
in the destination's folder, is flushed to disk, and replaces the destination in one `os.replace`.
A reader (or a process killed half-way) therefore sees the old file or the new one, never half of
one. On Linux the temporary file has no name while it is written (``O_TMPFILE``) and is named
(uniquely: two writers of one path never share it) only to be moved into place, so a writer killed
even by SIGKILL leaves no temporary file behind; elsewhere one is left only by such a kill.

This module imports nothing heavy (no torch), so the report renderer can use it.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "now", "stamp", "versions"]


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically (parent folders are created). Returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (parent folders are created). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # a file without a name until it is complete: a writer killed meanwhile leaves nothing behind
        fd, tmp = os.open(path.parent, os.O_TMPFILE | os.O_WRONLY, 0o644), None
    except (AttributeError, OSError):  # not Linux, or a file system without O_TMPFILE (NFS)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o644 & ~_umask())  # mkstemp's 0600 would hide results from other users
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            if tmp is None:  # name it (uniquely) only now, then move it over the destination
                tmp = path.parent / f".{path.name}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
                folder = os.open(path.parent, os.O_RDONLY)
                try:  # linkat(..., AT_SYMLINK_FOLLOW): Python uses it when a dir_fd is given
                    os.link(f"/proc/self/fd/{f.fileno()}", tmp.name, dst_dir_fd=folder, follow_symlinks=True)
                finally:
                    os.close(folder)
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: never leave the temporary file behind
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | os.PathLike, obj, *, allow_nan: bool = False, indent: int | None = 2) -> Path:
    """`obj` as JSON (sorted as given, a trailing newline), written atomically. NaN and infinity
    are refused unless `allow_nan`: strict JSON readers (browsers, jq) reject them."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=allow_nan) + "\n")


def now() -> str:
    """The current UTC time, to the second, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


_VERSIONED = ("utrc", "torch", "transformers", "mamba_ssm", "causal_conv1d", "lm_eval", "optuna", "snakemake")


def versions() -> dict[str, str]:
    """Python's version and that of every package in `_VERSIONED` this process has imported.
    Imports nothing itself, so asking never loads a package the caller did not use."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None)
        if version is not None:
            out[name] = str(version)
    return out


def stamp() -> dict:
    """{"date": ..., "versions": {...}}: what every result file records about its making."""
    return {"date": now(), "versions": versions()}
