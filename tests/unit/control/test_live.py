"""LiveServer in-process: attach publishes at once, detach drains, observers hear both."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from blockyard.block.layer import Layer
from blockyard.control.live import LiveServer
from blockyard.media import attach_ops, ops
from blockyard.media.context import Context
from blockyard.media.model import Attachment
from blockyard.media.registry import Registry
from blockyard.transport.nbd_server import ExportTable, NbdServer

MiB = 1 << 20


async def test_attach_detach_live_with_observers_and_shared_open_medium(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "state")
    nbd = NbdServer(ExportTable())
    live = LiveServer(reg, nbd, grace=1)
    ctx = Context(reg, tmp_path / "state", live)
    heard: list[tuple[str, str]] = []
    live.on_attach.append(lambda att, layer: heard.append(("attach", att.export_name)))

    async def async_observer(att: Attachment, layer: Layer) -> None:
        await asyncio.sleep(0)
        heard.append(("detach", att.export_name))
    live.on_detach.append(async_observer)
    live.on_attach.append(lambda att, layer: 1 / 0)  # a broken observer costs nothing

    await ops.media_add(ctx, str(tmp_path / "d.img"), create_size="1M",
                        write_mode="shareable")
    await attach_ops.controller_add(ctx, "c", "sata")
    await attach_ops.attach(ctx, "c", "d.img", port=0)
    await attach_ops.attach(ctx, "c", "d.img", port=1, name="again")
    a, b = nbd.exports.lookup("c-0"), nbd.exports.lookup("again")
    assert a is not None and b is not None and a.layer is b.layer  # one open medium
    layer: Any = a.layer
    await layer.pwrite(0, b"shared")
    assert heard == [("attach", "c-0"), ("attach", "again")]

    await attach_ops.detach(ctx, "c", 0)
    uuid = reg.media()[0].uuid
    assert nbd.exports.lookup("c-0") is None and live.open_layer(uuid) is layer  # still used
    await attach_ops.detach(ctx, "c", 1)
    assert live.open == {} and nbd.exports.lookup("again") is None
    assert heard[-2:] == [("detach", "c-0"), ("detach", "again")]
    assert (tmp_path / "d.img").read_bytes()[:6] == b"shared"
    await nbd.stop(grace=1)
    reg.close()


async def test_a_failed_open_leaves_no_attachment(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "state")
    nbd = NbdServer(ExportTable())
    ctx = Context(reg, tmp_path / "state", LiveServer(reg, nbd))
    await ops.media_add(ctx, str(tmp_path / "p.img"), create_size="1M")
    await ops.media_add(ctx, str(tmp_path / "kid.img"), create_size="1M", parent="p.img")
    await attach_ops.controller_add(ctx, "c", "ide")
    try:
        await attach_ops.attach(ctx, "c", "kid.img", mtype="readonly")
    except Exception as exc:
        assert "differencing" in str(exc)
    else:
        raise AssertionError("a child without the chain capability must not be served")
    assert reg.attachments() == [] and reg.resolve("kid.img").write_mode == "normal"
    assert list(nbd.exports) == []
    reg.close()
