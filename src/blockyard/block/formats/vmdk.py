"""VMDK images (image-formats.md §2): one descriptor, extents concatenated.

Module map:

* ``vmdk_descriptor`` -- the text descriptor (parse, render, CID, DDB UUIDs);
* ``vmdk_layout`` -- the sparse extent header, GD/GT loading and validation;
* ``vmdk_extent`` / ``vmdk_sparse`` -- extents and their request paths;
* ``vmdk_open`` -- from a path to validated, open extents;
* ``vmdk_create`` / ``vmdk_stream`` -- new images of every variant;
* ``vmdk_maint`` -- check, compact, resize.

This class splits requests across extents, keeps the descriptor right
(a new CID and modification UUID on the first change after open, like
qemu and VirtualBox), and offers the ``ImageLayer`` operations.

Differencing: a descriptor with a parentCID or parentFileNameHint is a
child.  Its unallocated grains read from ``self.parent`` (a Layer that a
later chain layer attaches); with no parent attached they raise EIO.
"""

from __future__ import annotations

import asyncio
import bisect
import errno
import functools
import os
from collections.abc import Callable
from typing import Any

from blockyard.block.formats import vmdk_descriptor as vd
from blockyard.block.formats.base import CheckReport, ImageInfo, ImageLayer, Progress
from blockyard.block.formats.sparse_common import WritableImage
from blockyard.block.formats.vdi_vhd_common import IoGate
from blockyard.block.formats.vmdk_extent import SECTOR, VmdkExtent, merge
from blockyard.block.formats.vmdk_open import COWD, DescArea, open_vmdk
from blockyard.block.formats.vmdk_sparse import SparseExtent
from blockyard.block.layer import Buffer, Extent, FileMap, Layer
from blockyard.errors import BlockError, MediaError
from blockyard.util.aio import run_blocking


class VmdkImage(WritableImage):
    format_name = "vmdk"

    def __init__(self, path: str, desc: vd.Descriptor, extents: list[VmdkExtent], *,
                 read_only: bool, desc_area: DescArea | None = None,
                 desc_path: str | None = None) -> None:
        super().__init__()
        self.path = path
        self.desc = desc
        self.extents_ = extents
        self.desc_area = desc_area  # embedded descriptor: (file, byte offset, room)
        self.desc_path = desc_path  # separate descriptor file
        self.read_only = read_only or any(
            isinstance(e, SparseExtent) and e.h.compressed for e in extents)
        pos = 0
        for e in extents:
            e.start = pos
            pos += e.size
        self.size = pos
        self.starts = [e.start for e in extents]
        self.parent: Layer | None = None
        self._changed = False
        self._touch_lock = asyncio.Lock()
        self._gate = IoGate()  # compact and resize hold it; sync_map answers pin it
        self.sync_map = self._sync_map
        if desc.is_child:
            for e in extents:
                e.set_backing(self._read_parent)

    # ---- driver entry points ---------------------------------------------------------
    @staticmethod
    def probe(head: bytes, size: int) -> bool:
        return head[:4] in (b"KDMV", COWD) or vd.looks_like_descriptor(head[:4096])

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, read_only: bool = False) -> VmdkImage:
        p = os.fspath(path)
        o = open_vmdk(p, read_only)
        return cls(p, o.desc, o.extents, read_only=read_only, desc_area=o.desc_area,
                   desc_path=o.desc_path)

    @classmethod
    def create(cls, path: str | os.PathLike[str], size: int, *, variant: str = "dynamic",
               **opts: Any) -> ImageLayer:
        from blockyard.block.formats.vmdk_create import create

        return create(cls, os.fspath(path), size, variant, **opts)

    # ---- request splitting -----------------------------------------------------------
    def _pieces(self, offset: int, length: int) -> list[tuple[VmdkExtent, int, int, int]]:
        """(extent, offset in extent, start, end in the request) covering the range."""
        out = []
        k = bisect.bisect_right(self.starts, offset) - 1
        pos = 0
        while pos < length:
            e = self.extents_[k]
            rel = offset + pos - e.start
            n = min(e.size - rel, length - pos)
            out.append((e, rel, pos, pos + n))
            pos += n
            k += 1
        return out

    @staticmethod
    def _allowed(e: VmdkExtent, write: bool) -> None:
        if e.access == "NOACCESS" or (write and e.access != "RW"):
            raise BlockError(errno.EPERM if write else errno.EIO,
                             f"{e.path or 'extent'}: access is {e.access}")

    async def _read_parent(self, offset: int, length: int) -> Buffer:
        if self.parent is None:
            raise BlockError(errno.EIO, f"{self.path}: differencing image with no parent "
                             f"attached (parentFileNameHint={self.desc.parent_hint!r})")
        inside = max(0, min(length, self.parent.size - offset))
        data = await self.parent.pread(offset, inside) if inside else b""
        return data if inside == length else bytes(data) + bytes(length - inside)

    # ---- the Layer operations --------------------------------------------------------
    async def _pread(self, offset: int, length: int) -> Buffer:
        if len(self.extents_) == 1:
            e = self.extents_[0]
            if e.access != "RW":
                self._allowed(e, False)
            return await e.read(offset, length)
        out = bytearray(length)
        for e, rel, a, b in self._pieces(offset, length):
            self._allowed(e, False)
            out[a:b] = await e.read(rel, b - a)
        return out

    def _sync_map(self, offset: int, length: int) -> FileMap | None:
        """``Layer.sync_map``: every extent's runs or None; the gate (so no compact or
        resize) and each sparse extent's epoch stay pinned until the map is released."""
        if offset < 0 or length <= 0 or offset + length > self.size or not self._gate.pin():
            return None
        pins = [self._gate.unpin]
        fmap = FileMap(release=functools.partial(_release_all, pins))
        try:
            for e, rel, a, b in self._pieces(offset, length):
                pin = e.sync_map(rel, b - a, fmap) if e.access != "NOACCESS" else None
                if pin is None:
                    fmap.release()
                    return None
                pins.append(pin)
        except BaseException:
            fmap.release()
            raise
        return fmap

    async def _touch(self) -> None:
        """First change after open: dirty marks, then a new CID (§2.1, §7)."""
        async with self._touch_lock:
            if self._changed:
                return
            for e in self.extents_:
                if e.access == "RW":
                    await e.mark_dirty()
            self.desc.touch()
            await self.write_descriptor()
            self._changed = True

    async def _pwrite(self, offset: int, data: Buffer, fua: bool) -> None:
        if not self._changed:
            await self._touch()
        mv = memoryview(data).cast("B")
        for e, rel, a, b in self._pieces(offset, len(mv)):
            self._allowed(e, True)
            await e.write(rel, mv[a:b])
        if fua:
            await self._flush()

    async def _zero(self, offset: int, length: int, may_trim: bool, fast: bool,
                    fua: bool) -> None:
        if not self._changed:
            await self._touch()
        for e, rel, a, b in self._pieces(offset, length):
            self._allowed(e, True)
            await e.zero(rel, b - a, may_trim)
        if fua:
            await self._flush()

    async def _trim(self, offset: int, length: int, fua: bool) -> None:
        await self._zero(offset, length, True, False, fua)

    async def _extents(self, offset: int, length: int) -> list[Extent]:
        out: list[Extent] = []
        for e, rel, a, b in self._pieces(offset, length):
            got = await e.extents(rel, b - a)
            for x in got:
                merge(out, x.length, x.flags)
            if sum(x.length for x in got) < b - a:
                break  # the extent answered for less: so do we (Layer contract)
        return out

    async def _flush(self) -> None:
        for e in self.extents_:
            await e.flush()

    async def _close(self) -> None:
        for e in self.extents_:
            await e.close()

    # ---- descriptor ------------------------------------------------------------------
    async def write_descriptor(self) -> None:
        text = self.desc.render().encode()
        if self.desc_area is not None:
            raw, at, room = self.desc_area
            if len(text) > room:
                raise BlockError(errno.ENOSPC, f"{self.path}: descriptor needs {len(text)} "
                                 f"bytes, the embedded area holds {room}")
            await raw._pwrite(at, text + bytes(room - len(text)), False)
        elif self.desc_path is not None:
            try:
                await run_blocking(replace_file, self.desc_path, text)
            except OSError as exc:
                raise BlockError(exc.errno or errno.EIO,
                                 f"{self.desc_path}: cannot rewrite: {exc.strerror}") from None

    # ---- ImageLayer ------------------------------------------------------------------
    def info(self) -> ImageInfo:
        d = self.desc
        variant = "diff" if d.is_child else vd.VARIANT_OF_TYPE.get(d.create_type, d.create_type)
        sparse = [e for e in self.extents_ if isinstance(e, SparseExtent)]
        files = {self.path} | {e.path for e in self.extents_ if e.path}
        return ImageInfo(
            path=self.path, format="vmdk", variant=variant, virtual_size=self.size,
            allocated_size=sum(_blocks(p) for p in files),
            uuid=d.uuid("image"), modification_uuid=d.uuid("modification"),
            parent_uuid=d.uuid("parent"), parent_hint=d.parent_hint, geometry=d.geometry(),
            block_size=sparse[0].grain if sparse else None,
            dirty=any(e.dirty_at_open for e in self.extents_),
            extra={"create_type": d.create_type, "cid": f"{d.cid:08x}",
                   "parent_cid": f"{d.parent_cid:08x}",
                   "adapter_type": d.ddb.get("ddb.adapterType"),
                   "extents": [x.render() for x in d.extents],
                   "zeroed_grain": any(e.h.zero_grain for e in sparse),
                   "compressed": any(e.h.compressed for e in sparse)})

    def check(self, repair: bool = False) -> CheckReport:
        from blockyard.block.formats.vmdk_maint import check_image

        return check_image(self, repair)

    async def compact(self, progress: Progress | None = None) -> int:
        from blockyard.block.formats.vmdk_maint import compact_image

        async with self._gate.exclusive():  # grains move: no mapped read may be in flight
            return await compact_image(self, progress)

    async def resize(self, new_size: int, force: bool = False) -> None:
        from blockyard.block.formats.vmdk_resize import resize_image

        if self.read_only:
            raise MediaError(f"{self.path}: opened read-only, cannot resize")
        async with self._gate.exclusive():
            await resize_image(self, new_size, force)


def _release_all(pins: list[Callable[[], None]]) -> None:
    for release in reversed(pins):
        release()


def _blocks(path: str) -> int:
    try:
        return os.stat(path).st_blocks * SECTOR
    except OSError:
        return 0


def replace_file(path: str, data: bytes) -> None:
    """Write a small file atomically: temp file, fsync, rename, fsync the directory."""
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
