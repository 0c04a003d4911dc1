"""Creating VMDK images of every variant (image-formats.md §2).

| variant         | createType             | files                                    |
|-----------------|------------------------|------------------------------------------|
| ``dynamic``     | monolithicSparse       | ``x.vmdk`` (descriptor embedded)          |
| ``fixed``       | monolithicFlat         | ``x.vmdk`` + ``x-flat.vmdk``              |
| ``split2g``     | twoGbMaxExtentSparse   | ``x.vmdk`` + ``x-s001.vmdk`` ...          |
| ``split2g-fixed`` | twoGbMaxExtentFlat   | ``x.vmdk`` + ``x-f001.vmdk`` ...          |
| ``stream``      | streamOptimized        | ``x.vmdk`` (compressed, written once)     |

Options: ``adapter_type`` (ide | buslogic | lsilogic | legacyESX),
``zeroed_grain`` (sparse: version 2 with zeroed-grain GTEs; qemu reads them,
VirtualBox may not, so off by default), ``grain_size`` (bytes, power of two,
4 KiB..32 MiB, default 64 KiB), ``uuid`` (ddb.uuid.image), ``extent_size``
(bytes per split extent; default 2047 MiB as VMware and VirtualBox cut, §2.1),
``preallocate`` (fixed variants: reserve the space, default True),
``lazy_tables`` (sparse: leave GD entries 0 and allocate grain tables on
first use, as VirtualBox can; default False, see below).

Sparse extents are laid out like qemu's: header, embedded descriptor (20
sectors), redundant GD and GTs, GD and GTs, data from the first grain
boundary.  The grain tables are placed but not written: they are holes in
the file (all zero = unallocated) and cost no space until used.  Why not
lazy by default: qemu 7.2 cannot write where a GD entry is 0 -- it writes
the data at file offset 0, over the header (checked here with qemu-io).
Our driver reads and writes both layouts and allocates a missing GT when a
GD entry is 0 (``vmdk_sparse``).  Sizes are rounded up to whole sectors, as
qemu does.
"""

from __future__ import annotations

import os
from array import array
from typing import Any

from blockyard.block.formats import vmdk_descriptor as vd
from blockyard.block.formats.base import ImageLayer
from blockyard.block.formats.vmdk_layout import (
    COMPRESS_DEFLATE,
    FLAG_COMPRESSED,
    FLAG_MARKERS,
    FLAG_NL_DETECT,
    FLAG_RGD,
    FLAG_ZERO_GRAIN,
    GD_AT_END,
    SECTOR,
    SparseHeader,
)
from blockyard.block.formats.vmdk_sparse import le_bytes
from blockyard.errors import MediaError
from blockyard.util.units import parse_size

SPLIT_DEFAULT = 2047 << 20  # VMware / VirtualBox cut (§2.1)
ADAPTERS = ("ide", "buslogic", "lsilogic", "legacyESX")
_OPTIONS = {"adapter_type", "zeroed_grain", "grain_size", "uuid", "extent_size", "preallocate",
            "lazy_tables"}


def sparse_header(capacity: int, grain: int, *, embedded: bool, zeroed: bool = False,
                  stream: bool = False, prealloc: bool = True) -> SparseHeader:
    """Header of a fresh sparse extent, laid out like qemu's (§2.2).

    header | descriptor | RGD | RGTs | GD | GTs | first grain (grain aligned);
    without ``prealloc`` the GT areas are left out, and a stream has no RGD.
    """
    n = 512
    gd_entries = -(-capacity // (n * grain))
    gd_sectors = max(1, -(-gd_entries * 4 // SECTOR))
    gts = gd_entries * (n * 4 // SECTOR) if prealloc and not stream else 0
    desc_size = vd.EMBEDDED_SECTORS if embedded else 0
    rgd = 0 if stream else 1 + desc_size
    gd = 1 + desc_size + (0 if stream else gd_sectors + gts)
    overhead = -(-(gd + gd_sectors + gts) // grain) * grain
    flags = FLAG_NL_DETECT | (0 if stream else FLAG_RGD) | (FLAG_ZERO_GRAIN if zeroed else 0)
    if stream:
        flags |= FLAG_COMPRESSED | FLAG_MARKERS
    version = 3 if stream else (2 if zeroed else 1)
    return SparseHeader(version, flags, capacity, grain, 1 if embedded else 0, desc_size, n,
                        rgd, gd, overhead, 0, COMPRESS_DEFLATE if stream else 0)


def _directory(first_gt: int, h: SparseHeader, prealloc: bool) -> bytes:
    if not prealloc:
        return bytes(4 * h.gd_entries)
    step = h.gt_sectors
    return le_bytes(array("I", range(first_gt, first_gt + step * h.gd_entries, step)))


def write_sparse_file(path: str, header: SparseHeader, descriptor: bytes = b"",
                      prealloc: bool = True) -> None:
    """Header, descriptor, GD and RGD (GTs are holes: all zero); ends at the overhead."""
    fd = _create(path)
    h = header
    try:
        os.pwrite(fd, h.build(), 0)
        if h.desc_offset:
            room = h.desc_size * SECTOR
            if len(descriptor) > room:
                raise MediaError(f"{path}: descriptor of {len(descriptor)} bytes does not fit")
            os.pwrite(fd, descriptor + bytes(room - len(descriptor)), h.desc_offset * SECTOR)
        gd_sectors = max(1, -(-h.gd_entries * 4 // SECTOR))
        if h.rgd_offset:
            os.pwrite(fd, _directory(h.rgd_offset + gd_sectors, h, prealloc),
                      h.rgd_offset * SECTOR)
        if h.gd_offset != GD_AT_END:
            os.pwrite(fd, _directory(h.gd_offset + gd_sectors, h, prealloc), h.gd_offset * SECTOR)
        os.ftruncate(fd, h.overhead * SECTOR)
        os.fsync(fd)
    finally:
        os.close(fd)


def _create(path: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        raise MediaError(f"{path}: already exists") from None
    except OSError as exc:
        raise MediaError(f"{path}: cannot create: {exc.strerror}") from None


def _flat_file(path: str, size: int, preallocate: bool) -> None:
    fd = _create(path)
    try:
        os.ftruncate(fd, size)
        if preallocate and size:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                raise MediaError(f"{path}: cannot preallocate {size} bytes: "
                                 f"{exc.strerror}") from None
    finally:
        os.close(fd)


def _stem(path: str) -> str:
    return path[:-5] if path.lower().endswith(".vmdk") else path


def _chunks(total: int, step: int) -> list[int]:
    out = []
    while total > 0:
        out.append(min(step, total))
        total -= out[-1]
    return out or [0]


class _Plan:
    """Parsed options and the files a variant will create (removed on failure)."""

    def __init__(self, path: str, size: int, opts: dict[str, Any]) -> None:
        unknown = set(opts) - _OPTIONS
        if unknown:
            raise MediaError(f"{path}: unknown VMDK option(s): {', '.join(sorted(unknown))}")
        self.path = path
        self.sectors = -(-size // SECTOR)
        self.adapter = str(opts.get("adapter_type", "ide"))
        if self.adapter not in ADAPTERS:
            raise MediaError(f"{path}: adapter type {self.adapter!r} not one of {ADAPTERS}")
        grain = parse_size(opts.get("grain_size", 65536))
        if grain < 4096 or grain > 32 << 20 or grain & (grain - 1):
            raise MediaError(f"{path}: grain size {grain} is not a power of two in 4K..32M")
        self.grain = grain // SECTOR
        split = parse_size(opts.get("extent_size", SPLIT_DEFAULT))
        if split < grain or split % grain:
            raise MediaError(f"{path}: extent size {split} is not a multiple of the grain")
        self.split = split // SECTOR
        self.zeroed = bool(opts.get("zeroed_grain", False))
        self.uuid = opts.get("uuid")
        self.preallocate = bool(opts.get("preallocate", True))
        self.lazy = bool(opts.get("lazy_tables", False))
        self.made: list[str] = []

    def descriptor(self, create_type: str, lines: list[vd.ExtentLine]) -> vd.Descriptor:
        try:
            return vd.for_new_image(create_type, lines, adapter_type=self.adapter,
                                    image_uuid=self.uuid)
        except ValueError:
            raise MediaError(f"{self.path}: uuid {self.uuid!r} is not a UUID") from None

    def cleanup(self) -> None:
        for p in self.made:
            try:
                os.unlink(p)
            except OSError:
                pass


def _dynamic(plan: _Plan) -> None:
    name = os.path.basename(plan.path)
    desc = plan.descriptor("monolithicSparse",
                           [vd.ExtentLine("RW", plan.sectors, "SPARSE", name)])
    header = sparse_header(plan.sectors, plan.grain, embedded=True, zeroed=plan.zeroed,
                           prealloc=not plan.lazy)
    plan.made.append(plan.path)
    write_sparse_file(plan.path, header, desc.render().encode(), not plan.lazy)


def _split(plan: _Plan, kind: str) -> None:
    sparse = kind == "SPARSE"
    stem, sizes = _stem(plan.path), _chunks(plan.sectors, plan.split)
    if len(sizes) > 999:
        raise MediaError(f"{plan.path}: more than 999 extents; pass a larger extent_size")
    lines = []
    for i, sectors in enumerate(sizes, 1):
        name = f"{os.path.basename(stem)}-{'s' if sparse else 'f'}{i:03d}.vmdk"
        lines.append(vd.ExtentLine("RW", sectors, kind, name, 0))
    _write_extents(plan, lines, os.path.dirname(stem))
    create_type = "twoGbMaxExtentSparse" if sparse else "twoGbMaxExtentFlat"
    _write_descriptor(plan, plan.descriptor(create_type, lines))


def _fixed(plan: _Plan) -> None:
    stem = _stem(plan.path)
    line = vd.ExtentLine("RW", plan.sectors, "FLAT", f"{os.path.basename(stem)}-flat.vmdk", 0)
    _write_extents(plan, [line], os.path.dirname(stem))
    _write_descriptor(plan, plan.descriptor("monolithicFlat", [line]))


def _write_extents(plan: _Plan, lines: list[vd.ExtentLine], base: str) -> None:
    for line in lines:
        assert line.filename is not None
        p = os.path.join(base, line.filename)
        if os.path.lexists(p):
            raise MediaError(f"{p}: already exists")
    for line in lines:
        assert line.filename is not None
        p = os.path.join(base, line.filename)
        plan.made.append(p)
        if line.kind == "FLAT":
            _flat_file(p, line.sectors * SECTOR, plan.preallocate)
        else:
            h = sparse_header(line.sectors, plan.grain, embedded=False, zeroed=plan.zeroed,
                              prealloc=not plan.lazy)
            write_sparse_file(p, h, b"", not plan.lazy)


def _write_descriptor(plan: _Plan, desc: vd.Descriptor) -> None:
    fd = _create(plan.path)
    plan.made.append(plan.path)
    try:
        os.write(fd, desc.render().encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def create(cls: type[ImageLayer], path: str, size: int, variant: str,
           **opts: Any) -> ImageLayer:
    if size < 0:
        raise MediaError(f"{path}: negative size")
    if os.path.lexists(path):
        raise MediaError(f"{path}: already exists")
    plan = _Plan(path, size, opts)
    if variant == "stream":
        from blockyard.block.formats.vmdk_stream import create_stream

        return create_stream(cls, plan.path, plan.sectors, plan.grain,
                             plan.descriptor("streamOptimized", []))
    makers = {"dynamic": _dynamic, "fixed": _fixed, "split2g": lambda p: _split(p, "SPARSE"),
              "split2g-fixed": lambda p: _split(p, "FLAT")}
    if variant not in makers:
        raise MediaError(f"{path}: VMDK has no variant {variant!r} "
                         f"(known: {', '.join([*makers, 'stream'])})")
    try:
        makers[variant](plan)
        return cls.open(path)
    except BaseException:
        plan.cleanup()
        raise
