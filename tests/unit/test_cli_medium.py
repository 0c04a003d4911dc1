"""``blockyard medium create|info|check|compact|resize`` run as a user runs them."""

from __future__ import annotations

import io
import json
import os
import pty
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from blockyard.util.progress import ProgressBar

MiB = 1 << 20


# file commands only: no registry of the machine's user may answer for a file name
_ENV = {**{k: v for k, v in os.environ.items() if k != "BLOCKYARD_STATE_DIR"},
        "XDG_STATE_HOME": "/nonexistent/blockyard-test-state"}


def medium(*args: str, cwd: Path | None = None,
           stderr: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blockyard", "medium", *args], cwd=cwd,
                          stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env=_ENV)


def info(path: Path, *extra: str) -> dict[str, object]:
    out = medium("info", str(path), "--json", *extra)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize(("fmt", "variant"), [
    ("vdi", "dynamic"), ("vdi", "fixed"), ("vhd", "dynamic"), ("vmdk", "dynamic"),
    ("parallels", "dynamic"), ("raw", "dynamic")])
def test_create_then_info_for_every_format(tmp_path: Path, fmt: str, variant: str) -> None:
    path = tmp_path / f"disk.{fmt}"
    out = medium("create", str(path), "--size", "48M", "--format", fmt, "--variant", variant)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.strip() == f"{path}: created {fmt} {variant} image of 48M"
    shown = info(path)
    assert (shown["format"], shown["virtual_size"]) == (fmt, 48 * MiB)


def test_fixed_vhd_needs_the_format_named(tmp_path: Path) -> None:
    path = tmp_path / "fixed.vhd"
    assert medium("create", str(path), "--size", "8M", "-f", "vhd", "--variant",
                  "fixed").returncode == 0
    shown = info(path, "--format", "vhd")
    assert (shown["format"], shown["variant"], shown["geometry"]) == ("vhd", "fixed",
                                                                      [240, 4, 17])


def test_info_text_names_the_facts(tmp_path: Path) -> None:
    path = tmp_path / "t.vdi"
    medium("create", str(path), "--size", "10M")
    out = medium("info", str(path))
    lines = dict(line.split(":", 1) for line in out.stdout.splitlines())
    assert lines["format"].strip() == "vdi" and lines["variant"].strip() == "dynamic"
    assert lines["virtual size"].strip() == "10M (10485760 bytes)"
    assert lines["geometry (CHS)"].strip() == "20/16/63"
    assert len(lines["uuid"].strip()) == 36 and lines["not closed cleanly"].strip() == "no"


def damage_counter(path: Path, value: int) -> None:
    with open(path, "r+b") as f:  # VDI blocks-allocated counter at 0x184 (§1.2)
        f.seek(0x184)
        f.write(struct.pack("<I", value))


def test_check_exit_status_follows_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.vdi"
    medium("create", str(path), "--size", "8M")
    ok = medium("check", str(path))
    assert ok.returncode == 0 and ok.stdout.strip() == f"{path}: no errors"
    damage_counter(path, 2)
    with open(path, "ab") as f:
        f.write(bytes(2 * MiB))
    bad = medium("check", str(path))
    assert bad.returncode == 4
    assert f"{path}: error: blocks-allocated counter is 2, the map references 0 blocks" in (
        bad.stdout)
    fixed = medium("check", str(path), "--repair")
    assert fixed.returncode == 0, fixed.stdout
    assert medium("check", str(path)).stdout.strip() == f"{path}: no errors"


def write_blocks(path: Path, count: int, byte: int) -> None:
    import asyncio

    from blockyard.block.formats import open_image

    async def go() -> None:
        img = open_image(path)
        for block in range(count):
            await img.pwrite(block * MiB, bytes([byte]) * MiB)
        await img.close()
    asyncio.run(go())


def test_compact_is_quiet_when_piped(tmp_path: Path) -> None:
    path = tmp_path / "k.vdi"
    medium("create", str(path), "--size", "8M")
    write_blocks(path, 4, 7)
    write_blocks(path, 2, 0)  # zeros written into allocated blocks: compact frees them
    before = path.stat().st_size
    out = medium("compact", str(path))
    assert out.returncode == 0 and out.stderr == ""
    # "released" is allocated space given back, which the filesystem rounds (its own
    # extent blocks come and go); the file itself shrinks by exactly the two blocks.
    prefix = f"{path}: released "
    assert out.stdout.strip().startswith(prefix)
    shown = out.stdout.strip()[len(prefix):]
    assert shown.endswith("M") and abs(float(shown[:-1]) - 2.0) <= 0.1
    assert path.stat().st_size == before - 2 * MiB


def test_compact_draws_progress_on_a_terminal(tmp_path: Path) -> None:
    path = tmp_path / "p.vdi"
    medium("create", str(path), "--size", "8M")
    write_blocks(path, 3, 9)
    master, slave = pty.openpty()
    try:
        out = medium("compact", str(path), stderr=slave)
        os.close(slave)
        drawn = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(master)
    assert out.returncode == 0
    text = drawn.decode()
    assert "\rcompacting p.vdi [" in text
    assert "100.0%" in text and text.endswith("\r\n")


def test_resize_and_its_refusals(tmp_path: Path) -> None:
    path = tmp_path / "r.vhd"
    medium("create", str(path), "--size", "8M", "--format", "vhd")
    grown = medium("resize", str(path), "--size", "16M")
    assert grown.returncode == 0 and grown.stdout.strip() == f"{path}: virtual size now 16M"
    assert info(path)["virtual_size"] == 16 * MiB
    write_blocks(path, 12, 1)
    shrink = medium("resize", str(path), "--size", "4M")
    assert shrink.returncode == 4 and shrink.stdout == ""
    assert shrink.stderr.count("\n") == 1 and "use force" in shrink.stderr
    assert medium("resize", str(path), "--size", "4M", "--force").returncode == 0
    assert info(path)["virtual_size"] == 4 * MiB


@pytest.mark.parametrize(("args", "status", "message"), [
    (["info", "missing.vdi"], 4, "missing.vdi: cannot read"),
    (["create", "x.vdi", "--size", "ten"], 2, "cannot parse size 'ten'"),
    (["create", "x.vdi", "--size", "1M", "--variant", "stream"], 4, "no variant 'stream'"),
    (["check", "junk.vdi", "--format", "vdi"], 4, "junk.vdi: not a VDI image"),
    (["resize", "junk.vdi", "--size", "1M", "--format", "vdi"], 4, "not a VDI image"),
])
def test_errors_are_one_line(tmp_path: Path, args: list[str], status: int, message: str) -> None:
    (tmp_path / "junk.vdi").write_bytes(bytes(0x40) + b"XXXX" + bytes(1000))
    out = medium(*args, cwd=tmp_path)
    assert out.returncode == status
    assert out.stderr.startswith("blockyard: ") and out.stderr.count("\n") == 1
    assert message in out.stderr and "Traceback" not in out.stderr


def test_bare_medium_prints_usage() -> None:
    out = medium()
    assert out.returncode == 2 and "create" in out.stderr and "resize" in out.stderr


def test_progress_bar_silent_off_a_terminal() -> None:
    stream = io.StringIO()
    with ProgressBar("work", stream) as bar:
        for i in range(10):
            bar(i + 1, 10)
    assert stream.getvalue() == ""


def test_progress_bar_render() -> None:
    bar = ProgressBar("copy", io.StringIO(), enabled=True, interval=0)
    assert bar.render(1, 4, 40) == "copy [" + "#" * 6 + "." * 20 + "]  25.0%"
    assert len(bar.render(1, 4, 40)) == 40
    assert bar.render(5, 0, 40).endswith("   0.0%")
    bar(2, 4)
    bar.close()
    assert bar.stream.getvalue().endswith("]  50.0%\n")  # type: ignore[attr-defined]
