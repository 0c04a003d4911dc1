"""Image files on disk: which files make up an image, moving them, copying sparsely.

An image is one file for most formats; a VMDK may be a descriptor plus
extent files.  ``image_files`` lists them (extents must sit beside the
descriptor, which references them by relative name, so that a move of the
set keeps the references valid).  ``move_files`` renames each file, falling
back to a sparse copy (``SEEK_DATA`` / ``SEEK_HOLE``) then unlink across
filesystems; a failure half-way puts back what was already moved, so the
image is always whole in one place.  Everything here blocks: callers run it
on the I/O pool.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from blockyard.block.formats.base import ImageLayer
from blockyard.errors import ConfigError, MediaError

COPY_CHUNK = 1 << 20


def image_files(layer: ImageLayer) -> list[str]:
    """The main file first, then any extent files (VMDK) it references."""
    main = os.path.abspath(layer.path)
    out = [main]
    for ext in getattr(layer, "extents_", []) or []:
        path = getattr(ext, "path", None)
        if path and os.path.abspath(path) not in out:
            out.append(os.path.abspath(path))
    return out


def move_plan(files: list[str], new_main: str) -> list[tuple[str, str]]:
    """Pairs (old, new): the main file to ``new_main``, extents beside it by name."""
    main_dir = os.path.dirname(files[0])
    new_dir = os.path.dirname(new_main)
    plan = [(files[0], new_main)]
    for path in files[1:]:
        if os.path.dirname(path) != main_dir:
            raise MediaError(f"{files[0]}: extent {path} is outside the image's directory; "
                             "move it by hand")
        plan.append((path, os.path.join(new_dir, os.path.basename(path))))
    for _old, new in plan:
        if os.path.lexists(new):
            raise MediaError(f"{new}: already exists")
    return plan


def move_files(plan: list[tuple[str, str]]) -> None:
    done: list[tuple[str, str]] = []
    try:
        for old, new in plan:
            _move_one(old, new)
            done.append((old, new))
    except OSError as exc:
        for old, new in reversed(done):
            _move_one(new, old)
        raise MediaError(f"cannot move {plan[len(done)][0]}: {exc.strerror}") from None


def _move_one(old: str, new: str) -> None:
    try:
        os.rename(old, new)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    sparse_copy(old, new)
    os.unlink(old)


def sparse_copy(src: str, dst: str) -> None:
    """Copy a file keeping its holes; the copy is fsynced before returning."""
    with open(src, "rb") as fi:
        size = os.fstat(fi.fileno()).st_size
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.ftruncate(fd, size)
            for start, end in _data_ranges(fi.fileno(), size):
                pos = start
                while pos < end:
                    chunk = os.pread(fi.fileno(), min(COPY_CHUNK, end - pos), pos)
                    if not chunk:
                        break
                    os.pwrite(fd, chunk, pos)
                    pos += len(chunk)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(dst)
            raise
        os.close(fd)


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    out, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            return [(0, size)]  # no SEEK_DATA here: copy everything
        end = os.lseek(fd, start, os.SEEK_HOLE)
        out.append((start, end))
        pos = end
    return out


def delete_files(paths: list[str]) -> list[str]:
    """Unlink each path; returns the problems (a missing file is not one)."""
    problems = []
    for p in paths:
        if p.startswith("iscsi://"):  # a remote LUN is never deleted with its medium
            continue
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
        except OSError as exc:
            problems.append(f"{p}: {exc.strerror}")
    return problems


def absolute(path: str) -> str:
    """An absolute, normalised path (symlinks in the directory part resolved).

    Relative paths are refused: the daemon's working directory is not the
    caller's, so a relative path over the control API would name the wrong file.
    """
    p = Path(path).expanduser()
    if not p.is_absolute():
        raise ConfigError(f"{path}: give an absolute path")
    return str(p.parent.resolve() / p.name)
