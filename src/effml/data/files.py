"""Operating-system errors as effml errors: what failed, on which path, why, and what to do.

Every command that reads or writes a path the user gave (images, an output folder, an ONNX file)
turns an ``OSError`` into an ``InputError`` through ``os_error`` instead of a traceback.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from effml.errors import InputError

# errno -> (cause in words, what to do); the strerror text is kept alongside for searching.
_CAUSES = {
    errno.ENOSPC: ("the disk is full", "free some space or write somewhere else"),
    errno.EDQUOT: ("the disk quota is used up", "free some space or write somewhere else"),
    errno.EROFS: ("the file system is read-only", "choose a folder on a writable disk"),
    errno.EACCES: ("permission denied", "choose a path you may write to, or change its permissions"),
    errno.EPERM: ("the operation is not permitted", "choose a path you may write to, or change its permissions"),
    errno.ENOENT: ("a folder on the path does not exist and cannot be created there",
                   "check the path"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the path"),
    errno.EEXIST: ("a part of the path is a file, not a folder", "check the path"),
    errno.EISDIR: ("it is a folder, not a file", "give a file name"),
    errno.ENAMETOOLONG: ("the name is too long", "use a shorter path"),
    errno.EIO: ("an input/output error (a failing disk or network file system)", "check the disk"),
    errno.EMFILE: ("too many open files", "raise the open-file limit (ulimit -n)"),
}


def os_error_reason(e: OSError, path: str | Path | None = None) -> tuple[str, str]:
    """(cause, what to do) of an ``OSError`` in words; for ENOTDIR/EEXIST the file in the way."""
    cause, todo = _CAUSES.get(e.errno or -1, (e.strerror or str(e), "check the path"))
    if e.errno in (errno.ENOTDIR, errno.EEXIST) and path is not None:
        blocker = file_in_the_way(Path(path))
        if blocker is not None:
            cause = f"{blocker} is a file, not a folder"
            todo = "choose another path, or move that file away"
    if e.strerror and e.strerror.lower() != cause.lower():
        cause = f"{cause} ({e.strerror})"
    return cause, todo


def os_error(e: OSError, action: str, path: str | Path, note: str = "") -> InputError:
    """``InputError``: 'cannot <action> <path>: <cause>; <what to do>[; <note>]' (``note``: e.g.
    'nothing was written')."""
    cause, todo = os_error_reason(e, path)
    return InputError(f"cannot {action} {path}: {cause}; {todo}" + (f"; {note}" if note else ""))


def file_in_the_way(path: Path) -> Path | None:
    """The nearest ancestor of ``path`` (or ``path``) that exists and is not a folder, if any."""
    for p in (path, *path.parents):
        try:
            if p.exists():
                return None if p.is_dir() else p
        except OSError:
            return None
    return None


def make_output_dir(path: Path, what: str) -> list[Path]:
    """Create folder ``path`` (and parents) and check that a file can be written in it; returns
    the folders it created (deepest last), for ``remove_empty_dirs`` if the command fails.

    Raises ``InputError`` naming ``what`` (e.g. '--out-dir') and the cause.
    """
    path = Path(path)
    blocker = file_in_the_way(path)
    if blocker is not None:
        where = "exists and is a file" if blocker == path else f"is under {blocker}, which is a file"
        raise InputError(f"{what} {path} {where}, not a folder; choose a folder path")
    created = [p for p in reversed((path, *path.parents)) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        remove_empty_dirs(created)
        raise os_error(e, f"create {what} folder", path) from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".effml-write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        remove_empty_dirs(created)
        raise os_error(e, f"write into {what} folder", path) from None
    return created


def remove_empty_dirs(created: list[Path]) -> None:
    """Remove folders a failed command created (deepest first), where they are still empty."""
    for p in reversed(created):
        try:
            p.rmdir()
        except OSError:
            pass


def remove_files(paths: list[Path]) -> None:
    """Delete files a failed command wrote, ignoring those already gone."""
    for p in paths:
        try:
            p.unlink()
        except OSError:
            pass
