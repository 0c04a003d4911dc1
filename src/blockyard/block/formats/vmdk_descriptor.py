"""The VMDK text descriptor: parse, edit and render (image-formats.md §2.1).

A descriptor is a small text file (or the text embedded in a sparse extent
at the header's descriptor offset) with three parts::

    # Disk DescriptorFile          header keys: version, CID, parentCID,
    version=1                      createType, parentFileNameHint, encoding
    CID=5321206c
    parentCID=ffffffff
    createType="monolithicSparse"

    # Extent description           ACCESS SIZE_IN_SECTORS TYPE ["FILE" [START]]
    RW 131072 SPARSE "m.vmdk"

    # The Disk Data Base           ddb.key = "value"
    #DDB
    ddb.adapterType = "ide"

Parsing is strict about what we rely on (version, CID, extents, numbers) and
keeps every key it does not know, in order, so a rewrite (a new CID on the
first write, a resize) loses nothing another tool put there.
"""

from __future__ import annotations

import re
import secrets
import uuid as uuidlib
from dataclasses import dataclass, field

from blockyard.errors import MediaError

NO_PARENT_CID = 0xFFFFFFFF
MAX_DESCRIPTOR_BYTES = 1 << 20  # qemu reads at most 1 MiB of descriptor text
EMBEDDED_SECTORS = 20  # qemu and VirtualBox reserve 20 sectors (§2.2)
SUPPORTED_KINDS = ("FLAT", "VMFS", "SPARSE", "ZERO")
KNOWN_KINDS = SUPPORTED_KINDS + ("VMFSSPARSE", "VMFSRDM", "VMFSRAW", "SESPARSE")
ACCESS_MODES = ("RW", "RDONLY", "NOACCESS")
ZERO_UUID = "00000000-0000-0000-0000-000000000000"

# createType <-> the variant names of `medium create --variant`
VARIANT_OF_TYPE = {
    "monolithicSparse": "dynamic",
    "monolithicFlat": "fixed",
    "twoGbMaxExtentSparse": "split2g",
    "twoGbMaxExtentFlat": "split2g-fixed",
    "streamOptimized": "stream",
}
TYPE_OF_VARIANT = {v: k for k, v in VARIANT_OF_TYPE.items()}

_EXTENT_RE = re.compile(
    r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Za-z]+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$')
_KEY_RE = re.compile(r"^([A-Za-z_][\w.]*)\s*=\s*(.*?)\s*$")
_HEADER_KEYS = ("version", "CID", "parentCID", "createType", "parentFileNameHint")


@dataclass
class ExtentLine:
    """One line of the extent description (§2.1)."""

    access: str
    sectors: int
    kind: str
    filename: str | None = None
    offset: int = 0  # start sector inside a FLAT file

    def render(self) -> str:
        text = f"{self.access} {self.sectors} {self.kind}"
        if self.filename is not None:
            text += f' "{self.filename}"'
            if self.kind == "FLAT":
                text += f" {self.offset}"
        return text


@dataclass
class Descriptor:
    create_type: str
    extents: list[ExtentLine]
    cid: int = field(default_factory=lambda: new_cid())
    parent_cid: int = NO_PARENT_CID
    version: int = 1
    parent_hint: str | None = None
    other: dict[str, str] = field(default_factory=dict)  # unknown header keys, raw values
    ddb: dict[str, str] = field(default_factory=dict)  # unquoted values

    @property
    def sectors(self) -> int:
        return sum(e.sectors for e in self.extents)

    @property
    def is_child(self) -> bool:
        return self.parent_cid != NO_PARENT_CID or self.parent_hint is not None

    def uuid(self, which: str) -> str | None:
        """VirtualBox's ``ddb.uuid.<which>`` (image, modification, parent, ...)."""
        value = self.ddb.get(f"ddb.uuid.{which}")
        if not value:
            return None
        try:
            text = str(uuidlib.UUID(value))
        except ValueError:
            return None
        return None if text == ZERO_UUID else text

    def geometry(self) -> tuple[int, int, int] | None:
        try:
            return (int(self.ddb["ddb.geometry.cylinders"]), int(self.ddb["ddb.geometry.heads"]),
                    int(self.ddb["ddb.geometry.sectors"]))
        except (KeyError, ValueError):
            return None

    def set_geometry(self, sectors: int) -> None:
        """Physical CHS as qemu computes it (image-formats.md §6.1)."""
        scsi = self.ddb.get("ddb.adapterType", "ide") != "ide"
        heads = 255 if scsi else 16
        self.ddb["ddb.geometry.cylinders"] = str(min(16383, sectors // (heads * 63)))
        self.ddb["ddb.geometry.heads"] = str(heads)
        self.ddb["ddb.geometry.sectors"] = "63"

    def touch(self) -> None:
        """A content change: new CID, new VirtualBox modification UUID (§2.1)."""
        old = self.cid
        while self.cid in (old, NO_PARENT_CID):
            self.cid = new_cid()
        if "ddb.uuid.modification" in self.ddb:
            self.ddb["ddb.uuid.modification"] = str(uuidlib.uuid4())

    def render(self) -> str:
        lines = ["# Disk DescriptorFile", f"version={self.version}"]
        if "encoding" in self.other:
            lines.append(f"encoding={self.other['encoding']}")
        lines += [f"CID={self.cid:08x}", f"parentCID={self.parent_cid:08x}"]
        lines += [f"{k}={v}" for k, v in self.other.items() if k != "encoding"]
        lines.append(f'createType="{self.create_type}"')
        if self.parent_hint is not None:
            lines.append(f'parentFileNameHint="{self.parent_hint}"')
        lines += ["", "# Extent description"]
        lines += [e.render() for e in self.extents]
        lines += ["", "# The Disk Data Base", "#DDB", ""]
        lines += [f'{k} = "{v}"' for k, v in self.ddb.items()]
        return "\n".join(lines) + "\n"


def new_cid() -> int:
    cid = NO_PARENT_CID
    while cid == NO_PARENT_CID:
        cid = secrets.randbits(32)
    return cid


def looks_like_descriptor(head: bytes) -> bool:
    """The text probe qemu uses: comments and blank lines, then ``version=N``."""
    for raw in head.split(b"\n")[:64]:
        line = raw.strip(b" \t\r")
        if not line or line.startswith(b"#"):
            continue
        return line in (b"version=1", b"version=2", b"version=3")
    return False


def decode(raw: bytes, where: str) -> str:
    """Descriptor bytes (NUL padded when embedded) to text."""
    raw = raw.split(b"\0", 1)[0]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MediaError(f"{where}: descriptor is not UTF-8 text (byte {exc.start})") from None


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _hex32(value: str, key: str, where: str) -> int:
    try:
        number = int(_unquote(value), 16)
    except ValueError:
        raise MediaError(f"{where}: descriptor {key}={value!r} is not hexadecimal") from None
    if not 0 <= number <= 0xFFFFFFFF:
        raise MediaError(f"{where}: descriptor {key}={value!r} does not fit 32 bits")
    return number


def _extent(m: re.Match[str], lineno: int, where: str) -> ExtentLine:
    access, sectors, kind, name, offset = m.groups()
    kind = kind.upper()
    if kind not in KNOWN_KINDS:
        raise MediaError(f"{where}: descriptor line {lineno}: unknown extent type {kind}")
    if kind not in SUPPORTED_KINDS:
        raise MediaError(f"{where}: extent type {kind} (line {lineno}) is not supported")
    if kind == "ZERO" and name is not None:
        raise MediaError(f"{where}: descriptor line {lineno}: a ZERO extent names no file")
    if kind != "ZERO" and not name:
        raise MediaError(f"{where}: descriptor line {lineno}: {kind} extent without a file")
    if kind == "FLAT" and offset is None:
        raise MediaError(f"{where}: descriptor line {lineno}: FLAT extent without an offset")
    if kind != "FLAT" and offset is not None:
        raise MediaError(f"{where}: descriptor line {lineno}: only FLAT extents take an offset")
    if int(sectors) <= 0:
        raise MediaError(f"{where}: descriptor line {lineno}: extent of {sectors} sectors")
    return ExtentLine(access, int(sectors), "FLAT" if kind == "VMFS" else kind, name,
                      int(offset or 0))


def parse(text: str, where: str) -> Descriptor:
    """Parse descriptor text; ``where`` names the file in error messages."""
    header: dict[str, str] = {}
    other: dict[str, str] = {}
    ddb: dict[str, str] = {}
    extents: list[ExtentLine] = []
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip(" \t\r")
        if not line or line.startswith("#"):
            continue
        m = _EXTENT_RE.match(line)
        if m:
            extents.append(_extent(m, lineno, where))
            continue
        kv = _KEY_RE.match(line)
        if not kv:
            raise MediaError(f"{where}: descriptor line {lineno} not understood: {line[:60]!r}")
        key, value = kv.groups()
        if key.startswith("ddb."):
            ddb[key] = _unquote(value)
        elif key in _HEADER_KEYS:
            header[key] = value
        else:
            other[key] = value
    return _build(header, other, ddb, extents, where)


def _build(header: dict[str, str], other: dict[str, str], ddb: dict[str, str],
           extents: list[ExtentLine], where: str) -> Descriptor:
    version = _unquote(header.get("version", ""))
    if version not in ("1", "2", "3"):
        raise MediaError(f"{where}: descriptor version {version or '(missing)'} not supported")
    if "CID" not in header:
        raise MediaError(f"{where}: descriptor has no CID")
    if "createType" not in header:
        raise MediaError(f"{where}: descriptor has no createType")
    if not extents:
        raise MediaError(f"{where}: descriptor lists no extents")
    hint = header.get("parentFileNameHint")
    return Descriptor(
        create_type=_unquote(header["createType"]), extents=extents,
        cid=_hex32(header["CID"], "CID", where),
        parent_cid=_hex32(header.get("parentCID", "ffffffff"), "parentCID", where),
        version=int(version), parent_hint=None if hint is None else _unquote(hint),
        other=other, ddb=ddb)


def for_new_image(create_type: str, extents: list[ExtentLine], *, adapter_type: str = "ide",
                  image_uuid: str | None = None, hw_version: str = "4") -> Descriptor:
    """A fresh descriptor with the DDB keys qemu and VirtualBox write (§2.1)."""
    desc = Descriptor(create_type, extents)
    desc.ddb["ddb.virtualHWVersion"] = hw_version
    desc.ddb["ddb.adapterType"] = adapter_type
    desc.set_geometry(desc.sectors)
    desc.ddb["ddb.uuid.image"] = str(uuidlib.UUID(image_uuid) if image_uuid else uuidlib.uuid4())
    desc.ddb["ddb.uuid.modification"] = str(uuidlib.uuid4())
    desc.ddb["ddb.uuid.parent"] = ZERO_UUID
    desc.ddb["ddb.uuid.parentmodification"] = ZERO_UUID
    return desc
