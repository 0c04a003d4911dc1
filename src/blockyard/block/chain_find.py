"""Opening a child with its whole chain from files alone (quick mode, file commands).

Where the parent of each differencing image is looked for, in order:

1. the paths the child records, relative to the child's directory or
   absolute: VMDK ``parentFileNameHint`` (§2.5), VHD ``W2ru`` / ``W2ku``
   locators and the parent's unicode name (§3.5), the VDI comment hint
   blockyard writes (``vdi_diff``), which may be a remote LUN's
   ``iscsi://`` URL: ``open_chain_path`` logs in with the opener it is given
   (block never imports the transport) and checks the LUN's identity UUID
   against the child's link UUID;
2. for a child that names its parent by UUID (VDI link UUID, VHD parent
   unique ID, VirtualBox's ``ddb.uuid.parent``): every image in the child's
   directory and the directory above (VirtualBox keeps snapshot children in
   ``Snapshots/`` below the base), matched by image UUID (§1.4: a VDI has
   no parent file name at all).

A candidate found by path must also carry the UUID the child names, when
both have one; then ``chain_facts.check_link`` decides whether the parent
is still the one the child was made on.  Parents are opened read-only.  A
path seen twice is a cycle.  Every failure closes what was opened and is
one ``MediaError`` naming the child and saying what to do.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from blockyard.block.chain import ChainLayer
from blockyard.block.chain_facts import (
    LinkFacts,
    ParentFacts,
    check_link,
    facts_of,
    remote_facts,
)
from blockyard.block.chain_link import is_child, link_of
from blockyard.block.formats import open_image, probe
from blockyard.block.formats.base import ImageLayer
from blockyard.block.layer import Layer
from blockyard.block.raw import RawFile
from blockyard.block.remote import identity_uuid, is_remote
from blockyard.errors import BlockyardError, MediaError

MAX_DEPTH = 256
SCAN_LIMIT = 4096  # files looked at per directory
UUID_FORMATS = ("vdi", "vhd", "vmdk")


def hint_paths(child: str, hints: list[str]) -> list[str]:
    """Candidate parent paths for the hints, most trusted first, existing ones only."""
    base = os.path.dirname(os.path.abspath(child))
    out: list[str] = []
    for hint in hints:
        if is_remote(hint):  # a remote LUN's URL (vdi_diff): logged into by the opener
            out.append(hint)
            continue
        forms = [hint]
        if "\\" in hint:  # a Windows-style locator: .\base.vhd, ..\x\base.vhd
            forms.append(hint.replace("\\", "/").removeprefix("./"))
        for form in forms:
            path = form if os.path.isabs(form) else os.path.join(base, form)
            path = os.path.normpath(path)
            if os.path.isfile(path) and path not in out:
                out.append(path)
    return out


def image_uuid(path: str) -> str | None:
    """The image UUID a VDI, VHD or VMDK file carries (None for others or on error)."""
    try:
        fmt = probe(path)
        if fmt not in UUID_FORMATS:
            return None
        img = open_image(path, read_only=True, fmt=fmt)
    except (BlockyardError, OSError):
        return None
    try:
        return img.info().uuid
    finally:
        close_now(img)


def close_now(layer: Layer) -> None:
    """Close an image's (or a chain's) files without an event loop.

    For images opened read-only, or read-write but not yet written (a chain
    that failed to open): nothing is held in memory that must be written back.
    """
    if isinstance(layer, ChainLayer):
        for img in layer.images:
            close_now(img)
        return
    if not isinstance(layer, ImageLayer) and layer.inner is not None:
        close_now(layer.inner)  # a filter over the image(s)
        return
    files: list[RawFile] = []
    if isinstance(layer, RawFile):
        files.append(layer)
    for attr in ("file", "raw"):
        f = getattr(layer, attr, None)
        if isinstance(f, RawFile):
            files.append(f)
    for e in getattr(layer, "extents_", None) or []:
        raw = getattr(e, "raw", None)
        if isinstance(raw, RawFile):
            files.append(raw)
    for f in files:
        if f.fd >= 0:
            fd, f.fd = f.fd, -1
            f.sendfile_fd = None
            f.sync_pread = None
            os.close(fd)


def scan_for_uuid(child: str, wanted: str) -> str | None:
    """An image with UUID ``wanted`` beside the child or one directory up."""
    here = os.path.dirname(os.path.abspath(child))
    for directory in (here, os.path.dirname(here)):
        try:
            names = sorted(os.listdir(directory))[:SCAN_LIMIT]
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            if path == os.path.abspath(child) or not os.path.isfile(path):
                continue
            found = image_uuid(path)
            if found is not None and found.lower() == wanted.lower():
                return path
    return None


def find_parent(child: str, link: LinkFacts) -> str:
    """The parent file of ``child`` (see the module docstring), or a MediaError.

    A file at a recorded path that carries another UUID is returned only when
    no image with the right UUID is found: ``check_link`` then says so.
    """
    other: str | None = None
    for path in hint_paths(child, link.hints):
        if link.parent_uuid is None or is_remote(path):
            return path  # a LUN's identity is checked once it is opened
        found = image_uuid(path)
        if found is None or found.lower() == link.parent_uuid.lower():
            return path  # a parent without a UUID of its own (raw) cannot disagree
        other = other or path
    if link.parent_uuid:
        scanned = scan_for_uuid(child, link.parent_uuid)
        if scanned is not None:
            return scanned
    if other is not None:
        return other
    named = " or ".join([*(repr(h) for h in link.hints),
                         *([f"UUID {link.parent_uuid}"] if link.parent_uuid else [])])
    raise MediaError(f"{child}: its parent ({named or 'unnamed'}) is missing or was moved; "
                     "put it back beside the child, or register both with "
                     "'blockyard medium add'")


OpenRemote = Callable[[str], Awaitable[Layer]]


@dataclass
class RemoteParent:
    """The bottom of a file chain is a remote LUN: who names it and how."""

    child: str  # the image whose parent the LUN is
    url: str
    link: LinkFacts


def open_files(path: str, *, read_only: bool = False,
               fmt: str | None = None) -> tuple[list[ImageLayer], RemoteParent | None]:
    """``path`` and every file parent below it (read-only), top first; and the remote
    LUN the last one names as its parent, if it does (opened by the caller)."""
    top = open_image(path, read_only=read_only, fmt=fmt)
    images = [top]
    seen = {os.path.realpath(path)}
    try:
        cur = top
        while is_child(cur):
            if len(images) > MAX_DEPTH:
                raise MediaError(f"{path}: chain deeper than {MAX_DEPTH} images")
            link = link_of(cur)
            ppath = find_parent(cur.path, link)
            if is_remote(ppath):
                return images, RemoteParent(cur.path, ppath, link)
            if os.path.realpath(ppath) in seen:
                raise MediaError(f"{cur.path}: its parent {ppath} is already in the chain "
                                 "(a cycle); relink or discard the child")
            seen.add(os.path.realpath(ppath))
            parent = open_image(ppath, read_only=True)
            images.append(parent)
            check_link(cur.path, link, facts_of(parent))
            cur = parent
    except BaseException:
        for img in images:
            close_now(img)
        raise
    return images, None


def open_chain_file(path: str, *, read_only: bool = False, fmt: str | None = None) -> Layer:
    """``path`` (format ``fmt``, else probed) opened with every parent below it read-only;
    a plain image when it has none.  A chain over a remote LUN needs ``open_chain_path``."""
    images, remote = open_files(path, read_only=read_only, fmt=fmt)
    if remote is not None:
        for img in images:
            close_now(img)
        raise MediaError(f"{remote.child}: its parent is the remote LUN {remote.url}, which "
                         "only a command that logs in can open")
    return images[0] if len(images) == 1 else ChainLayer(images)


async def open_chain_path(path: str, *, read_only: bool = False, fmt: str | None = None,
                          open_remote: OpenRemote | None = None) -> Layer:
    """``open_chain_file``, and when the chain ends at a remote LUN, the LUN opened with
    ``open_remote(url)`` (read-only) below it; the chain owns and closes it."""
    if open_remote is None:
        return open_chain_file(path, read_only=read_only, fmt=fmt)
    images, remote = open_files(path, read_only=read_only, fmt=fmt)
    if remote is None:
        return images[0] if len(images) == 1 else ChainLayer(images)
    try:
        base = await open_remote(remote.url)
    except BaseException as exc:
        for img in images:
            close_now(img)
        if isinstance(exc, BlockyardError):
            raise MediaError(f"{remote.child}: its parent cannot be opened: {exc}") from None
        raise
    try:
        check_link(remote.child, remote.link, lun_facts(remote.url, base))
    except BaseException:
        for img in images:
            close_now(img)
        await base.close()
        raise
    return ChainLayer(images, below=base, owns_below=True)


def lun_facts(url: str, lun: Layer) -> ParentFacts:
    """The facts of an opened remote LUN as a parent (its identity gives the UUID)."""
    identity = getattr(lun, "uuid", None)
    return remote_facts(url, lun.size, identity_uuid(identity) if identity else None)
