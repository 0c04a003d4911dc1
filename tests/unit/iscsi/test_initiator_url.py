"""iscsi:// URLs: the libiscsi / QEMU form, secrets from the URL, a file or the
environment, redaction in every message, one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from blockyard.errors import ConfigError
from blockyard.iscsi.url import parse_portal, parse_url

IQN = "iqn.2026-11.org.blockyard:disk"


def test_plain_url() -> None:
    u = parse_url(f"iscsi://10.0.0.1/{IQN}/3", {})
    assert (u.host, u.port, u.target, u.lun, u.user) == ("10.0.0.1", 3260, IQN, 3, "")
    assert u.header_digest == ("None", "CRC32C") and u.data_digest == ("None",)
    assert u.portal == "10.0.0.1:3260" and u.display == f"iscsi://10.0.0.1/{IQN}/3"


def test_chap_in_userinfo_is_redacted() -> None:
    u = parse_url(f"iscsi://alice%s3cr%t@[::1]:3261/{IQN}/0?header_digest=crc32c", {})
    assert (u.user, u.secret, u.host, u.port) == ("alice", "s3cr%t", "::1", 3261)
    assert u.header_digest == ("CRC32C",) and u.portal == "[::1]:3261"
    assert "s3cr" not in u.display and u.display.startswith("iscsi://alice%***@[::1]:3261/")
    assert "s3cr" not in repr(u)


def test_mutual_chap_query_keys() -> None:
    u = parse_url(f"iscsi://alice%pw@h/{IQN}/0?target_user=tgt&target_password=tpw", {})
    assert (u.target_user, u.target_secret) == ("tgt", "tpw")
    assert "tpw" not in u.display and "target_password=***" in u.display


def test_secrets_from_file_and_environment(tmp_path: Path) -> None:
    f = tmp_path / "secret"
    f.write_text("from-a-file\n")
    u = parse_url(f"iscsi://alice@h/{IQN}/0?secret_file={f}", {})
    assert u.secret == "from-a-file"
    env = {"MY_SECRET": "from-env", "BLOCKYARD_ISCSI_SECRET": "default-env",
           "BLOCKYARD_ISCSI_TARGET_SECRET": "target-env"}
    assert parse_url(f"iscsi://alice@h/{IQN}/0?secret_env=MY_SECRET", env).secret == "from-env"
    u = parse_url(f"iscsi://alice@h/{IQN}/0?target_user=t", env)
    assert (u.secret, u.target_secret) == ("default-env", "target-env")


@pytest.mark.parametrize("url, why", [
    ("nbd://h/x/0", "not an iscsi:// URL"),
    (f"iscsi://h/{IQN}", "expected iscsi://"),
    (f"iscsi://h/{IQN}/x", "bad LUN"),
    (f"iscsi://h/{IQN}/99999", "bad LUN"),
    (f"iscsi://h:99999/{IQN}/0", "bad port"),
    (f"iscsi://h/{IQN}/0?colour=red", "unknown query key 'colour'"),
    (f"iscsi://h/{IQN}/0?header_digest=md5", "header_digest must be one of"),
    (f"iscsi://alice@h/{IQN}/0", "no CHAP secret"),
    (f"iscsi://alice@h/{IQN}/0?secret_file=/nonexistent/x", "cannot read secret_file"),
    (f"iscsi://h/{IQN}/0?target_user=t&target_password=p", "needs an initiator user"),
    (f"iscsi://alice%pw@h/{IQN}/0?timeout=soon", "timeout must be a number"),
])
def test_bad_urls_give_one_line_errors(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_url(url, {})
    message = str(info.value)
    assert why in message and "\n" not in message and "pw" not in message.split(":", 1)[1]


def test_portals() -> None:
    assert parse_portal("10.0.0.1") == ("10.0.0.1", 3260)
    assert parse_portal("iscsi://h:3261/") == ("h", 3261)
    assert parse_portal("[fe80::1]:860") == ("fe80::1", 860)
    with pytest.raises(ConfigError, match="expected a portal"):
        parse_portal(f"iscsi://h/{IQN}/0")
