"""The registry's vocabulary: media, controllers, attachments.

These are plain dataclasses, the shape rows take when they leave the
database (``registry.py``) and the shape the control API sends as JSON
(``as_dict``).  Nothing here touches a file or the database.

VirtualBox terms, mapped (architecture §1):

* a *medium* is one image file known by UUID, of a *kind* (hdd, dvd,
  floppy) and a *write mode* (VirtualBox's medium type);
* a *controller* has a fixed number of slots that follows its type
  (``CONTROLLER_SLOTS``) -- later one iSCSI target whose LUNs are the slots;
* an *attachment* puts a medium in one slot and is served as one NBD export.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("hdd", "dvd", "floppy")
WRITE_MODES = ("normal", "writethrough", "shareable", "immutable", "multiattach", "readonly")
# Modes under which one medium may sit in several slots at once (VirtualBox rule:
# a normal or write-through medium belongs to one place at a time).
MULTI_ATTACH_MODES = ("shareable", "immutable", "multiattach", "readonly")
# VirtualBox's slot counts per controller type (ports x devices).
CONTROLLER_SLOTS = {
    "ide": 4, "sata": 30, "scsi": 15, "sas": 255, "usb": 8, "nvme": 255, "virtio-scsi": 256,
}
# The format a new medium of each kind defaults to, and its default write mode.
DEFAULT_MODE = {"hdd": "normal", "dvd": "readonly", "floppy": "normal"}


@dataclass
class Medium:
    uuid: str
    kind: str
    format: str
    location: str
    parent_uuid: str | None = None
    write_mode: str = "normal"
    description: str = ""
    virtual_size: int = 0
    allocated_size: int = 0
    autoreset: bool = True
    bandwidth_group: str | None = None
    accessible: bool = True
    last_error: str = ""
    uuid_source: str = "image"  # "image": read from the file; "registry": we made it up

    @property
    def name(self) -> str:
        """The file name, VirtualBox's display name of a medium."""
        return os.path.basename(self.location)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["name"] = self.name
        return d


@dataclass
class Controller:
    name: str
    type: str
    slots: int
    host_cache: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Attachment:
    controller: str
    port: int
    medium_uuid: str
    export_name: str

    @property
    def slot(self) -> str:
        return f"{self.controller}:{self.port}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_export_name(controller: str, port: int) -> str:
    return f"{controller}-{port}"
