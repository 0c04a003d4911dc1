"""Parallels expandable image (.hds) layout: header and BAT (image-formats.md §4.1).

Also qemu's docs/interop/parallels.txt.  All integers little-endian::

    0  magic[16]    "WithoutFreeSpace" (BAT in sectors) | "WithouFreSpacExt" (in clusters)
    16 version      2
    20 heads, 24 cylinders     guest geometry
    28 tracks       cluster size in sectors
    32 bat_entries
    36 nb_sectors   u64; WithoutFreeSpace uses only the low 32 bits
    44 inuse        0x746F6E59 while open read-write
    48 data_off     sectors; 0 (v1 only) = right after the BAT, sector aligned
    52 flags        bit 0: empty image
    56 ext_off      format extension cluster, sectors (0 = none)

``load`` validates everything a reader relies on and refuses BAT entries
that are below the data area, past the end of the file, or shared/overlapping
(MediaError); misaligned entries are accepted (VirtualBox can write them) and
reported by ``check``.
"""

from __future__ import annotations

import os
import sys
from array import array
from dataclasses import dataclass

from construct import Bytes, Int32ul, Int64ul, Struct

from blockyard.errors import MediaError

SECTOR = 512
HEADER_SIZE = 64
MAGIC_V1 = b"WithoutFreeSpace"
MAGIC_EXT = b"WithouFreSpacExt"
VERSION = 2
INUSE = 0x746F6E59  # "Ynot": open read-write
CLOSED = 0x312E3276  # "v2.1": closed cleanly (the spec; qemu writes 0)
FLAG_EMPTY = 1
MAX_BAT = 1 << 30  # VirtualBox's limit
MAX_TRACKS = 0x7FFFFFFF // 513  # qemu: "Too big cluster"

HEADER = Struct(
    "magic" / Bytes(16),
    "version" / Int32ul,
    "heads" / Int32ul,
    "cylinders" / Int32ul,
    "tracks" / Int32ul,
    "bat_entries" / Int32ul,
    "nb_sectors" / Int64ul,
    "inuse" / Int32ul,
    "data_off" / Int32ul,
    "flags" / Int32ul,
    "ext_off" / Int64ul,
)


@dataclass
class Header:
    magic: bytes
    heads: int
    cylinders: int
    tracks: int
    bat_entries: int
    nb_sectors: int
    inuse: int = 0
    data_off: int = 0
    flags: int = 0
    ext_off: int = 0
    version: int = VERSION

    @property
    def ext(self) -> bool:
        return self.magic == MAGIC_EXT

    @property
    def unit(self) -> int:
        """Sectors per BAT unit: 1 (v1) or one cluster (ext)."""
        return self.tracks if self.ext else 1

    @property
    def cluster(self) -> int:
        return self.tracks * SECTOR

    @property
    def disk_size(self) -> int:
        return self.nb_sectors * SECTOR

    def build(self) -> bytes:
        return HEADER.build(dict(
            magic=self.magic, version=self.version, heads=self.heads, cylinders=self.cylinders,
            tracks=self.tracks, bat_entries=self.bat_entries, nb_sectors=self.nb_sectors,
            inuse=self.inuse, data_off=self.data_off, flags=self.flags, ext_off=self.ext_off))


def bat_bytes(values: array) -> bytes:
    if sys.byteorder == "big":
        values = array("I", values)
        values.byteswap()
    return values.tobytes()


def parse(raw: bytes, where: str) -> Header:
    if len(raw) < HEADER_SIZE:
        raise MediaError(f"{where}: truncated Parallels header ({len(raw)} bytes)")
    c = HEADER.parse(raw[:HEADER_SIZE])
    if c.magic not in (MAGIC_V1, MAGIC_EXT):
        raise MediaError(f"{where}: no Parallels magic")
    if c.version != VERSION:  # §4.1: version = 2
        raise MediaError(f"{where}: Parallels version {c.version} not supported")
    sectors = c.nb_sectors & 0xFFFFFFFF if c.magic == MAGIC_V1 else c.nb_sectors
    return Header(c.magic, c.heads, c.cylinders, c.tracks, c.bat_entries, sectors, c.inuse,
                  c.data_off, c.flags, c.ext_off)


def data_start(h: Header) -> int:
    """First sector of the data area (v1 with data_off 0: after the BAT)."""
    if h.data_off:
        return h.data_off
    return -(-(HEADER_SIZE + 4 * h.bat_entries) // SECTOR)


def validate(h: Header, file_size: int, where: str) -> None:
    if not 0 < h.tracks <= MAX_TRACKS:
        raise MediaError(f"{where}: invalid cluster size of {h.tracks} sectors")
    if h.bat_entries > MAX_BAT:
        raise MediaError(f"{where}: BAT of {h.bat_entries} entries is too large")
    if h.bat_entries < -(-h.nb_sectors // h.tracks):
        raise MediaError(f"{where}: BAT of {h.bat_entries} entries cannot map "
                         f"{h.nb_sectors} sectors")
    if h.ext and (h.data_off == 0 or h.data_off % h.tracks):  # parallels.txt, data_off
        raise MediaError(f"{where}: data offset {h.data_off} is not cluster aligned")
    bat_end = HEADER_SIZE + 4 * h.bat_entries
    if data_start(h) * SECTOR < bat_end:
        raise MediaError(f"{where}: data area at sector {data_start(h)} overlaps the BAT")
    if bat_end > file_size:
        raise MediaError(f"{where}: file truncated: the BAT needs {bat_end} bytes, "
                         f"the file has {file_size}")


def load_bat(fd: int, h: Header, file_size: int, where: str) -> array:
    bat = array("I", os.pread(fd, 4 * h.bat_entries, HEADER_SIZE))
    if len(bat) != h.bat_entries:
        raise MediaError(f"{where}: short read of the BAT")
    if sys.byteorder == "big":
        bat.byteswap()
    check_pointers(h, bat, file_size, where)
    return bat


def check_pointers(h: Header, bat: array, file_size: int, where: str) -> None:
    """parallels.txt 'BAT': >= data offset, below EOF, unique; plus no overlaps."""
    start, end = data_start(h), -(-file_size // SECTOR)
    used = sorted((v * h.unit, i) for i, v in enumerate(bat) if v)
    if h.ext_off:
        used = sorted(used + [(h.ext_off, -1)])
    for sector, i in used:
        what = "the format extension" if i < 0 else f"BAT entry {i}"
        if sector < start:
            raise MediaError(f"{where}: {what} points below the data area (sector {sector})")
        if sector >= end:
            raise MediaError(f"{where}: {what} points past the end of the file "
                             f"(sector {sector})")
    for (a, i), (b, j) in zip(used, used[1:], strict=False):
        if b - a < h.tracks:
            raise MediaError(f"{where}: BAT entries {i} and {j} share clusters "
                             f"(sectors {a} and {b})")


def new_header(size: int, cluster: int, magic: bytes) -> Header:
    """A fresh expandable image; geometry as VirtualBox makes it (16 heads, 63 sectors)."""
    sectors = size // SECTOR
    tracks = cluster // SECTOR
    bat = -(-sectors // tracks)
    data = -(-(HEADER_SIZE + 4 * bat) // cluster) * tracks  # cluster aligned, like qemu
    return Header(magic, 16, sectors // (16 * 63), tracks, bat, sectors, 0, data, 0, 0)
