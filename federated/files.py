"""Writing a file so that readers see the old one or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

PRIVATE_FILE_MODE = 0o600


def write_atomic(
    path: Path,
    data: bytes | str,
    *,
    mode: int = PRIVATE_FILE_MODE,
    durable: bool = True,
    dir_mode: int = 0o700,
) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and ``os.replace``.

    The temp file has ``mode`` before the first byte lands, so a secret is never readable by
    others even for a moment. ``durable`` fsyncs the file and its folder before returning
    (skip it only for data that is cheaper to redo than to sync, such as a checkpoint whose
    corruption is detected on load). On any failure the temp file is removed and ``path``
    is unchanged.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            if hasattr(os, "fchmod"):  # not on Windows, where mode bits mean little
                os.fchmod(tmp.fileno(), mode)
            tmp.write(raw)
            tmp.flush()
            if durable:
                os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` survive a power cut (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
