"""VMDK and Parallels against qemu-img / qemu-io 7.2, both directions.

qemu -> us: qemu makes every VMDK subformat it can (and Parallels, whose ext
magic it writes; the v1 magic is covered by qemu writing into a v1 image we
created), qemu-io writes a pattern across grain/cluster boundaries, the last
sector and ``write -z``; we read everything and compare with ``qemu-img
convert -O raw``, and our extents map with ``qemu-img map``.

us -> qemu: every variant we create gets random writes, zeroes and trims
through our driver; after close ``qemu-img check`` must be clean and
``qemu-img compare`` must find it identical to the expected raw image.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest

from blockyard.block.formats import create_image, open_image
from blockyard.block.formats.base import ImageLayer
from blockyard.block.formats.vmdk import VmdkImage

pytestmark = [pytest.mark.interop, pytest.mark.peers("qemu-img", "qemu-io")]
MiB = 1 << 20
SIZE = 8 * MiB


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def qemu_io(fmt: str, path: Path, size: int) -> None:
    cmds = ["write -P 0xa1 0 512", "write -P 0xa2 65024 1024",  # grain 0/1 boundary
            "write -P 0xa3 1048064 1024",  # 1 MiB: cluster boundary
            "write -P 0xa4 3M 200k", "write -z 3136k 64k",  # a whole grain of zeros
            "write -z 3300k 10k", f"write -P 0xa5 {size - 512} 512"]  # partial; last sector
    args = ["qemu-io", "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    r = run(*args, str(path))
    assert r.returncode == 0 and "error" not in r.stdout.lower() + r.stderr.lower(), r


async def compare_with_qemu(img: ImageLayer, path: Path, fmt: str, tmp: Path) -> None:
    ref = tmp / "ref.raw"
    r = run("qemu-img", "convert", "-f", fmt, "-O", "raw", str(path), str(ref))
    assert r.returncode == 0, r.stderr
    assert ref.stat().st_size == img.size
    with open(ref, "rb") as f:
        for off in range(0, img.size, 4 * MiB):
            n = min(4 * MiB, img.size - off)
            assert bytes(await img.pread(off, n)) == f.read(n), f"differs in {off}+{n}"
    qmap = json.loads(run("qemu-img", "map", "-f", fmt, "--output=json", str(path)).stdout)
    ours = await img.extents(0, img.size)
    pos, zero_ranges = 0, []
    for e in ours:
        if e.flags & 2:
            zero_ranges.append((pos, pos + e.length))
        pos += e.length
    for m in qmap:  # wherever qemu has data that is not zero, we may not claim zeros
        if m["data"] and not m.get("zero"):
            a, b = m["start"], m["start"] + m["length"]
            for za, zb in zero_ranges:
                if za < b and a < zb:
                    assert not any(await img.pread(max(a, za), min(b, zb) - max(a, za)))


VMDK_SUBFORMATS = ["monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
                   "twoGbMaxExtentFlat"]


@pytest.mark.parametrize("subformat", VMDK_SUBFORMATS + ["monolithicSparse+zeroed_grain"])
async def test_qemu_made_vmdk_reads_identically(tmp_path: Path, subformat: str) -> None:
    p = tmp_path / "q.vmdk"
    sub, _, extra = subformat.partition("+")
    opts = f"subformat={sub}" + (",zeroed_grain=on" if extra else "")
    r = run("qemu-img", "create", "-q", "-f", "vmdk", "-o", opts, str(p), str(SIZE))
    assert r.returncode == 0
    qemu_io("vmdk", p, SIZE)
    img = open_image(p, read_only=True)
    assert isinstance(img, VmdkImage)
    assert img.info().variant == {"monolithicSparse": "dynamic", "monolithicFlat": "fixed",
                                  "twoGbMaxExtentSparse": "split2g",
                                  "twoGbMaxExtentFlat": "split2g-fixed"}[sub]
    if extra:
        assert img.info().extra["zeroed_grain"]
        assert (await img.extents(3136 << 10, 64 << 10))[0].flags == 2  # GTE 1
    await compare_with_qemu(img, p, "vmdk", tmp_path)
    report = img.check()
    assert not report.errors
    # qemu's write -z over an allocated grain sets GTE 1 and leaks the grain: we see it
    assert bool(report.leaks) == bool(extra), report.leaks
    await img.close()


async def test_qemu_made_stream_optimized(tmp_path: Path) -> None:
    src = tmp_path / "src.vmdk"
    assert run("qemu-img", "create", "-q", "-f", "vmdk", str(src), str(SIZE)).returncode == 0
    qemu_io("vmdk", src, SIZE)
    p = tmp_path / "s.vmdk"
    r = run("qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized",
            str(src), str(p))
    assert r.returncode == 0, r.stderr
    img = open_image(p)
    assert img.read_only and img.info().variant == "stream"
    await compare_with_qemu(img, p, "vmdk", tmp_path)
    assert img.check().clean
    await img.close()


async def test_qemu_split_at_two_gib_and_child(tmp_path: Path) -> None:
    base = tmp_path / "base.vmdk"
    size = 2 * 1024 * MiB + 4 * MiB  # qemu cuts twoGbMaxExtent at exactly 2 GiB
    assert run("qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse",
               str(base), str(size)).returncode == 0
    edge = 2048 * MiB
    r = run("qemu-io", "-f", "vmdk", "-c", f"write -P 0x5b {edge - 4096} 8192", "-c",
            f"write -P 0x5c {size - 512} 512", str(base))
    assert r.returncode == 0
    child = tmp_path / "child.vmdk"
    assert run("qemu-img", "create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk",
               str(child)).returncode == 0
    assert run("qemu-io", "-f", "vmdk", "-c", f"write -P 0x6c {edge} 100",
               str(child)).returncode == 0
    parent = open_image(base, read_only=True)
    assert bytes(await parent.pread(edge - 4096, 8192)) == b"\x5b" * 8192
    img = open_image(child, read_only=True)
    assert isinstance(img, VmdkImage) and img.info().variant == "diff"
    assert img.info().parent_hint == "base.vmdk"
    img.parent = parent
    got = bytes(await img.pread(edge - 4096, 8192))
    assert got == b"\x5b" * 4096 + b"\x6c" * 100 + b"\x5b" * 3996
    assert bytes(await img.pread(size - 512, 512)) == b"\x5c" * 512
    assert not img.check().errors  # parentCID matches the parent's CID
    await img.close()
    await parent.close()


@pytest.mark.parametrize("magic", ["ext", "v1"])
async def test_parallels_written_by_qemu(tmp_path: Path, magic: str) -> None:
    p = tmp_path / "q.hds"
    if magic == "ext":  # qemu creates only the ext magic
        assert run("qemu-img", "create", "-q", "-f", "parallels", str(p),
                   str(SIZE)).returncode == 0
    else:  # VirtualBox's magic: we create it, qemu writes into it
        img = create_image(p, SIZE, "parallels", magic="v1", cluster_size=64 << 10)
        await img.close()
    qemu_io("parallels", p, SIZE)
    img = open_image(p, read_only=True)
    assert img.info().extra["magic"] == ("WithouFreSpacExt" if magic == "ext"
                                         else "WithoutFreeSpace")
    await compare_with_qemu(img, p, "parallels", tmp_path)
    assert not img.check().errors
    await img.close()


OURS = [
    ("vmdk", "dynamic", {}), ("vmdk", "dynamic", {"zeroed_grain": True}),
    ("vmdk", "dynamic", {"lazy_tables": True, "grain_size": 4096}),
    ("vmdk", "fixed", {}), ("vmdk", "split2g", {"extent_size": 3 * MiB}),
    ("vmdk", "split2g-fixed", {"extent_size": 3 * MiB}), ("vmdk", "stream", {}),
    ("parallels", "dynamic", {"magic": "v1"}),
    ("parallels", "dynamic", {"magic": "ext", "cluster_size": 64 << 10}),
]


@pytest.mark.parametrize("fmt, variant, opts", OURS,
                         ids=[f"{f}-{v}-{'-'.join(o)}" for f, v, o in OURS])
async def test_ours_pass_qemu_check_and_compare(tmp_path: Path, fmt: str, variant: str,
                                                opts: dict[str, object]) -> None:
    p = tmp_path / f"ours.{'vmdk' if fmt == 'vmdk' else 'hds'}"
    img = create_image(p, SIZE + 512, fmt, variant, **opts)
    model = bytearray(SIZE + 512)
    rnd = random.Random(f"{fmt}{variant}{opts}")
    if variant == "stream":  # written once, front to back
        for off in range(0, SIZE, 256 << 10):
            data = rnd.randbytes(256 << 10) if rnd.random() < 0.6 else bytes(256 << 10)
            await img.pwrite(off, data)
            model[off:off + len(data)] = data
    else:
        for _ in range(120):
            off = rnd.randrange(SIZE)
            n = min(rnd.randrange(1, 300_000), SIZE + 512 - off)
            kind = rnd.random()
            if kind < 0.75:
                data = rnd.randbytes(n)
                await img.pwrite(off, data)
                model[off:off + n] = data
            else:
                await (img.zero(off, n) if kind < 0.9 else img.trim(off, n))
                model[off:off + n] = bytes(n)
            if rnd.random() < 0.1:
                await img.flush()
    await img.close()
    ref = tmp_path / "ref.raw"
    ref.write_bytes(model)
    check = run("qemu-img", "check", "-f", fmt, str(p))
    assert check.returncode == 0, check.stdout + check.stderr
    cmp = run("qemu-img", "compare", "-f", fmt, "-F", "raw", str(p), str(ref))
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    info = json.loads(run("qemu-img", "info", "-f", fmt, "--output=json", str(p)).stdout)
    assert info["virtual-size"] == SIZE + 512
    if variant != "stream":  # and qemu writing into our image lands where we read it
        r = run("qemu-io", "-f", fmt, "-c", "write -P 0x7e 4096 70000", str(p))
        assert r.returncode == 0 and "failed" not in r.stdout + r.stderr
        img = open_image(p)
        assert bytes(await img.pread(4096, 70000)) == b"\x7e" * 70000
        assert not img.check().errors
        await img.close()
    os.unlink(ref)
