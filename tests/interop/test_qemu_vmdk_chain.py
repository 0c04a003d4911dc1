"""VMDK chains against qemu-img / qemu-io 7.2 (image-formats.md §2.5), both directions.

qemu -> us: qemu makes a three-level chain (``qemu-img create -b -F vmdk``) and writes
into each level; we read the top through our chain finder and must see exactly what
``qemu-img convert`` flattens.  us -> qemu: children we create, written through our
chain (partial grains, zeroes across grains), pass ``qemu-img check`` and
``qemu-img compare`` against a model; a snapshot merge of a registered VMDK disk leaves
a chain qemu reads as the same disk (``qemu-img compare`` before and after).
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockyard.block.chain_facts import facts_of
from blockyard.block.chain_find import open_chain_file
from blockyard.block.chain_link import create_child
from blockyard.block.formats import create_image, open_image
from blockyard.media import ops
from blockyard.media.context import Context
from blockyard.media.registry import Registry
from blockyard.media.snapshot_delete import delete_snapshot
from blockyard.media.snapshots import snapshot_list, snapshot_take

pytestmark = [pytest.mark.interop, pytest.mark.peers("qemu-img", "qemu-io")]
MiB = 1 << 20
SIZE = 4 * MiB


def run(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc.stdout


async def test_qemu_made_chain_reads_like_qemu_flattens_it(tmp_path: Path) -> None:
    base, mid, top = (tmp_path / n for n in ("base.vmdk", "mid.vmdk", "top.vmdk"))
    run("qemu-img", "create", "-q", "-f", "vmdk", str(base), str(SIZE))
    run("qemu-io", "-f", "vmdk", "-c", "write -P 0x11 0 1M", "-c", "write -P 0x12 3M 100k",
        str(base))
    run("qemu-img", "create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", str(mid))
    run("qemu-io", "-f", "vmdk", "-c", "write -P 0x21 65000 2000", "-c", "write -z 3M 64k",
        str(mid))
    run("qemu-img", "create", "-q", "-f", "vmdk", "-b", "mid.vmdk", "-F", "vmdk", str(top))
    run("qemu-io", "-f", "vmdk", "-c", "write -P 0x31 512k 4k", str(top))
    run("qemu-img", "convert", "-O", "raw", str(top), str(tmp_path / "flat.raw"))
    chain = open_chain_file(str(top), read_only=True)
    assert len(chain.images) == 3  # type: ignore[attr-defined]
    assert bytes(await chain.pread(0, SIZE)) == (tmp_path / "flat.raw").read_bytes()
    await chain.close()


async def _our_chain(tmp_path: Path, seed: int) -> tuple[Path, bytearray]:
    rng = random.Random(seed)
    base = create_image(tmp_path / "base.vmdk", SIZE, "vmdk")
    model = bytearray(SIZE)
    for _ in range(6):
        off, n = rng.randrange(SIZE - 200_000), rng.randrange(1, 200_000)
        data = bytes([rng.randrange(1, 256)]) * n
        await base.pwrite(off, data)
        model[off:off + n] = data
    await base.close()
    path = tmp_path / "base.vmdk"
    for level in ("c1", "c2"):
        parent = open_image(path, read_only=True)
        child = create_child(str(tmp_path / f"{level}.vmdk"), facts_of(parent), "vmdk")
        await parent.close()
        await child.close()
        path = tmp_path / f"{level}.vmdk"
        chain = open_chain_file(str(path))
        for _ in range(8):
            off, n = rng.randrange(SIZE - 300_000), rng.randrange(1, 300_000)
            if rng.random() < 0.3:
                await chain.zero(off, n)
                model[off:off + n] = bytes(n)
            else:
                data = bytes([rng.randrange(1, 256)]) * n
                await chain.pwrite(off, data)  # partial grains copy up from the parent
                model[off:off + n] = data
        await chain.close()
    return path, model


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32))
def test_our_chains_check_and_compare_clean_in_qemu(tmp_path_factory: pytest.TempPathFactory,
                                                    seed: int) -> None:
    import asyncio

    tmp = tmp_path_factory.mktemp("chain")
    top, model = asyncio.run(_our_chain(tmp, seed))
    (tmp / "model.raw").write_bytes(model)
    for name in ("base.vmdk", "c1.vmdk", "c2.vmdk"):
        run("qemu-img", "check", "-q", str(tmp / name))
    info = run("qemu-img", "info", "--backing-chain", str(top))
    assert "backing file: c1.vmdk" in info and "backing file: base.vmdk" in info
    run("qemu-img", "compare", "-f", "vmdk", "-F", "raw", str(top), str(tmp / "model.raw"))


async def test_qemu_writes_into_our_child_and_we_read_it(tmp_path: Path) -> None:
    base = create_image(tmp_path / "b.vmdk", SIZE, "vmdk")
    await base.pwrite(0, b"\x41" * MiB)
    await base.close()
    parent = open_image(tmp_path / "b.vmdk", read_only=True)
    child = create_child(str(tmp_path / "k.vmdk"), facts_of(parent), "vmdk")
    await parent.close()
    await child.close()
    run("qemu-io", "-f", "vmdk", "-c", "write -P 0x42 1000 3000", str(tmp_path / "k.vmdk"))
    chain = open_chain_file(str(tmp_path / "k.vmdk"), read_only=True)
    got = bytes(await chain.pread(0, 8192))
    assert got == b"A" * 1000 + b"B" * 3000 + b"A" * 4192
    await chain.close()


async def test_a_snapshot_merge_leaves_a_chain_qemu_reads_the_same(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "state")
    ctx = Context(reg, tmp_path / "state")
    await ops.media_add(ctx, str(tmp_path / "disk.vmdk"), create_size=SIZE, format="vmdk")
    run("qemu-io", "-f", "vmdk", "-c", "write -P 0x51 0 2M", str(tmp_path / "disk.vmdk"))
    await snapshot_take(ctx, "disk.vmdk", name="s1")
    cur = Path((await snapshot_list(ctx, "disk.vmdk"))["current_state"]["location"])
    run("qemu-io", "-f", "vmdk", "-c", "write -P 0x52 1M 1500k", str(cur))  # qemu writes too
    await snapshot_take(ctx, "disk.vmdk", name="s2")
    top = Path((await snapshot_list(ctx, "disk.vmdk"))["current_state"]["location"])
    run("qemu-io", "-f", "vmdk", "-c", "write -z 1536k 64k", "-c", "write -P 0x53 3M 7k",
        str(top))
    run("qemu-img", "convert", "-O", "raw", str(top), str(tmp_path / "before.raw"))
    await delete_snapshot(ctx, "disk.vmdk", "s1")  # merges s1's follower into disk.vmdk
    assert "backing file: ../disk.vmdk" in run("qemu-img", "info", str(top))
    run("qemu-img", "compare", "-f", "vmdk", "-F", "raw", str(top), str(tmp_path / "before.raw"))
    await delete_snapshot(ctx, "disk.vmdk", "s2")  # merges the top: one file left
    run("qemu-img", "check", "-q", str(tmp_path / "disk.vmdk"))
    run("qemu-img", "compare", "-f", "vmdk", "-F", "raw", str(tmp_path / "disk.vmdk"),
        str(tmp_path / "before.raw"))
    reg.close()
