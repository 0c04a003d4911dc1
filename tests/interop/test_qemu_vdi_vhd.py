"""VDI and VHD against qemu-img / qemu-io 7.2, both directions (image-formats.md §10).

* qemu -> us: every variant qemu can make gets the pattern writes of
  make_oracle_images.sh through qemu-io (block edges, a straddling write, the
  last sector, ``write -z``); our driver reads the whole disk and it must equal
  the expected bytes built here.  Then we write into qemu's image and qemu
  checks and compares it.
* us -> qemu: every variant we create gets random writes, zeroes and trims
  through the driver; ``qemu-img check`` (VDI only: vpc has no check) and
  ``qemu-img compare`` against the raw model.  qemu takes a VHD's size from
  CHS unless told otherwise, so VHDs are compared with
  ``--image-opts driver=vpc,force_size_calc=current_size,file.filename=...``.
* crash: SIGKILL of ``blockyard serve`` during a write-heavy libnbd run with
  periodic flushes; afterwards every write acknowledged before the last
  completed flush is there, and the image checks clean (ours and qemu's).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest
from nbd_helpers import MiB, run, start_server

from blockyard.block.formats import vhd_layout as V
from blockyard.block.formats.vdi import VdiImage
from blockyard.block.formats.vhd import VhdImage

pytestmark = pytest.mark.interop

SIZE = 64 * MiB
PATTERNS = [(0xAB, 1 * MiB, 65536), (0xCD, 5 * MiB, 4096), (0xEF, 2093056, 8192),
            (0x11, 32 * MiB, 512), (0x77, 8 * MiB, 131072)]
ZERO_WRITES = [(8 * MiB, 65536)]
QEMU_VARIANTS = [("vdi", ""), ("vdi", "static=on"), ("vpc", "subformat=dynamic"),
                 ("vpc", "subformat=fixed"), ("vpc", "subformat=dynamic,force_size=on"),
                 ("vpc", "subformat=fixed,force_size=on")]
DRIVERS: dict[str, Any] = {"vdi": VdiImage, "vpc": VhdImage}


def expected(size: int) -> bytearray:
    model = bytearray(size)
    for byte, off, n in PATTERNS + [(0x5A, size - 512, 512)]:
        model[off:off + n] = bytes([byte]) * n
    for off, n in ZERO_WRITES:
        model[off:off + n] = bytes(n)
    return model


def qemu_io_args(size: int) -> list[str]:
    args: list[str] = []
    for byte, off, n in PATTERNS + [(0x5A, size - 512, 512)]:
        args += ["-c", f"write -P {byte:#x} {off} {n}"]
    for off, n in ZERO_WRITES:
        args += ["-c", f"write -z {off} {n}"]
    return args


def qemu_spec(fmt: str, path: Path) -> list[str]:
    """How qemu must open our image: a VHD by its current size, not by CHS (§3.4)."""
    if fmt == "vpc":
        return ["--image-opts", f"driver=vpc,force_size_calc=current_size,file.filename={path}"]
    return ["-f", fmt, str(path)]


def qemu_compare(fmt: str, path: Path, raw: Path) -> None:
    if fmt == "vpc":
        run(["qemu-img", "compare", "--image-opts",
             f"driver=vpc,force_size_calc=current_size,file.filename={path}",
             f"driver=raw,file.filename={raw}"])
    else:
        run(["qemu-img", "compare", "-f", fmt, "-F", "raw", str(path), str(raw)])


def qemu_size(fmt: str, path: Path) -> int:
    out = run(["qemu-img", "info", "--output=json", *qemu_spec(fmt, path)]).stdout
    return int(json.loads(out)["virtual-size"])


async def random_ops(img: Any, model: bytearray, seed: int, count: int = 60) -> None:
    rnd = random.Random(seed)
    size = len(model)
    edges = [b * img.block_size + d for b in range(size // img.block_size) for d in (-512, 0)]
    for _ in range(count):
        off = rnd.choice([rnd.randrange(size), max(0, rnd.choice(edges))])
        n = min(size - off, rnd.choice([1, 512, 4096, 65536, img.block_size, 3 * MiB]))
        kind = rnd.random()
        if kind < 0.7:
            data = rnd.randbytes(n)
            await img.pwrite(off, data)
            model[off:off + n] = data
        elif kind < 0.85:
            await img.zero(off, n)
            model[off:off + n] = bytes(n)
        elif kind < 0.95:
            await img.flush()
        else:
            await img.trim(off, n)
            model[off:off + n] = await img.pread(off, n)  # unspecified, but stable


@pytest.mark.peers("qemu-img", "qemu-io")
@pytest.mark.parametrize(("fmt", "opts"), QEMU_VARIANTS, ids=[f"{f}-{o or 'default'}"
                                                               for f, o in QEMU_VARIANTS])
async def test_qemu_images_read_and_written_by_us(tmp_path: Path, fmt: str, opts: str) -> None:
    path = tmp_path / f"q.{fmt}"
    run(["qemu-img", "create", "-q", "-f", fmt, *(["-o", opts] if opts else []),
         str(path), "64M"])
    size = qemu_size(fmt, path) if fmt == "vdi" else int(json.loads(run(
        ["qemu-img", "info", "--output=json", "-f", fmt, str(path)]).stdout)["virtual-size"])
    run(["qemu-io", "-f", fmt, *qemu_io_args(size), str(path)])
    img = DRIVERS[fmt].open(path, read_only=True)
    assert img.size == size
    model = expected(size)
    assert await img.pread(0, size) == model
    await img.close()
    img = DRIVERS[fmt].open(path)  # now we write into qemu's layout
    await random_ops(img, model, seed=size)
    await img.close()
    raw = tmp_path / "model.raw"
    raw.write_bytes(model)
    if fmt == "vdi":
        run(["qemu-img", "check", "-f", "vdi", str(path)])
    qemu_compare(fmt, path, raw)


OUR_VARIANTS = [("vdi", "dynamic", SIZE), ("vdi", "fixed", SIZE), ("vpc", "dynamic", SIZE),
                ("vpc", "fixed", SIZE), ("vpc", "dynamic", 963 * 8 * 17 * 512)]


@pytest.mark.peers("qemu-img")
@pytest.mark.parametrize(("fmt", "variant", "size"), OUR_VARIANTS,
                         ids=[f"{f}-{v}-{s}" for f, v, s in OUR_VARIANTS])
async def test_our_images_pass_qemu_check_and_compare(tmp_path: Path, fmt: str, variant: str,
                                                      size: int) -> None:
    path = tmp_path / f"o.{fmt}"
    img = DRIVERS[fmt].create(path, size, variant=variant)
    model = bytearray(size)
    await random_ops(img, model, seed=len(variant) + size)
    await img.close()
    raw = tmp_path / "model.raw"
    raw.write_bytes(model)
    if fmt == "vdi":
        run(["qemu-img", "check", "-f", "vdi", str(path)])
    assert qemu_size(fmt, path) == size
    qemu_compare(fmt, path, raw)


@pytest.mark.peers("qemu-img")
async def test_qemu_reads_chs_size_by_default(tmp_path: Path) -> None:
    """The documented choice: we keep current size; qemu's default is C*H*S (§3.4)."""
    path = tmp_path / "chs.vhd"
    await VhdImage.create(path, SIZE).close()
    out = run(["qemu-img", "info", "--output=json", "-f", "vpc", str(path)]).stdout
    assert json.loads(out)["virtual-size"] == 963 * 8 * 17 * 512 < SIZE
    assert qemu_size("vpc", path) == SIZE


@pytest.mark.peers("qemu-img")
@pytest.mark.parametrize("size", ["10M", "64M", "1G", "127G", "300G"])
def test_chs_matches_qemu(tmp_path: Path, size: str) -> None:
    path = tmp_path / "g.vhd"
    run(["qemu-img", "create", "-q", "-f", "vpc", str(path), size])
    footer, _ = V.parse_footer(path.read_bytes()[:512])
    assert footer is not None
    assert V.chs(footer.current_size // 512) == footer.geometry


GROWN = 320 * MiB


def sparse_raw(path: Path, model: bytearray) -> Path:
    with open(path, "wb") as f:
        f.truncate(len(model))
        for off in range(0, len(model), MiB):
            chunk = model[off:off + MiB]
            if chunk != bytes(len(chunk)):
                f.seek(off)
                f.write(chunk)
    return path


@pytest.mark.peers("qemu-img", "qemu-io")
@pytest.mark.parametrize("fmt", ["vdi", "vpc"])
async def test_grown_images_pass_qemu(tmp_path: Path, fmt: str) -> None:
    """VDI: qemu's packed map must move to grow; VHD: blocks move out of the BAT's way."""
    path = tmp_path / f"grow.{fmt}"
    run(["qemu-img", "create", "-q", "-f", fmt, str(path), "64M"])
    size = int(json.loads(run(["qemu-img", "info", "--output=json", "-f", fmt,
                               str(path)]).stdout)["virtual-size"])
    run(["qemu-io", "-f", fmt, *qemu_io_args(size), str(path)])
    img = DRIVERS[fmt].open(path)
    await img.resize(GROWN)  # VDI: 320 map entries > 128; VHD: 160 BAT entries > 128
    await img.pwrite(GROWN - 4096, b"\x42" * 4096)
    await img.zero(MiB, MiB)
    await img.compact()
    await img.close()
    model = expected(size) + bytes(GROWN - size)
    model[-4096:] = b"\x42" * 4096
    model[MiB:2 * MiB] = bytes(MiB)
    raw = sparse_raw(tmp_path / f"grow-{fmt}.raw", model)
    if fmt == "vdi":
        run(["qemu-img", "check", "-f", "vdi", str(path)])
    qemu_compare(fmt, path, raw)


# ---- crash: SIGKILL of the server in the middle of a write-heavy run -----------------------
def allowed_after_crash(durable: bytearray, later: list[tuple[int, bytes]]) -> list[set[bytes]]:
    """Per sector: the content at the last completed flush, or any write issued after it."""
    allowed = [{bytes(durable[s * 512:(s + 1) * 512])} for s in range(len(durable) // 512)]
    for off, data in later:
        for i in range(0, len(data), 512):
            allowed[(off + i) // 512].add(data[i:i + 512])
    return allowed


def crash_run(nbd: Any, server: Any, export: str,
              seed: int) -> tuple[bytearray, list[tuple[int, bytes]]]:
    """Flushed rounds, then unflushed writes in flight when the server is killed."""
    rnd = random.Random(seed)
    h = nbd.NBD()
    h.connect_uri(server.uri(export))
    model = bytearray(SIZE)
    for _round in range(rnd.randint(3, 6)):
        for _ in range(20):
            off, n = rnd.randrange(SIZE // 512) * 512, rnd.choice([4096, 65536, 262144])
            n = min(n, SIZE - off)
            if rnd.random() < 0.15:  # whole-block zeroes free slots (moved at flush)
                off, n = off // MiB * MiB, MiB
                h.zero(n, off)
                model[off:off + n] = bytes(n)
            else:
                data = rnd.randbytes(n)
                h.pwrite(data, off)
                model[off:off + n] = data
        h.flush()
    durable = bytearray(model)
    later: list[tuple[int, bytes]] = []
    for _ in range(40):  # in flight when the server dies
        off = rnd.randrange(SIZE // 512 - 128) * 512
        data = rnd.randbytes(rnd.choice([4096, 65536]))
        h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), off)
        later.append((off, data))
    h.aio_flush()
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    server.proc.stdout.close()
    try:
        h.shutdown()
    except nbd.Error:
        pass
    return durable, later


@pytest.mark.peers("qemu-img")
@pytest.mark.parametrize(("fmt", "seed"), [("vdi", 1), ("vdi", 2), ("vpc", 3)])
async def test_sigkill_keeps_every_flushed_write(nbd: Any, tmp_path: Path, fmt: str,
                                                 seed: int) -> None:
    path = tmp_path / f"crash.{fmt}"
    await DRIVERS[fmt].create(path, SIZE).close()
    server = start_server([path], tmp_path)
    durable, later = await asyncio.to_thread(crash_run, nbd, server, path.stem, seed)
    img = DRIVERS[fmt].open(path)
    report = img.check(repair=True)
    assert not report.errors, report
    assert img.check().clean
    data = await img.pread(0, SIZE)
    await img.close()
    allowed = allowed_after_crash(durable, later)
    bad = [s for s in range(SIZE // 512) if bytes(data[s * 512:(s + 1) * 512]) not in allowed[s]]
    assert not bad, f"{len(bad)} sectors hold neither flushed nor later data, first {bad[:5]}"
    if fmt == "vdi":
        run(["qemu-img", "check", "-f", "vdi", str(path)])
