"""The configuration's shape: the typed result and the schema every table is checked against.

``SCHEMA`` maps each section to (array of tables?, keys, class); each key has
a converter that returns the value or raises ``ValueError`` with the
complaint, and a default (``REQ`` when the key is required).  ``config.py``
walks a parsed file against it and cross-checks what it built.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from blockyard.errors import ConfigError
from blockyard.media.model import CONTROLLER_SLOTS, KINDS, WRITE_MODES
from blockyard.util.limits import parse_limit
from blockyard.util.units import parse_size

LOG_LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("raw", "vdi", "vhd", "vmdk", "parallels", "iso")


# ---- typed result ----------------------------------------------------------------------------
@dataclass
class ServerSection:
    state_dir: str = ""
    log_level: str = "info"
    log_file: str = ""


@dataclass
class NbdSection:
    listen: list[str] = field(default_factory=lambda: ["127.0.0.1:10809"])


@dataclass
class ControlSection:
    socket: str = "control.sock"
    listen: str = ""
    token_file: str = ""


@dataclass
class IscsiSection:
    listen: list[str] = field(default_factory=list)


@dataclass
class TargetDecl:
    """A controller's iSCSI target: its name, who may log in, and how they authenticate."""

    controller: str
    iqn: str = ""  # default iqn.2026-11.org.blockyard:<controller>
    alias: str = ""
    acl: list[str] = field(default_factory=list)  # empty: every initiator
    chap_user: str = ""
    chap_secret: str = field(default="", repr=False)
    chap_secret_file: str = ""
    mutual_user: str = ""
    mutual_secret: str = field(default="", repr=False)
    mutual_secret_file: str = ""


@dataclass
class BandwidthGroupDecl:
    name: str
    limit: int  # bytes per second, 0 = unlimited


@dataclass
class ControllerDecl:
    name: str
    type: str
    host_cache: bool = True


@dataclass
class AttachmentDecl:
    controller: str
    port: int
    medium: str
    name: str = ""
    format: str | None = None
    create_size: int = 0
    description: str = ""
    kind: str | None = None
    write_mode: str | None = None
    variant: str = "dynamic"
    bandwidth_group: str = ""


@dataclass
class ExportDecl:
    name: str
    path: str
    format: str | None = None
    create_size: int = 0
    description: str = ""
    read_only: bool = False


@dataclass
class Config:
    source: str = "<embedded>"
    server: ServerSection = field(default_factory=ServerSection)
    nbd: NbdSection = field(default_factory=NbdSection)
    control: ControlSection = field(default_factory=ControlSection)
    iscsi: IscsiSection = field(default_factory=IscsiSection)
    targets: list[TargetDecl] = field(default_factory=list)
    bandwidth_groups: list[BandwidthGroupDecl] = field(default_factory=list)
    controllers: list[ControllerDecl] = field(default_factory=list)
    attachments: list[AttachmentDecl] = field(default_factory=list)
    exports: list[ExportDecl] = field(default_factory=list)


# ---- converters: value -> value, or ValueError(complaint) ------------------------------------
def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"must be a string, not {type(v).__name__}")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false, not {v!r}")
    return v


def _port(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError(f"must be a port number (0 or more), not {v!r}")
    return v


def _size(v: Any) -> int:
    try:
        return parse_size(v if isinstance(v, int | str) and not isinstance(v, bool) else "?")
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _choice(*allowed: str) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        if v not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, not {v!r}")
        return str(v)
    return conv


def _address(v: Any) -> str:
    from blockyard.server import parse_address

    try:
        parse_address(_str(v), 0)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return str(v)


def _addresses(v: Any) -> list[str]:
    if not isinstance(v, list):
        raise ValueError("must be a list of \"HOST:PORT\" strings")
    return [_address(x) for x in v]


def _optional_address(v: Any) -> str:
    return _address(v) if v != "" else ""


def _strings(v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise ValueError("must be a list of non-empty strings")
    return list(v)


_ISCSI_NAME = re.compile(r"iqn\.\d{4}-\d{2}\.\S+|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]+")


def _iqn(v: Any) -> str:
    text = _str(v)
    if text and not _ISCSI_NAME.fullmatch(text):
        raise ValueError(f"{text!r} is not an iSCSI name (iqn.YYYY-MM.domain[:name])")
    return text


def _limit(v: Any) -> int:
    try:
        return parse_limit(v if isinstance(v, int | str) and not isinstance(v, bool) else "?")
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


REQ = object()  # marks a required key
Spec = dict[str, tuple[Callable[[Any], Any], Any]]
SCHEMA: dict[str, tuple[bool, Spec, type]] = {  # name -> (array of tables?, keys, class)
    "server": (False, {"state_dir": (_str, ""), "log_level": (_choice(*LOG_LEVELS), "info"),
                       "log_file": (_str, "")}, ServerSection),
    "nbd": (False, {"listen": (_addresses, ["127.0.0.1:10809"])}, NbdSection),
    "control": (False, {"socket": (_str, "control.sock"), "listen": (_optional_address, ""),
                        "token_file": (_str, "")}, ControlSection),
    "iscsi": (False, {"listen": (_addresses, [])}, IscsiSection),
    "target": (True, {
        "controller": (_str, REQ), "iqn": (_iqn, ""), "alias": (_str, ""),
        "acl": (_strings, []),
        "chap_user": (_str, ""), "chap_secret": (_str, ""), "chap_secret_file": (_str, ""),
        "mutual_user": (_str, ""), "mutual_secret": (_str, ""),
        "mutual_secret_file": (_str, "")}, TargetDecl),
    "bandwidth_group": (True, {"name": (_str, REQ), "limit": (_limit, REQ)},
                        BandwidthGroupDecl),
    "controller": (True, {"name": (_str, REQ), "type": (_choice(*CONTROLLER_SLOTS), REQ),
                          "host_cache": (_bool, True)}, ControllerDecl),
    "attachment": (True, {
        "controller": (_str, REQ), "port": (_port, REQ), "medium": (_str, REQ),
        "name": (_str, ""), "format": (_choice(*FORMATS), None), "create_size": (_size, 0),
        "description": (_str, ""), "kind": (_choice(*KINDS), None),
        "write_mode": (_choice(*WRITE_MODES), None),
        "variant": (_choice("dynamic", "fixed"), "dynamic"),
        "bandwidth_group": (_str, "")}, AttachmentDecl),
    "export": (True, {
        "name": (_str, REQ), "path": (_str, REQ), "format": (_choice(*FORMATS), None),
        "create_size": (_size, 0), "description": (_str, ""), "read_only": (_bool, False)},
        ExportDecl),
}
SECTION_FIELD = {"controller": "controllers", "attachment": "attachments", "export": "exports",
                 "target": "targets", "bandwidth_group": "bandwidth_groups"}
