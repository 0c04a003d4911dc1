"""The daemon's targets keep their [[target]] settings: IQN, ACL, one-way and mutual CHAP.

An initiator outside a target's ACL is refused at login (libiscsi and our
initiator alike); a listed one must still pass CHAP; a target without a
[[target]] table admits everyone.  The CHAP secret is read from a file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_daemon_iscsi_support import PREFIX, Daemon, iscsi_tool, luns_listed, remote

from blockyard.errors import MediaError

ALLOWED = "iqn.2026-11.org.example:allowed"
OTHER = "iqn.2026-11.org.example:stranger"
IQN = "iqn.2026-11.org.example:vault"


def _config(tmp_path: Path) -> str:
    secret = tmp_path / "vault.chap"
    secret.write_text("vault-secret-1\n")
    return f"""\
[nbd]
listen = ["127.0.0.1:0"]

[iscsi]
listen = ["127.0.0.1:0"]

[[controller]]
name = "vault"
type = "scsi"

[[controller]]
name = "open"
type = "ide"

[[target]]
controller = "vault"
iqn = "{IQN}"
acl = ["{ALLOWED}"]
chap_user = "alice"
chap_secret_file = "{secret}"
mutual_user = "vault"
mutual_secret = "target-secret-2"

[[attachment]]
controller = "vault"
port = 3
medium = "vault.img"
create_size = "4M"
format = "raw"

[[attachment]]
controller = "open"
port = 0
medium = "open.img"
create_size = "4M"
format = "raw"
"""


@pytest.fixture
def daemon(tmp_path: Path):  # type: ignore[no-untyped-def]
    d = Daemon.start(tmp_path, _config(tmp_path))
    yield d
    assert d.stop() == 0


async def test_acl_and_chap_of_a_configured_target(daemon: Daemon) -> None:
    good = daemon.lun_url("vault", 3, iqn=IQN, auth="alice%vault-secret-1@")
    mutual = "?target_user=vault&target_password=target-secret-2"
    async with remote(good + mutual, initiator_name=ALLOWED) as lun:
        await lun.pwrite(0, b"inside" * 100)
        assert bytes(await lun.pread(0, 600)) == b"inside" * 100
    with pytest.raises(MediaError, match="login failed"):
        async with remote(good, initiator_name=OTHER):
            pass
    wrong = daemon.lun_url("vault", 3, iqn=IQN, auth="alice%not-the-secret@")
    with pytest.raises(MediaError, match="login failed"):
        async with remote(wrong, initiator_name=ALLOWED):
            pass
    with pytest.raises(MediaError, match="login failed"):  # CHAP is required
        async with remote(daemon.lun_url("vault", 3, iqn=IQN), initiator_name=ALLOWED):
            pass


async def test_a_target_without_a_table_admits_everyone(daemon: Daemon) -> None:
    async with remote(daemon.lun_url("open", 0), initiator_name=OTHER) as lun:
        assert lun.size == 4 << 20
    listed = luns_listed(f"127.0.0.1:{daemon.iscsi_port}")
    assert listed == {PREFIX + "open": [0]}  # discovery hides targets whose ACL refuses us


def test_libiscsi_is_refused_outside_the_acl(daemon: Daemon) -> None:
    url = daemon.lun_url("vault", 3, iqn=IQN, auth="alice%vault-secret-1@")
    refused = iscsi_tool("iscsi-inq", "-i", OTHER, url)
    assert refused.returncode != 0
    admitted = iscsi_tool("iscsi-inq", "-i", ALLOWED, url)
    assert admitted.returncode == 0, admitted.stderr
    assert "DIRECT_ACCESS" in admitted.stdout
