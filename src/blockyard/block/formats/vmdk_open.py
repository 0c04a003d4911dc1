"""Opening a VMDK: from a path to a descriptor and a list of open extents.

Two entry shapes (image-formats.md §2.1, §2.2):

* the file starts with ``KDMV``: a sparse extent (monolithicSparse or
  streamOptimized) whose descriptor is embedded at the header's descriptor
  offset; the extent is the file itself (like qemu, the embedded extent
  line's file name is not followed, so a renamed image still opens);
* otherwise the file is a text descriptor naming extent files relative to
  its own directory.  Absolute names and ``..`` are refused: an image served
  to clients must not pull other host files in through its descriptor.

Everything is validated before the image is returned; on any problem every
file opened so far is closed and a MediaError names the file at fault.
Nothing is written here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from blockyard.block.formats import vmdk_descriptor as vd
from blockyard.block.formats.vmdk_extent import SECTOR, FlatExtent, VmdkExtent, ZeroExtent
from blockyard.block.formats.vmdk_layout import (
    GD_AT_END,
    SparseHeader,
    load_tables,
    parse_header,
    read_footer,
    validate_header,
)
from blockyard.block.formats.vmdk_sparse import SparseExtent
from blockyard.block.raw import RawFile
from blockyard.errors import MediaError

COWD = b"COWD"  # VMware ESX 2 / GSX sparse (VMFSSPARSE), not supported


DescArea = tuple[RawFile, int, int]  # file, byte offset, bytes of room


@dataclass
class Opened:
    desc: vd.Descriptor
    extents: list[VmdkExtent]
    desc_area: DescArea | None  # where an embedded descriptor lives
    desc_path: str | None  # the separate descriptor file, if any


def open_sparse_file(raw: RawFile, where: str, *, capacity: int | None = None) -> SparseExtent:
    """Read and validate one hosted sparse extent file (§2.2-§2.4)."""
    file_size = os.fstat(raw.fd).st_size
    header = parse_header(os.pread(raw.fd, SECTOR, 0), where)
    if header.gd_offset == GD_AT_END:
        footer = read_footer(raw.fd, file_size, where)
        header = SparseHeader(**{**footer.__dict__, "unclean_shutdown": header.unclean_shutdown})
    validate_header(header, file_size, where)
    size = header.capacity if capacity is None else capacity
    if size > header.capacity:
        raise MediaError(f"{where}: descriptor gives the extent {size} sectors, its header "
                         f"only {header.capacity}")
    tables = load_tables(raw.fd, header, file_size, where)
    return SparseExtent(raw, header, tables, size=size * SECTOR)


def _embedded_descriptor(ext: SparseExtent, where: str) -> vd.Descriptor:
    h = ext.h
    if not h.desc_offset:  # a bare extent (e.g. a -s001 file opened directly)
        kind = "streamOptimized" if h.compressed else "monolithicSparse"
        line = vd.ExtentLine("RW", h.capacity, "SPARSE", os.path.basename(where))
        return vd.Descriptor(kind, [line])
    assert ext.raw is not None
    raw = os.pread(ext.raw.fd, h.desc_size * SECTOR, h.desc_offset * SECTOR)
    return vd.parse(vd.decode(raw, where), where)


def _open_extent(line: vd.ExtentLine, base_dir: str, read_only: bool, where: str) -> VmdkExtent:
    if line.kind == "ZERO":
        return ZeroExtent(line.sectors * SECTOR, line.access)
    assert line.filename is not None
    parts = line.filename.replace("\\", "/").split("/")
    if os.path.isabs(line.filename) or ".." in parts:
        # a served image must not reach other host files through its descriptor
        raise MediaError(f"{where}: extent file {line.filename!r} lies outside the "
                         "descriptor's directory")
    path = os.path.join(base_dir, line.filename)
    if not os.path.exists(path):
        raise MediaError(f"{where}: extent file {path} is missing")
    raw = RawFile(path, read_only=read_only or line.access != "RW")
    try:
        if line.kind == "FLAT":
            return FlatExtent(raw, line.sectors * SECTOR, line.offset, line.access)
        ext = open_sparse_file(raw, path, capacity=line.sectors)
        ext.access = line.access
        return ext
    except BaseException:
        os.close(raw.fd)
        raise


def open_vmdk(path: str, read_only: bool) -> Opened:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise MediaError(f"{path}: cannot open: {exc.strerror}") from None
    if head == COWD:
        raise MediaError(f"{path}: VMFS sparse (COWD) extents are not supported")
    if head == b"KDMV":
        raw = RawFile(path, read_only=read_only)
        try:
            ext = open_sparse_file(raw, path)
            desc = _embedded_descriptor(ext, path)
        except BaseException:
            os.close(raw.fd)
            raise
        h = ext.h
        area = (raw, h.desc_offset * SECTOR, h.desc_size * SECTOR) if h.desc_offset else None
        return Opened(desc, [ext], area, None)
    return _open_descriptor_file(path, read_only)


def _read_text(path: str) -> str:
    size = os.path.getsize(path)
    if size > vd.MAX_DESCRIPTOR_BYTES:
        raise MediaError(f"{path}: not a VMDK: no sparse magic, and too large for a descriptor")
    with open(path, "rb") as f:
        raw = f.read()
    if not vd.looks_like_descriptor(raw[:4096]):
        raise MediaError(f"{path}: not a VMDK: neither sparse magic nor a descriptor")
    return vd.decode(raw, path)


def _open_descriptor_file(path: str, read_only: bool) -> Opened:
    desc = vd.parse(_read_text(path), path)
    base_dir = os.path.dirname(os.path.abspath(path))
    extents: list[VmdkExtent] = []
    try:
        for line in desc.extents:
            extents.append(_open_extent(line, base_dir, read_only, path))
    except BaseException:
        for e in extents:
            if e.raw is not None:
                os.close(e.raw.fd)
        raise
    return Opened(desc, extents, None, path)
