"""Differencing VHDs: create, read the link, relink (image-formats.md §3.2, §3.5).

A differencing VHD is a dynamic VHD with disk type 4 whose dynamic header
names the parent: its unique ID (+40), the parent file's modification time
in seconds since 2000 (+56, as VirtualBox stores it), its file name in
UTF-16 BE (+64) and parent locators (+576).  We write two locators, the
pair VirtualBox and Hyper-V write: ``W2ku`` (absolute path) and ``W2ru``
(path relative to the child), both UTF-16 LE, their data right after the
BAT.  "Data space" is stored in bytes, as Virtual PC, Hyper-V and
VirtualBox do (§3.2); each locator gets at least ``LOCATOR_ROOM`` bytes so a
relink to a parent with a longer path still fits in place.

The layout: footer copy @0, dynamic header @512, BAT @1536, locator data,
trailing footer (§3.3); blocks are appended by the driver as for any
dynamic VHD.  Unallocated blocks and clear bitmap bits read the parent
(the driver's ``parent`` hook).
"""

from __future__ import annotations

import os
import uuid

from blockyard.block.chain_facts import LinkFacts, ParentFacts
from blockyard.block.formats import vhd_layout as V
from blockyard.block.formats.vhd import VhdImage
from blockyard.errors import MediaError

W2KU, W2RU = 0x57326B75, 0x57327275  # §3.2 platform codes
LOCATOR_ROOM = 4096


def _parent_id(parent: ParentFacts) -> bytes:
    """The parent's UUID as the 16 bytes VirtualBox compares (GUID order, §6.2)."""
    if not parent.uuid:
        return bytes(16)
    try:
        return uuid.UUID(parent.uuid).bytes_le
    except ValueError:
        return bytes(16)


def _paths(child: str, parent: ParentFacts) -> tuple[bytes, bytes]:
    rel = os.path.relpath(parent.path, os.path.dirname(os.path.abspath(child)))
    return (parent.path.encode("utf-16-le"),
            (".\\" + rel.replace("/", "\\")).encode("utf-16-le"))


def _room(n: int) -> int:
    return max(LOCATOR_ROOM, -(-n // 512) * 512)


def _fill_parent(dyn: V.DynHeader, child: str, parent: ParentFacts, first: int,
                 rooms: tuple[int, int] | None = None) -> list[tuple[int, bytes]]:
    """Set the parent fields of ``dyn``; returns the locator data writes (offset, bytes)."""
    dyn.parent_uuid = _parent_id(parent)
    dyn.parent_timestamp = max(0, parent.mtime - V.EPOCH_2000) & 0xFFFFFFFF
    name = os.path.basename(parent.path).encode("utf-16-be")[:510]
    dyn.parent_name = name.ljust(512, b"\0")
    absolute, relative = _paths(child, parent)
    rooms = rooms or (_room(len(absolute)), _room(len(relative)))
    locs: list[dict[str, int]] = []
    writes = []
    at = first
    for code, data, room in ((W2KU, absolute, rooms[0]), (W2RU, relative, rooms[1])):
        if len(data) > room:
            raise MediaError(f"{child}: the parent path {parent.path} does not fit the "
                             f"{room}-byte parent locator; move the parent closer")
        locs.append(dict(code=code, space=room, length=len(data), reserved=0, offset=at))
        writes.append((at, data + bytes(room - len(data))))
        at += room
    empty = dict(code=0, space=0, length=0, reserved=0, offset=0)
    dyn.locators = locs + [dict(empty) for _ in range(8 - len(locs))]
    return writes


def create_child(path: str, parent: ParentFacts, *, block_size: int = V.DEFAULT_BLOCK_SIZE,
                 image_uuid: str | None = None) -> VhdImage:
    """A new differencing VHD over ``parent``, opened read-write (§3.5)."""
    size = -(-parent.size // 512) * 512
    if size > V.MAX_SIZE:
        raise MediaError(f"{path}: VHD disks are limited to 2040 GiB, the parent has {size} bytes")
    footer = V.new_footer(size, V.DIFF)
    if image_uuid:
        footer.unique_id = uuid.UUID(image_uuid).bytes_le  # read back as guid_text (§6.2)
    dyn = V.new_dyn_header(size, block_size)
    first = dyn.table_offset + dyn.bat_bytes
    writes = _fill_parent(dyn, path, parent, first)
    end = writes[-1][0] + len(writes[-1][1])

    def write(fd: int) -> None:
        raw = footer.pack()
        os.pwrite(fd, raw, 0)
        os.pwrite(fd, dyn.pack(), 512)
        os.pwrite(fd, b"\xff" * dyn.bat_bytes, dyn.table_offset)
        for at, data in writes:
            os.pwrite(fd, data, at)
        os.pwrite(fd, raw, end)

    return VhdImage.open(VhdImage.new_file(path, write))


def link_of(img: VhdImage) -> LinkFacts:
    d = img.dyn
    if d is None or not img.is_diff:
        return LinkFacts()
    name, locators = V.parent_hint(d, img._read_sync)
    by_kind = dict(locators)
    hints = [h for h in (by_kind.get("W2ru"), by_kind.get("W2ku"), by_kind.get("MacX"), name)
             if h]
    pid = None if d.parent_uuid == bytes(16) else V.guid_text(d.parent_uuid)
    return LinkFacts(parent_uuid=pid, hints=hints)


def relink(path: str, parent: ParentFacts) -> None:
    """Point a closed differencing VHD at another parent (dynamic header + locators)."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        footer, dyn, _bat, _pos, _problems = V.load(fd, path)
        if dyn is None or footer.disk_type != V.DIFF:
            raise MediaError(f"{path}: not a differencing VHD; cannot relink it")
        ours = [loc for loc in dyn.locators if loc["code"] in (W2KU, W2RU)]
        if len(ours) != 2 or ours[1]["offset"] != ours[0]["offset"] + ours[0]["space"]:
            raise MediaError(f"{path}: its parent locators are not laid out as blockyard "
                             "writes them; cannot relink it in place")
        writes = _fill_parent(dyn, path, parent, ours[0]["offset"],
                              (ours[0]["space"], ours[1]["space"]))
        for at, data in writes:
            os.pwrite(fd, data, at)
        os.fsync(fd)  # locator data before the header that points at it
        os.pwrite(fd, dyn.pack(), footer.data_offset)
        os.fsync(fd)
    finally:
        os.close(fd)
