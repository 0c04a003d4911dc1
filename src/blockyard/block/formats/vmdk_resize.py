"""Resizing VMDK images (image-formats.md §2.1-§2.3).

Growing:
* FLAT: the file is extended (and preallocated where the filesystem can);
* sparse: the header capacity grows; the GD gains entries in place when its
  last sector has room, otherwise a new GD and RGD are written past the end
  of the file; the new grain tables are placed (like at creation, so qemu
  can write there too).  Order: new tables and GD, ``fdatasync``, then the
  header (capacity and GD offsets in one sector), ``fdatasync``, then the
  descriptor.  A crash before the header write leaves the old image;
* twoGbMaxExtent*: the last extent grows to the split size, then new extent
  files of the same kind are added.

Shrinking is refused while data lies past the new end unless ``force``.  The
descriptor is written first, then whole extents past the end are deleted,
the last one truncated (FLAT) or its grains past the end unmapped (sparse;
``compact`` reclaims the space).  streamOptimized images cannot be resized.
The descriptor and the sparse header are separate writes: a crash between
them leaves the header capacity above the descriptor's extent size, which
opens at the old size (the descriptor wins).
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from blockyard.block.formats import vmdk_descriptor as vd
from blockyard.block.formats.vmdk_create import SPLIT_DEFAULT, sparse_header, write_sparse_file
from blockyard.block.formats.vmdk_extent import SECTOR, FlatExtent, VmdkExtent, ZeroExtent
from blockyard.block.formats.vmdk_maint import write_gd
from blockyard.block.formats.vmdk_open import open_sparse_file
from blockyard.block.formats.vmdk_sparse import SparseExtent
from blockyard.block.layer import HOLE, ZERO
from blockyard.block.raw import RawFile
from blockyard.errors import MediaError

if TYPE_CHECKING:
    from blockyard.block.formats.vmdk import VmdkImage


async def resize_image(img: VmdkImage, new_size: int, force: bool) -> None:
    d = img.desc
    if any(isinstance(e, SparseExtent) and e.h.compressed for e in img.extents_) or \
            d.create_type == "streamOptimized":
        raise MediaError(f"{img.path}: streamOptimized images cannot be resized; convert first")
    if len(d.extents) != len(img.extents_):
        raise MediaError(f"{img.path}: descriptor and extents disagree; cannot resize")
    new = -(-new_size // SECTOR) * SECTOR
    if new == img.size:
        return
    if not img._changed:
        await img._touch()
    await img.flush()
    if new < img.size:
        await _shrink(img, new, force)
    else:
        await _grow(img, new)
    _relayout(img)
    d.set_geometry(img.size // SECTOR)
    await img.write_descriptor()


def _relayout(img: VmdkImage) -> None:
    pos = 0
    for e in img.extents_:
        e.start = pos
        pos += e.size
    img.size = pos
    img.starts = [e.start for e in img.extents_]


# ---- grow ---------------------------------------------------------------------------------
async def _grow(img: VmdkImage, new: int) -> None:
    d = img.desc
    extra = new - img.size
    limit = None
    if d.create_type.startswith("twoGbMaxExtent"):
        limit = max(x.sectors for x in d.extents) * SECTOR if len(d.extents) > 1 else \
            max(SPLIT_DEFAULT, d.extents[0].sectors * SECTOR)
    last, line = img.extents_[-1], d.extents[-1]
    grow = extra if limit is None else min(extra, limit - last.size)
    if grow > 0:
        await _grow_extent(last, last.size + grow)
        line.sectors = last.size // SECTOR
        extra -= grow
    while extra > 0:
        assert limit is not None
        n = min(extra, limit)
        await _add_extent(img, n)
        extra -= n


async def _grow_extent(e: VmdkExtent, size: int) -> None:
    if isinstance(e, SparseExtent):
        await grow_sparse(e, size // SECTOR)
    elif isinstance(e, FlatExtent):
        assert e.raw is not None
        end = e.base + size
        if e.file_size() < end:
            os.ftruncate(e.raw.fd, end)
            try:
                os.posix_fallocate(e.raw.fd, e.base + e.size, size - e.size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise MediaError(f"{e.path}: cannot allocate: {exc.strerror}") from None
            await e.raw._flush()
    elif not isinstance(e, ZeroExtent):
        raise MediaError(f"{e.path}: cannot grow a {e.kind} extent")
    e.size = size


async def grow_sparse(e: SparseExtent, capacity: int) -> None:
    assert e.raw is not None
    h, t = e.h, e.t
    async with e.lock:
        await e._publish()
        old_n = h.gd_entries
        h.capacity = capacity
        new_n = h.gd_entries
        del t.gd[old_n:]  # entries left from a shrink in this session
        if t.rgd is not None:
            del t.rgd[old_n:]
        for i in [i for i in t.gts if i >= old_n]:
            del t.gts[i]
        if new_n > old_n:
            room = -(-old_n * 4 // SECTOR) * (SECTOR // 4)
            if new_n > room:  # the GD (and RGD) move past the end of the file
                nbytes = -(-new_n * 4 // SECTOR) * SECTOR
                h.gd_offset = e._reserve(nbytes) // SECTOR
                if t.rgd is not None:
                    h.rgd_offset = e._reserve(nbytes) // SECTOR
            t.gd.extend([0] * (new_n - old_n))
            if t.rgd is not None:
                t.rgd.extend([0] * (new_n - old_n))
            for i in range(old_n, new_n):
                e._ensure_gt(i)
            if new_n > room:
                write_gd(e)
            await e._publish()
        await e._write_header()
        await e.raw._flush()


async def _add_extent(img: VmdkImage, nbytes: int) -> None:
    d, prev = img.desc, img.extents_[-1]
    kind = d.extents[-1].kind
    stem = img.path[:-5] if img.path.lower().endswith(".vmdk") else img.path
    letter = "s" if kind == "SPARSE" else "f"
    name = f"{os.path.basename(stem)}-{letter}{len(d.extents) + 1:03d}.vmdk"
    path = os.path.join(os.path.dirname(os.path.abspath(img.path)), name)
    if os.path.lexists(path):
        raise MediaError(f"{path}: already exists")
    sectors = nbytes // SECTOR
    ext: VmdkExtent
    if kind == "SPARSE":
        assert isinstance(prev, SparseExtent)
        h = sparse_header(sectors, prev.h.grain_size, embedded=False, zeroed=prev.h.zero_grain)
        write_sparse_file(path, h)
        raw = RawFile(path)
        ext = open_sparse_file(raw, path)
        if img.desc.is_child:
            ext.set_backing(img._read_parent)
    else:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        os.ftruncate(fd, nbytes)
        os.close(fd)
        ext = FlatExtent(RawFile(path), nbytes, 0)
    await ext.mark_dirty()  # resize started with _touch(); close clears it
    img.extents_.append(ext)
    d.extents.append(vd.ExtentLine("RW", sectors, kind, name, 0))


# ---- shrink -------------------------------------------------------------------------------
async def _shrink(img: VmdkImage, new: int, force: bool) -> None:
    pos = new
    while not force and pos < img.size:  # extents() may answer for less than asked
        for x in await img.extents(pos, img.size - pos):
            if not x.flags & (HOLE | ZERO):
                raise MediaError(f"{img.path}: data lies past the new size {new}; shrinking "
                                 "would lose it (pass --force)")
            pos += x.length
    keep = [e for e in img.extents_ if e.start < new]
    drop = img.extents_[len(keep):]
    d = img.desc
    d.extents = d.extents[:len(keep)]
    last = keep[-1]
    d.extents[-1].sectors = (new - last.start) // SECTOR
    await img.write_descriptor()  # first: nothing may name a deleted file
    for e in drop:
        await e.close()
        if e.path and e.path != img.path:
            os.unlink(e.path)
    img.extents_ = keep
    await _shrink_extent(last, new - last.start)


async def _shrink_extent(e: VmdkExtent, size: int) -> None:
    if isinstance(e, SparseExtent):
        await shrink_sparse(e, size // SECTOR)
    elif isinstance(e, FlatExtent) and e.file_size() == e.base + e.size:
        assert e.raw is not None
        os.ftruncate(e.raw.fd, e.base + size)
    e.size = size


async def shrink_sparse(e: SparseExtent, capacity: int) -> None:
    async with e.lock:
        first = -(-capacity // e.h.grain_size)  # grains wholly or partly kept stay
        for i, gt in e.t.gts.items():
            for j, v in enumerate(gt):
                if v and i * e.n + j >= first:
                    e._set_gte(i * e.n + j, 0)
        await e._publish()
        e.h.capacity = capacity
        n = e.h.gd_entries  # tables past the new end are no longer part of the extent
        del e.t.gd[n:]
        if e.t.rgd is not None:
            del e.t.rgd[n:]
        for i in [i for i in e.t.gts if i >= n]:
            del e.t.gts[i]
        await e._write_header()
        assert e.raw is not None
        await e.raw._flush()
