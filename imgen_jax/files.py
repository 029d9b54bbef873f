"""Atomic writes: a file or a directory appears complete under its name, or not at all.

    with atomic_file("out/table.csv", suffix=".csv") as tmp:   # write to tmp (same folder)
        write(tmp)
    with atomic_dir("models/run") as tmp:                      # fill the temp folder
        fill(tmp)
    with atomic_update_dir("models/run", ["a.bin", "config.json"]) as tmp:
        rewrite(tmp)        # tmp already holds hard links to every other entry of models/run

On success the temporary is made durable and then renamed onto the target (replacing it) with
the permissions a plain create would give (0666 / 0777 less the umask); on any exception,
including KeyboardInterrupt, it is removed and the target is left as it was.

Durability (Linux): the temporary file, or every file and folder inside the temporary folder, is
fsynced before the rename, and the parent folder is fsynced after it, so after a power loss the
name holds the old or the new content, never an empty or partly written file.

Replacing an existing folder: on Linux the new folder and the old one swap names in one
`renameat2(RENAME_EXCHANGE)` call, so at every instant the name holds either the whole old or the
whole new folder, even if the process is killed (SIGKILL) at any point; the old folder, now under
the temporary name, is deleted afterwards. Where that call is unavailable (other systems, some
file systems) the old folder is first renamed to `.old-<name>-*/dir` beside the target and then the
new one renamed into place: a kill between the two renames leaves the name missing and the old
folder in that `.old-` sibling. A kill can leave a `.tmp-<name>-*` sibling behind (the unfinished
new folder, or the old folder after the swap), never a mixed folder under the name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import tempfile
from typing import Iterable, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    """fsync a file, or a folder's entries (`directory=True`; a no-op where folders cannot be
    opened, i.e. Windows, or where the file system refuses to fsync a folder)."""
    if directory and os.name == "nt":  # pragma: no cover - folders cannot be opened there
        return
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    fd = os.open(os.fspath(path), flags)
    try:
        os.fsync(fd)
    except OSError as e:
        if not directory or e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    """fsync every regular file and every folder under `root`, children before their folder."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            p = os.path.join(folder, name)
            if not os.path.islink(p) and os.path.isfile(p):
                fsync_path(p)
        fsync_path(folder, directory=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2 = None


def _rename_exchange(a: str, b: str) -> bool:
    """Swap the names `a` and `b` in one atomic step (Linux renameat2 RENAME_EXCHANGE).

    False, with nothing changed, where the system or the file system does not support it."""
    global _renameat2
    if not sys.platform.startswith("linux"):
        return False
    if _renameat2 is None:
        import ctypes

        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
        except (OSError, AttributeError):
            _renameat2 = False
            return False
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
        _renameat2 = fn
    if _renameat2 is False:
        return False
    import ctypes

    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"renameat2(RENAME_EXCHANGE) failed: {os.strerror(err)}", a, None, b)


def _remove(path: str) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        with contextlib.suppress(OSError):
            os.remove(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """A temporary file path beside `path`, renamed onto it when the block succeeds (the file is
    fsynced before the rename, the folder after it)."""
    path = os.path.abspath(os.fspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=os.path.dirname(path))
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(os.path.dirname(path), directory=True)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[str]:
    """A temporary directory beside `path`, renamed onto it when the block succeeds.

    Everything in it is fsynced first; an existing `path` is swapped out in one step (Linux) or
    moved aside (elsewhere) and deleted only after the new one is in place (module docstring)."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(path)}-", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        _fsync_tree(tmp)
        if not os.path.lexists(path):
            os.replace(tmp, path)
            fsync_path(parent, directory=True)
            return
        if _rename_exchange(tmp, path):  # path: the new folder; tmp: the old one
            fsync_path(parent, directory=True)
            _remove(tmp)
            return
        old = tempfile.mkdtemp(prefix=f".old-{os.path.basename(path)}-", dir=parent)
        os.replace(path, os.path.join(old, "dir"))
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(os.path.join(old, "dir"), path)
            os.rmdir(old)
            raise
        fsync_path(parent, directory=True)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        _remove(tmp)
        raise


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:  # no hard links on this file system (or another device): copy
        shutil.copy2(src, dst, follow_symlinks=False)


@contextlib.contextmanager
def atomic_update_dir(path: str | os.PathLike, replace: Iterable[str]) -> Iterator[str]:
    """Rewrite some entries of the existing folder `path` so that the folder changes as one unit.

    Yields a temporary sibling (`atomic_dir`) that already holds every entry of `path` except the
    names in `replace` and leftovers of interrupted writes (names starting with `.tmp-`): files as
    hard links (copies where the file system has none), symlinks as symlinks, sub-folders
    recursively. The block writes the replaced entries into it; on success the whole folder is
    swapped in with atomic_dir's guarantee (on Linux `path` names the complete old or the complete
    new folder at every instant). Files of `path` must be replaced by rename, never edited in
    place, since the old and new folders share them until the swap.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(errno.ENOENT, "not a directory", path)
    skip = set(replace)
    with atomic_dir(path) as tmp:
        for name in os.listdir(path):
            if name in skip or name.startswith(".tmp-"):
                continue
            src, dst = os.path.join(path, name), os.path.join(tmp, name)
            if os.path.islink(src):
                os.symlink(os.readlink(src), dst)
            elif os.path.isdir(src):
                shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
            else:
                _link_or_copy(src, dst)
        yield tmp


__all__ = ["atomic_file", "atomic_dir", "atomic_update_dir", "fsync_path"]
