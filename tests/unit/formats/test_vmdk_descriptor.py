"""The VMDK text descriptor: parsing, rendering, edits (image-formats.md §2.1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockyard.block.formats import vmdk_descriptor as vd
from blockyard.errors import MediaError

QEMU_FLAT = """# Disk DescriptorFile
version=1
CID=e88ffbca
parentCID=ffffffff
createType="monolithicFlat"

# Extent description
RW 131072 FLAT "monolithicFlat-flat.vmdk" 0

# The Disk Data Base
#DDB

ddb.virtualHWVersion = "4"
ddb.geometry.cylinders = "130"
ddb.geometry.heads = "16"
ddb.geometry.sectors = "63"
ddb.adapterType = "ide"
ddb.toolsVersion = "2147483647"
"""

VBOX_CHILD = """# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=0a1b2c3d
parentCID=11223344
createType="monolithicSparse"
parentFileNameHint="../base disk.vmdk"
isNativeSnapshot="no"

# Extent description
RW 4192256 SPARSE "child.vmdk"
RDONLY 1000 ZERO
RW 20 VMFS "raw.bin"

#DDB
ddb.uuid.image="5f3e4d1c-0000-4000-8000-000000000001"
ddb.uuid.parent="5f3e4d1c-0000-4000-8000-000000000002"
ddb.uuid.modification = "00000000-0000-0000-0000-000000000000"
"""


def test_parse_qemu_flat_descriptor() -> None:
    d = vd.parse(QEMU_FLAT, "m.vmdk")
    assert (d.version, d.cid, d.parent_cid, d.create_type) == (1, 0xE88FFBCA, 0xFFFFFFFF,
                                                             "monolithicFlat")
    assert d.extents == [vd.ExtentLine("RW", 131072, "FLAT", "monolithicFlat-flat.vmdk", 0)]
    assert d.geometry() == (130, 16, 63)
    assert d.ddb["ddb.toolsVersion"] == "2147483647"
    assert not d.is_child and d.sectors == 131072


def test_parse_child_with_extras_and_round_trip() -> None:
    d = vd.parse(VBOX_CHILD, "c.vmdk")
    assert d.is_child and d.parent_hint == "../base disk.vmdk" and d.parent_cid == 0x11223344
    assert [e.kind for e in d.extents] == ["SPARSE", "ZERO", "FLAT"]  # VMFS is flat
    assert d.extents[1].access == "RDONLY" and d.extents[1].filename is None
    assert d.uuid("image") == "5f3e4d1c-0000-4000-8000-000000000001"
    assert d.uuid("modification") is None  # the zero UUID means "not set"
    again = vd.parse(d.render(), "c.vmdk")
    assert again == d  # unknown keys (encoding, isNativeSnapshot) survive a rewrite


def test_touch_changes_cid_and_modification_uuid() -> None:
    d = vd.for_new_image("monolithicSparse", [vd.ExtentLine("RW", 2048, "SPARSE", "x.vmdk")])
    cid, mod, image = d.cid, d.uuid("modification"), d.uuid("image")
    d.touch()
    assert d.cid != cid and d.cid != vd.NO_PARENT_CID
    assert d.uuid("modification") != mod and d.uuid("image") == image


def test_new_descriptor_geometry_like_qemu() -> None:
    d = vd.for_new_image("monolithicSparse", [vd.ExtentLine("RW", 131072, "SPARSE", "x")])
    assert d.geometry() == (130, 16, 63)
    d = vd.for_new_image("monolithicSparse", [vd.ExtentLine("RW", 131072, "SPARSE", "x")],
                         adapter_type="lsilogic")
    assert d.geometry() == (8, 255, 63)


@pytest.mark.parametrize("text, problem", [
    ("CID=1\ncreateType=\"x\"\nRW 1 ZERO\n", "version"),
    ("version=4\nCID=1\ncreateType=\"x\"\nRW 1 ZERO\n", "version 4"),
    ("version=1\ncreateType=\"x\"\nRW 1 ZERO\n", "no CID"),
    ("version=1\nCID=zz\ncreateType=\"x\"\nRW 1 ZERO\n", "not hexadecimal"),
    ("version=1\nCID=1ffffffff\ncreateType=\"x\"\nRW 1 ZERO\n", "32 bits"),
    ("version=1\nCID=1\nRW 1 ZERO\n", "createType"),
    ("version=1\nCID=1\ncreateType=\"x\"\n", "no extents"),
    ("version=1\nCID=1\ncreateType=\"x\"\nRW 1 BOGUS \"f\"\n", "unknown extent type"),
    ("version=1\nCID=1\ncreateType=\"x\"\nRW 1 VMFSSPARSE \"f\"\n", "not supported"),
    ("version=1\nCID=1\ncreateType=\"x\"\nRW 1 FLAT \"f\"\n", "without an offset"),
    ("version=1\nCID=1\ncreateType=\"x\"\nRW 1 SPARSE \"f\" 7\n", "only FLAT"),
    ("version=1\nCID=1\ncreateType=\"x\"\nRW 1 SPARSE\n", "without a file"),
    ("version=1\nCID=1\ncreateType=\"x\"\nRW 0 ZERO\n", "0 sectors"),
    ("version=1\nCID=1\ncreateType=\"x\"\nRW 1 ZERO \"f\"\n", "names no file"),
    ("version=1\nCID=1\ncreateType=\"x\"\nthis is not a line\n", "not understood"),
])
def test_bad_descriptors_name_file_and_problem(text: str, problem: str) -> None:
    with pytest.raises(MediaError) as info:
        vd.parse(text, "/images/bad.vmdk")
    assert str(info.value).startswith("/images/bad.vmdk: ") and problem in str(info.value)


def test_decode_stops_at_nul_and_rejects_non_utf8() -> None:
    assert vd.decode(b"version=1\n\0\0garbage", "x") == "version=1\n"
    with pytest.raises(MediaError, match="not UTF-8"):
        vd.decode(b"version=1\n\xff\xfe", "x")


def test_probe_text() -> None:
    assert vd.looks_like_descriptor(QEMU_FLAT.encode())
    assert vd.looks_like_descriptor(b"\n  \r\n# c\nversion=2\r\n")
    assert not vd.looks_like_descriptor(b"createType=\"x\"\nversion=1\n")
    assert not vd.looks_like_descriptor(b"\x00" * 512)


names = st.text(st.characters(blacklist_characters='"\n\r\0', blacklist_categories=("Cs",)),
                min_size=1, max_size=20).filter(lambda s: s.strip() == s)
lines = st.builds(
    lambda kind, n, name, off: vd.ExtentLine("RW", n, kind, None if kind == "ZERO" else name,
                                              off if kind == "FLAT" else 0),
    st.sampled_from(["FLAT", "SPARSE", "ZERO"]), st.integers(1, 2**40), names,
    st.integers(0, 2**32))


@given(st.lists(lines, min_size=1, max_size=5), st.integers(0, 2**32 - 1),
       st.integers(0, 2**32 - 1), st.none() | names)
@settings(max_examples=150, deadline=None)
def test_render_parse_round_trip(extents: list[vd.ExtentLine], cid: int, pcid: int,
                                 hint: str | None) -> None:
    d = vd.Descriptor("custom", extents, cid=cid, parent_cid=pcid, parent_hint=hint,
                      ddb={"ddb.adapterType": "ide"})
    assert vd.parse(d.render(), "x") == d


@given(st.binary(max_size=64), st.integers(0, len(QEMU_FLAT)), st.integers(0, 40))
@settings(max_examples=300, deadline=None)
def test_fuzz_mutated_descriptor_only_media_errors(junk: bytes, at: int, cut: int) -> None:
    raw = QEMU_FLAT.encode()
    mutated = raw[:at] + junk + raw[at + cut:]
    try:
        d = vd.parse(vd.decode(mutated, "f.vmdk"), "f.vmdk")
    except MediaError as exc:
        assert str(exc).startswith("f.vmdk: ")
    else:
        assert d.extents and d.version in (1, 2, 3)
