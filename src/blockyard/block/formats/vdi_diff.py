"""Differencing VDI images: create, read the link, relink (image-formats.md §1.4).

A differencing VDI is a dynamic VDI with image type 4 whose link UUID is the
parent's image UUID and whose parent-modification UUID is the parent's
modification UUID when the link was made (§1.2, 0x1A8 and 0x1B8).  There is
no parent file name in a VDI: VirtualBox finds parents through its media
registry.  So that a child stays usable outside a registry -- and over a
parent that has no UUID of its own (raw) -- blockyard also writes the
parent's path, relative to the child, into the header's free-text comment
(0x054, which VirtualBox shows as nothing and never checks)::

    blockyard-parent: ../base.img
    blockyard-parent: iscsi://alice@san.example:3260/iqn.2026-11.org.x:disks/1

A remote LUN parent is named by its URL without secrets (they come from
``secret_file=`` / ``secret_env=`` or the environment when the chain opens).

Any VDI reader ignores it; blockyard's chain finder uses it only after the
UUID scan found nothing.
"""

from __future__ import annotations

import os
import uuid
from array import array

from blockyard.block.chain_facts import LinkFacts, ParentFacts
from blockyard.block.formats import vdi_layout as L
from blockyard.block.formats.vdi import VdiImage
from blockyard.errors import MediaError

HINT_PREFIX = b"blockyard-parent: "


def _uuid_or_null(text: str | None) -> uuid.UUID:
    if not text:
        return L.NULL_UUID
    try:
        return uuid.UUID(text)
    except ValueError:
        return L.NULL_UUID


def comment_for(child: str, parent: ParentFacts) -> bytes:
    if "://" in parent.path:  # a remote LUN: its URL as it is
        raw = HINT_PREFIX + parent.path.encode("utf-8")
        if len(raw) >= 256:
            raise MediaError(f"{child}: the parent URL is longer than a VDI comment holds "
                             f"({len(raw) - len(HINT_PREFIX)} bytes, at most "
                             f"{255 - len(HINT_PREFIX)}); shorten it (drop optional keys)")
        return raw.ljust(256, b"\0")
    rel = os.path.relpath(parent.path, os.path.dirname(os.path.abspath(child)))
    raw = HINT_PREFIX + rel.encode("utf-8")
    if len(raw) >= 256:  # §1.2: 256 bytes, NUL terminated; fall back to the absolute path
        raw = HINT_PREFIX + parent.path.encode("utf-8")
    return raw[:255].ljust(256, b"\0")


def hint_of(comment: bytes) -> str | None:
    text = comment.split(b"\0", 1)[0]
    if not text.startswith(HINT_PREFIX):
        return None
    return text[len(HINT_PREFIX):].decode("utf-8", "replace") or None


def create_child(path: str, parent: ParentFacts, *, block_size: int = L.DEFAULT_BLOCK_SIZE,
                 image_uuid: str | None = None) -> VdiImage:
    """A new differencing VDI over ``parent``, opened read-write (§1.4)."""
    size = -(-parent.size // 512) * 512
    if -(-size // block_size) > L.MAX_BLOCKS:
        raise MediaError(f"{path}: cannot make a VDI child of {size} bytes")
    h = L.new_header(size, block_size, False)
    h.image_type = L.TYPE_DIFF
    if image_uuid:
        h.uuid_image = uuid.UUID(image_uuid)
    h.uuid_link = _uuid_or_null(parent.uuid)  # §1.4: the parent's image UUID
    h.uuid_parent_modification = _uuid_or_null(parent.modification)
    h.comment = comment_for(path, parent)
    bmap = array("I", [L.BLOCK_FREE] * h.blocks_total)

    def write(fd: int) -> None:
        os.ftruncate(fd, h.offset_data)
        L.write_header(fd, h)
        os.pwrite(fd, L.dump_map(bmap), h.offset_blocks)

    return VdiImage.open(VdiImage.new_file(path, write))


def link_of(img: VdiImage) -> LinkFacts:
    h = img.h
    link = None if h.uuid_link == L.NULL_UUID else str(h.uuid_link)
    pmod = None if h.uuid_parent_modification == L.NULL_UUID else str(h.uuid_parent_modification)
    hint = hint_of(h.comment)
    return LinkFacts(parent_uuid=link, parent_modification=pmod,
                     hints=[hint] if hint else [])


def relink(path: str, parent: ParentFacts) -> None:
    """Point a closed differencing VDI at another parent (header only, synced)."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        h, _bmap, _scan = L.read_image(fd, path)
        if h.image_type != L.TYPE_DIFF:
            raise MediaError(f"{path}: not a differencing VDI; cannot relink it")
        h.uuid_link = _uuid_or_null(parent.uuid)
        h.uuid_parent_modification = _uuid_or_null(parent.modification)
        h.comment = comment_for(path, parent)
        L.write_header(fd, h)
        os.fsync(fd)
    finally:
        os.close(fd)
