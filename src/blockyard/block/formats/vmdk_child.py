"""Differencing VMDKs: create, read the link, relink (image-formats.md §2.1, §2.5).

A child is an ordinary monolithicSparse VMDK whose descriptor carries
``parentCID`` (the parent's CID when the link was made) and
``parentFileNameHint`` (the parent's path, relative to the child, as qemu
resolves it), plus VirtualBox's ``ddb.uuid.parent`` and
``ddb.uuid.parentmodification`` when the parent has them.  qemu creates and
reads the same shape (``qemu-img create -f vmdk -b base.vmdk -F vmdk``).
Unallocated grains (GTE 0) read the parent through the driver's ``parent``
hook; a partial write into one copies the rest of the grain up first.

The layout is the one ``vmdk_create`` writes for a dynamic image (header,
embedded descriptor, RGD/GD, preallocated grain tables left as holes).
"""

from __future__ import annotations

import os

from blockyard.block.chain_facts import LinkFacts, ParentFacts
from blockyard.block.formats import vmdk_descriptor as vd
from blockyard.block.formats.vmdk import VmdkImage, replace_file
from blockyard.block.formats.vmdk_create import sparse_header, write_sparse_file
from blockyard.block.formats.vmdk_layout import SECTOR
from blockyard.block.formats.vmdk_open import open_vmdk
from blockyard.errors import MediaError

DEFAULT_GRAIN = 64 << 10


def _set_parent(desc: vd.Descriptor, child: str, parent: ParentFacts) -> None:
    desc.parent_cid = parent.cid if parent.cid is not None else vd.NO_PARENT_CID
    desc.parent_hint = os.path.relpath(parent.path, os.path.dirname(os.path.abspath(child)))
    desc.ddb["ddb.uuid.parent"] = parent.uuid or vd.ZERO_UUID
    desc.ddb["ddb.uuid.parentmodification"] = parent.modification or vd.ZERO_UUID


def create_child(path: str, parent: ParentFacts, *, grain_size: int = DEFAULT_GRAIN,
                 adapter_type: str = "ide", image_uuid: str | None = None) -> VmdkImage:
    """A new monolithicSparse child of the VMDK ``parent``, opened read-write (§2.5)."""
    if parent.format != "vmdk" or parent.cid is None:
        raise MediaError(f"{path}: a VMDK child needs a VMDK parent ({parent.path} is "
                         f"{parent.format}); make the child a VDI (--format vdi)")
    if grain_size < 4096 or grain_size & (grain_size - 1):
        raise MediaError(f"{path}: grain size {grain_size} is not a power of two >= 4K")
    sectors = -(-parent.size // SECTOR)
    line = vd.ExtentLine("RW", sectors, "SPARSE", os.path.basename(path))
    desc = vd.for_new_image("monolithicSparse", [line], adapter_type=adapter_type,
                            image_uuid=image_uuid)
    _set_parent(desc, path, parent)
    header = sparse_header(sectors, grain_size // SECTOR, embedded=True)
    write_sparse_file(path, header, desc.render().encode())
    return VmdkImage.open(path)


def link_of(img: VmdkImage) -> LinkFacts:
    d = img.desc
    if not d.is_child:
        return LinkFacts()
    return LinkFacts(parent_uuid=d.uuid("parent"), parent_modification=d.uuid("parentmodification"),
                     parent_cid=d.parent_cid, hints=[d.parent_hint] if d.parent_hint else [])


def relink(path: str, parent: ParentFacts) -> None:
    """Point a closed VMDK child at another parent: rewrite its descriptor only."""
    opened = open_vmdk(path, read_only=False)
    try:
        if not opened.desc.is_child:
            raise MediaError(f"{path}: not a differencing VMDK; cannot relink it")
        _set_parent(opened.desc, path, parent)
        text = opened.desc.render().encode()
        if opened.desc_area is not None:
            raw, at, room = opened.desc_area
            if len(text) > room:
                raise MediaError(f"{path}: the new descriptor needs {len(text)} bytes, the "
                                 f"embedded area holds {room}")
            os.pwrite(raw.fd, text + bytes(room - len(text)), at)
            os.fsync(raw.fd)
        elif opened.desc_path is not None:
            replace_file(opened.desc_path, text)
    finally:
        for e in opened.extents:
            if e.raw is not None and e.raw.fd >= 0:
                os.close(e.raw.fd)
