"""Helpers for the daemon's iSCSI, bandwidth and remote-media tests (no tests here).

``Daemon.start(tmp_path, config_text)`` writes the config, runs ``blockyard
serve --config FILE --state-dir STATE --nbd 127.0.0.1:0`` (the registry
server, through ``RegistryServer``) and reads the NBD and iSCSI ports it
prints.  ``lun_url(name, lun)`` is the iSCSI URL of a controller's LUN;
``remote(url, ...)`` runs one of our initiator's ``RemoteLun`` sessions.
``iscsi_tool(*args)`` runs a libiscsi utility (iscsi-ls, iscsi-inq, iscsi-perf).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_cli_registry_support import RegistryServer

from blockyard.block.remote import RemoteLun
from blockyard.transport.iscsi_initiator import open_remote

ISCSI_RE = re.compile(r"iscsi: listening on ([0-9.]+):(\d+)")
PREFIX = "iqn.2026-11.org.blockyard:"
MiB = 1 << 20


@dataclass
class Daemon:
    server: RegistryServer
    iscsi_port: int

    @property
    def state(self) -> Path:
        return self.server.state

    @property
    def nbd_port(self) -> int:
        return self.server.port

    @classmethod
    def start(cls, tmp_path: Path, config: str, state: str = "state") -> Daemon:
        cfg = tmp_path / "blockyard.toml"
        cfg.write_text(config)
        srv = RegistryServer.start(tmp_path / state, "--config", str(cfg))
        ports = [int(m.group(2)) for m in map(ISCSI_RE.search, srv.lines) if m]
        return cls(srv, ports[0] if ports else 0)

    def stop(self) -> int:
        return self.server.stop()

    def lun_url(self, controller: str, lun: int, *, iqn: str = "", auth: str = "") -> str:
        return f"iscsi://{auth}127.0.0.1:{self.iscsi_port}/{iqn or PREFIX + controller}/{lun}"

    def log(self) -> str:
        return self.server.log.read_text() if self.server.log else ""


@asynccontextmanager
async def remote(url: str, **settings: Any) -> AsyncIterator[RemoteLun]:
    settings.setdefault("nop_interval", 0)
    lun = await open_remote(url, reconnect_for=0, **settings)
    try:
        yield lun
    finally:
        await lun.close()


def iscsi_tool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(args[0]) is None:
        pytest.skip(f"{args[0]} (libiscsi-bin) is not installed")
    return subprocess.run(list(args), capture_output=True, text=True, errors="replace",
                          timeout=60)


def luns_listed(portal: str) -> dict[str, list[int]]:
    """``iscsi-ls -s`` (discovery + REPORT LUNS per target): {target: [LUN, ...]}."""
    out = iscsi_tool("iscsi-ls", "-s", f"iscsi://{portal}").stdout
    found: dict[str, list[int]] = {}
    target = ""
    for line in out.splitlines():
        m = re.match(r"Target:(\S+) Portal:", line)
        if m:
            target = m.group(1)
            found[target] = []
        m = re.match(r"\s*Lun:(\d+)", line)
        if m and target:
            found[target].append(int(m.group(1)))
    return found


def raw_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path
