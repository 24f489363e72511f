"""Files, on the ground floor: operating-system errors in words, and writes that are atomic.

Every command that reads or writes a path the user gave (images, an output folder, an ONNX file)
turns an ``OSError`` into an ``InputError`` through ``os_error`` instead of a traceback. Every file
effml writes (weights, checkpoints, run.json, study reports, latency tables, exported runs) is
written to a temporary file or folder beside its target, fsynced and renamed: a crash at any moment
leaves the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

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


def _read_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it; done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file (0o666 less the umask read at import), for temp files
    that ``tempfile.mkstemp`` creates 0600 before they are renamed into place."""
    return 0o666 & ~_UMASK


def fsync_dir(folder: Path) -> None:
    """Make the rename durable; not every platform lets a directory be opened."""
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


def fsync_file(path: Path) -> None:
    """Flush a written file's data to the disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


class _RecordingFile:
    """A binary file that keeps the ``OSError`` of a failed write, for writers (``torch.save``)
    that raise their own error instead."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name: str) -> object:
        return getattr(self._f, name)


def atomic_write_bytes(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    A crash at any moment leaves either the old file or the new one, never a truncated one. The
    file gets the mode the umask gives a new file (``mkstemp`` would leave it 0600).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise os_error(err, "write", path) from err
    try:
        with os.fdopen(fd, "wb") as f:
            recording = _RecordingFile(f)
            try:
                write(recording)
            except Exception as err:
                # torch.save reports a write that failed (a full disk) as a RuntimeError of its
                # zip writer: the OSError behind it is the one to report
                if recording.error is not None and not isinstance(err, OSError):
                    raise recording.error from err
                raise
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), new_file_mode())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):  # a full disk, a read-only folder: say so, naming the file
            raise os_error(err, "write", path, f"the previous {path.name} (if any) is intact") from err
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically (see ``atomic_write_bytes``)."""
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file path beside ``path`` for a writer that takes a path (safetensors); on a
    clean exit it is fsynced, given a new file's mode and renamed over ``path``, else removed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise os_error(err, "write", path) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fsync_file(tmp)
        os.chmod(tmp, new_file_mode())  # mkstemp made it 0600; a plain open() would honour the umask
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise os_error(err, "write", path, f"the previous {path.name} (if any) is intact") from err
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; on a clean exit it is renamed to ``path`` (which
    must not exist), so the folder appears whole or not at all."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as err:
        raise os_error(err, "create", path, "nothing was written") from None
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise os_error(err, "write", path, "nothing was written") from err
        raise
    fsync_dir(path.parent)
