"""Per-format dispatch for differencing images: create a child, read or rewrite its link.

=======  =====================  ============================================
format   child of               module (image-formats.md)
=======  =====================  ============================================
vdi      any parent             ``formats.vdi_diff`` (§1.4)
vhd      any parent             ``formats.vhd_diff`` (§3.5)
vmdk     a VMDK parent          ``formats.vmdk_child`` (§2.5)
=======  =====================  ============================================

A child of a raw parent (or of any format without differencing support of
its own, e.g. Parallels, or of a remote LUN) is a VDI: ``child_format``
picks it.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from blockyard.block.chain_facts import LinkFacts, ParentFacts
from blockyard.block.formats.base import ImageLayer
from blockyard.errors import MediaError

CHILD_FORMATS = ("vdi", "vhd", "vmdk")
MODULES = {"vdi": "vdi_diff", "vhd": "vhd_diff", "vmdk": "vmdk_child"}


def _module(fmt: str) -> Any:
    if fmt in CHILD_FORMATS:
        return importlib.import_module(f"blockyard.block.formats.{MODULES[fmt]}")
    raise MediaError(f"{fmt} images cannot be differencing images "
                     f"(one of: {', '.join(CHILD_FORMATS)})")


def child_format(parent_format: str, wanted: str | None = None) -> str:
    """The child's format: the one asked for, else the parent's when it can, else VDI."""
    if wanted:
        _module(wanted)
        return wanted
    return parent_format if parent_format in CHILD_FORMATS else "vdi"


def is_child(image: ImageLayer) -> bool:
    """True for a differencing image (which needs its parent to be read)."""
    if image.format_name in ("vdi", "vhd"):
        return bool(getattr(image, "is_diff", False))
    if image.format_name == "vmdk":
        return bool(image.desc.is_child)  # type: ignore[attr-defined]
    return False


def link_of(image: ImageLayer) -> LinkFacts:
    """What a differencing image records about its parent."""
    return _module(image.format_name).link_of(image)  # type: ignore[no-any-return]


def create_child(path: str, parent: ParentFacts, fmt: str, **opts: Any) -> ImageLayer:
    """Create a differencing image of format ``fmt`` over ``parent`` (never overwrites)."""
    if os.path.lexists(path):
        raise MediaError(f"{path}: already exists")
    if parent.format == "iscsi" and fmt != "vdi":  # only a VDI can name a LUN (vdi_diff)
        raise MediaError(f"{path}: a differencing image over a remote LUN is a VDI, "
                         f"not {fmt}")
    return _module(fmt).create_child(path, parent, **opts)  # type: ignore[no-any-return]


def relink(path: str, fmt: str, parent: ParentFacts) -> None:
    """Rewrite a closed child's link so it names ``parent`` (snapshot merges)."""
    _module(fmt).relink(path, parent)
