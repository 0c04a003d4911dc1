"""The TOML configuration: typed load, every problem at once with file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from blockyard.config import check_file, load_default, load_file, locate, parse
from blockyard.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

TYPOS = """\
[server]
state_dir = "/tmp/x"
log_levl = "info"

[nbd]
listen = ["127.0.0.1:10809", "nowhere:port"]

[[controller]]
name = "sata0"
type = "sata"

[[controller]]
name = "bad"
type = "floppy-bus"

[[attachment]]
controller = "sata0"
port = 30
medium = "a.img"

[[attachment]]
controller = "sata0"
port = 1
medium = "b.img"
create_size = "12Q"

[[attachment]]
controller = "sata0"
medium = "c.img"

[servre]
x = 1
"""


def test_embedded_default_loads_into_typed_objects() -> None:
    cfg = load_default()
    assert cfg.nbd.listen == ["127.0.0.1:10809"] and cfg.server.state_dir == ""
    [att] = cfg.attachments
    assert (att.controller, att.port, att.name, att.medium) == ("default", 0, "demo", "demo.img")
    assert att.create_size == 1 << 30 and isinstance(att.create_size, int)
    assert cfg.controllers[0].type == "virtio-scsi" and cfg.control.socket == "control.sock"


def test_every_problem_is_reported_at_once_with_its_line_and_key() -> None:
    _, errors = parse(TYPOS, "typos.toml")
    assert errors == [
        "typos.toml:3: server.log_levl: unknown key (did you mean 'log_level'?)",
        "typos.toml:6: nbd.listen: bad listen address 'nowhere:port' (want HOST:PORT)",
        "typos.toml:14: controller[1].type: must be one of ide, sata, scsi, sas, usb, nvme, "
        "virtio-scsi, not 'floppy-bus'",
        "typos.toml:18: attachment[0].port: controller 'sata0' has ports 0-29",
        "typos.toml:25: attachment[1].create_size: cannot parse size '12Q' "
        "(examples: 4096, 512M, 10G, 1.5T)",
        "typos.toml:27: attachment[2]: missing required key 'port'",
        "typos.toml:31: servre: unknown section (did you mean 'server'?)",
    ]


def test_cross_references_are_checked() -> None:
    text = """\
[[controller]]
name = "c"
type = "ide"
[[controller]]
name = "c"
type = "ide"
[[attachment]]
controller = "c"
port = 0
medium = "a"
[[attachment]]
controller = "c"
port = 0
medium = "b"
name = "c-0"
[[attachment]]
controller = "nope"
port = 1
medium = "x"
[[export]]
name = "c-0"
path = "y"
[control]
listen = "127.0.0.1:9000"
"""
    _, errors = parse(text, "x.toml")
    assert [e.split(": ", 1)[0] for e in errors] == [
        "x.toml:5", "x.toml:13", "x.toml:15", "x.toml:17", "x.toml:21", "x.toml:24"]
    assert "declared twice" in errors[0] and "used twice" in errors[1]
    assert "no [[controller]] named 'nope'" in errors[3]
    assert "needs token_file" in errors[5]


def test_syntax_error_carries_its_line() -> None:
    _, errors = parse('[server]\nstate_dir = "unterminated\n', "s.toml")
    assert errors[0].startswith("s.toml:2: TOML syntax:")


def test_wrong_shapes_are_errors_not_crashes() -> None:
    _, errors = parse('server = 3\ncontroller = "x"\n[nbd]\nlisten = "a:1"\n', "w.toml")
    assert len(errors) == 3
    assert "must be a table [server]" in errors[0]
    assert "[[controller]]" in errors[1] and "list" in errors[2]


def test_legacy_export_tables_still_load() -> None:
    cfg, errors = parse('[[export]]\nname = "demo"\npath = "demo.img"\ncreate_size = "1G"\n'
                        'read_only = true\n', "old.toml")
    assert errors == [] and cfg.exports[0].read_only and cfg.exports[0].create_size == 1 << 30


def test_load_file_raises_one_line_naming_the_count(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(TYPOS)
    with pytest.raises(ConfigError) as err:
        load_file(tmp_path / "c.toml")
    assert "\n" not in str(err.value) and "and 6 more" in str(err.value)
    assert check_file(tmp_path / "missing.toml")[0].endswith("cannot read: No such file or "
                                                             "directory")


def test_locate_finds_keys_in_the_right_array_entry() -> None:
    text = '[[a]]\nk = 1\n[[a]]\nj = 2\nk = 3\n[b]\nk = 4\n'
    assert locate(text, ("a", 1, "k")) == 5
    assert locate(text, ("a", 0, "k")) == 2
    assert locate(text, ("b", "k")) == 7
    assert locate(text, ("a", 1)) == 3


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.toml")),
                         ids=lambda p: p.name)
def test_shipped_configs_are_sound(path: Path) -> None:
    assert check_file(path) == []
