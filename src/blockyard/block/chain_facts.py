"""What a parent is, what a child says about its parent, and whether they agree.

``ParentFacts`` is what a child records when the link is made: the parent's
path, size and identity (image UUID, modification UUID for VDI parents and
VirtualBox-made VMDKs, CID for VMDK parents; image-formats.md §6.2).
``LinkFacts`` is what a child file says about its parent, read back by the
format's diff module.  ``check_link`` compares the two before a chain is
trusted:

* VDI: link UUID = parent image UUID, parent-modification UUID = parent
  modification UUID (§1.4) -- a parent written since the link was made has
  a new modification UUID;
* VMDK: parentCID = parent CID (§2.1, §2.5: VMware and libvmdk refuse a
  mismatch) and ``ddb.uuid.parent`` when both sides carry one;
* VHD: parent unique ID = parent footer unique ID (§3.5, as libvhdi).

A fact either side does not carry is not compared (a raw parent has no
UUID; a qemu-made VMDK has no ``ddb.uuid.*``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from blockyard.block.formats.base import ImageLayer
from blockyard.errors import MediaError

NO_CID = 0xFFFFFFFF


@dataclass
class ParentFacts:
    path: str  # absolute path of the parent's main file (a remote LUN: its URL)
    format: str
    size: int
    uuid: str | None = None  # image UUID (for a raw parent: the registry's)
    modification: str | None = None  # VDI / VirtualBox modification UUID
    cid: int | None = None  # VMDK content ID
    mtime: int = 0  # seconds since 1970 (VHD parent timestamp)


@dataclass
class LinkFacts:
    parent_uuid: str | None = None
    parent_modification: str | None = None
    parent_cid: int | None = None
    hints: list[str] = field(default_factory=list)  # paths: relative to the child, or absolute


def facts_of(image: ImageLayer, uuid: str | None = None) -> ParentFacts:
    """The facts a child of ``image`` records; ``uuid`` overrides (the registry's for raw)."""
    info = image.info()
    cid = None
    if info.format == "vmdk":
        try:
            cid = int(str(info.extra.get("cid")), 16)
        except ValueError:
            cid = None
    try:
        mtime = int(os.stat(image.path).st_mtime)
    except OSError:
        mtime = 0
    return ParentFacts(path=os.path.abspath(image.path), format=info.format, size=image.size,
                       uuid=(uuid or info.uuid or None), modification=info.modification_uuid,
                       cid=cid, mtime=mtime)


def remote_facts(location: str, size: int, uuid: str | None) -> ParentFacts:
    """What a child of a remote LUN records: its URL (no secrets) and the medium UUID
    derived from the LUN's identity (``block.remote.identity_uuid``)."""
    return ParentFacts(path=location, format="iscsi", size=size, uuid=uuid)


def _same(a: str | None, b: str | None) -> bool:
    return a is None or b is None or a.lower() == b.lower()


def link_problem(link: LinkFacts, parent: ParentFacts) -> str | None:
    """Why ``parent`` is not the parent the child was made on, or None."""
    if not _same(link.parent_uuid, parent.uuid):
        return (f"its parent link names UUID {link.parent_uuid}, but {parent.path} "
                f"has UUID {parent.uuid}")
    if not _same(link.parent_modification, parent.modification):
        return (f"its parent {parent.path} has changed since the link was made "
                f"(modification UUID {parent.modification}, the child expects "
                f"{link.parent_modification})")
    if (link.parent_cid is not None and parent.cid is not None
            and link.parent_cid != NO_CID and link.parent_cid != parent.cid):
        return (f"its parent {parent.path} has changed since the link was made "
                f"(CID {parent.cid:08x}, the child's parentCID is {link.parent_cid:08x})")
    return None


def check_link(child: str, link: LinkFacts, parent: ParentFacts) -> None:
    problem = link_problem(link, parent)
    if problem:
        raise MediaError(f"{child}: {problem}; restore the original parent, or discard "
                         "the child (its data is only valid over that parent)")
