"""ISO 9660 images (image-formats.md §9): raw 2048-byte sectors, always read-only.

Probe: a volume descriptor ``CD001`` at sector 16 (byte 32768 + 1).  Open
walks the volume descriptor set (sector 16 up to the terminator, type 255)
for the primary volume descriptor and validates it:

* PVD offset 40: volume id (32 a-characters, space padded);
* offset 80: volume space size, both-endian u32 (LE copy, then BE copy);
* offset 128: logical block size, both-endian u16, must be 2048;
* a supplementary descriptor with escape ``%/@``, ``%/C`` or ``%/E`` at
  offset 88 is Joliet; a boot record (type 0, "EL TORITO SPECIFICATION")
  is El Torito.

The disk is the file, served read-only: writes get EPERM from the Layer
contract (``read_only = True``).  Block-size limits are 2048 (CD sectors).
"""

from __future__ import annotations

import os
import struct
from typing import Any

from blockyard.block.formats.base import CheckReport, ImageInfo, ImageLayer, Progress
from blockyard.block.layer import Limits
from blockyard.block.raw import RawFile
from blockyard.errors import MediaError

CD_SECTOR = 2048
FIRST_VD = 16
MAX_VDS = 64  # descriptors before the terminator; real discs carry a handful
ID = b"CD001"
T_BOOT, T_PRIMARY, T_SUPPLEMENTARY, T_TERMINATOR = 0, 1, 2, 255
JOLIET_ESCAPES = (b"%/@", b"%/C", b"%/E")
_LE32, _BE32 = struct.Struct("<I"), struct.Struct(">I")
_LE16, _BE16 = struct.Struct("<H"), struct.Struct(">H")


def _text(raw: bytes) -> str:
    return raw.decode("ascii", "replace").rstrip(" \0")


def read_descriptors(fd: int, size: int, where: str) -> dict[str, Any]:
    """Walk the volume descriptor set; return the PVD fields and the features seen."""
    found: dict[str, Any] = {"joliet": False, "el_torito": False}
    for n in range(FIRST_VD, FIRST_VD + MAX_VDS):
        vd = os.pread(fd, CD_SECTOR, n * CD_SECTOR)
        if len(vd) < CD_SECTOR or vd[1:6] != ID:
            break
        kind = vd[0]
        if kind == T_PRIMARY and "volume_id" not in found:
            found.update(_primary(vd, where))
        elif kind == T_SUPPLEMENTARY and vd[88:91] in JOLIET_ESCAPES:
            found["joliet"] = True
        elif kind == T_BOOT and vd[7:30] == b"EL TORITO SPECIFICATION":
            found["el_torito"] = True
        elif kind == T_TERMINATOR:
            break
    if "volume_id" not in found:
        raise MediaError(f"{where}: no ISO 9660 primary volume descriptor at sector 16")
    need = found["volume_space_size"] * CD_SECTOR
    if size < need:
        raise MediaError(f"{where}: truncated: the volume has {found['volume_space_size']} "
                         f"sectors of 2048 bytes ({need} bytes), the file {size}")
    return found


def _primary(vd: bytes, where: str) -> dict[str, Any]:
    (le,), (be,) = _LE32.unpack_from(vd, 80), _BE32.unpack_from(vd, 84)  # both-endian
    (ble,), (bbe,) = _LE16.unpack_from(vd, 128), _BE16.unpack_from(vd, 130)
    if le != be or ble != bbe:
        raise MediaError(f"{where}: primary volume descriptor: both-endian fields disagree")
    if ble != CD_SECTOR:
        raise MediaError(f"{where}: logical block size {ble} not supported (only 2048)")
    if le < FIRST_VD + 2:
        raise MediaError(f"{where}: volume space size {le} sectors is too small")
    return {"volume_id": _text(vd[40:72]), "system_id": _text(vd[8:40]),
            "volume_space_size": le, "publisher": _text(vd[318:446]),
            "application": _text(vd[574:702]), "created": _text(vd[813:829])}


class IsoImage(RawFile, ImageLayer):
    format_name = "iso"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, read_only=True)
        try:
            self.meta = read_descriptors(self.fd, self.size, self.path)
        except BaseException:
            os.close(self.fd)
            raise
        self.size -= self.size % CD_SECTOR

    @staticmethod
    def probe(head: bytes, size: int) -> bool:
        at = FIRST_VD * CD_SECTOR
        return len(head) >= at + 6 and head[at + 1:at + 6] == ID

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, read_only: bool = True) -> IsoImage:
        return cls(path)

    @classmethod
    def create(cls, path: str | os.PathLike[str], size: int, *, variant: str = "dynamic",
               **opts: Any) -> IsoImage:
        raise MediaError(f"{os.fspath(path)}: ISO images are built from files (VISO recipes), "
                         "not created empty")

    @property
    def can_trim(self) -> bool:  # type: ignore[override]
        return False

    @property
    def can_fast_zero(self) -> bool:  # type: ignore[override]
        return False

    @property
    def limits(self) -> Limits:
        return Limits(minimum=CD_SECTOR, preferred=CD_SECTOR, maximum=32 << 20)

    def info(self) -> ImageInfo:
        st = os.fstat(self.fd)
        return ImageInfo(self.path, "iso", "iso9660", self.size, st.st_blocks * 512,
                         sector_size=CD_SECTOR, extra=dict(self.meta))

    def check(self, repair: bool = False) -> CheckReport:
        report = CheckReport(self.path)
        try:
            read_descriptors(self.fd, os.fstat(self.fd).st_size, self.path)
        except MediaError as exc:
            report.errors.append(str(exc))
        if os.fstat(self.fd).st_size % CD_SECTOR:
            report.errors.append(f"{self.path}: file size is not a multiple of 2048")
        return report

    async def compact(self, progress: Progress | None = None) -> int:
        raise MediaError(f"{self.path}: ISO images are read-only")

    async def resize(self, new_size: int, force: bool = False) -> None:
        raise MediaError(f"{self.path}: ISO images are read-only")

    def describe(self) -> str:
        return f"iso:{self.path}"
