"""libnbd option mode against blockyard: LIST, INFO, LIST_META_CONTEXT, GO, ABORT."""

from __future__ import annotations

from pathlib import Path

import pytest
from nbd_helpers import MiB, sparse_file, write_at

pytestmark = pytest.mark.interop


@pytest.fixture
def two_exports(nbd_server, tmp_path: Path):  # type: ignore[no-untyped-def]
    alpha = sparse_file(tmp_path / "alpha.img", 4 * MiB)
    beta = sparse_file(tmp_path / "beta.img", 6 * MiB)
    write_at(beta, 0, b"beta-first-bytes")
    return nbd_server(alpha, beta)


def _opt_handle(nbd, server):  # type: ignore[no-untyped-def]
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_tcp(server.host, str(server.port))
    assert h.aio_is_negotiating()
    return h


def test_opt_list(nbd, two_exports) -> None:
    h = _opt_handle(nbd, two_exports)
    seen: list[tuple[str, str]] = []
    count = h.opt_list(lambda name, description: seen.append((name, description)) or 0)
    assert count == 2
    assert sorted(name for name, _ in seen) == ["alpha", "beta"]
    h.opt_abort()
    assert h.aio_is_closed()


def test_opt_info_then_unknown_then_go(nbd, two_exports) -> None:
    h = _opt_handle(nbd, two_exports)
    h.set_export_name("alpha")
    h.opt_info()
    assert h.get_size() == 4 * MiB and not h.is_read_only()
    assert h.get_block_size(nbd.SIZE_MINIMUM) == 1
    assert h.get_block_size(nbd.SIZE_PREFERRED) == 4096
    assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 * MiB
    h.set_export_name("no-such-export")
    with pytest.raises(nbd.Error):
        h.opt_info()
    assert h.aio_is_negotiating(), "a failed INFO must leave option haggling open"
    h.set_export_name("beta")
    h.opt_go()
    assert h.aio_is_ready()
    assert h.get_size() == 6 * MiB
    assert h.pread(16, 0) == b"beta-first-bytes"
    h.shutdown()


def test_opt_list_meta_context(nbd, two_exports) -> None:
    h = _opt_handle(nbd, two_exports)
    h.set_export_name("beta")
    found: list[str] = []
    assert h.opt_list_meta_context(lambda name: found.append(name) or 0) >= 1
    assert "base:allocation" in found
    found.clear()
    h.add_meta_context("base:")  # a namespace query lists what is in it
    assert h.opt_list_meta_context(lambda name: found.append(name) or 0) == 1
    assert found == ["base:allocation"]
    h.clear_meta_contexts()
    h.add_meta_context("qemu:dirty-bitmap:nonexistent")
    found.clear()
    assert h.opt_list_meta_context(lambda name: found.append(name) or 0) == 0
    assert found == []
    h.clear_meta_contexts()
    h.add_meta_context("base:allocation")
    h.opt_go()
    assert h.can_meta_context("base:allocation")
    extents: list[int] = []
    h.block_status(MiB, 0, lambda ctx, off, ent, err: extents.extend(ent) or 0)
    assert extents[1] == 0, "the first 16 bytes of beta are data"
    h.shutdown()


def test_default_export_and_read_only(nbd, nbd_server, tmp_path: Path) -> None:
    path = sparse_file(tmp_path / "only.img", 2 * MiB)
    write_at(path, MiB, b"hello")
    server = nbd_server(path, read_only=True)
    h = _opt_handle(nbd, server)
    h.set_export_name("")  # the empty name selects the default export
    h.opt_go()
    assert h.get_size() == 2 * MiB and h.is_read_only()
    assert not h.can_trim() and not h.can_zero() and not h.can_fua()
    assert h.pread(5, MiB) == b"hello"
    h.shutdown()
