"""Shared fixtures for the interop tests (real peers from Debian).

``require_tool(name)`` is the one rule for missing peers: in CI (``CI=true``)
a missing peer is a failure, elsewhere the test is skipped with a loud reason
that says which Debian package brings the tool.  Tests name their peers with
``@pytest.mark.peers("qemu-img", ...)`` (checked before each test) and get
libnbd's Python module from the ``nbd`` fixture, under the same rule.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from nbd_helpers import NbdServerProc, start_server  # noqa: E402

PACKAGES = {
    "nbdinfo": "libnbd-bin", "nbdcopy": "libnbd-bin", "nbdsh": "libnbd-bin",
    "qemu-img": "qemu-utils", "qemu-io": "qemu-utils", "qemu-nbd": "qemu-utils",
    "nbdkit": "nbdkit", "fio": "fio", "nbd": "python3-libnbd",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(name: str, why: str) -> None:
    package = PACKAGES.get(name, "?")
    message = f"interop peer {name!r} is missing ({why}; Debian package {package})"
    if in_ci():
        pytest.fail(f"{message}: a missing peer fails the run in CI", pytrace=False)
    warnings.warn(message, stacklevel=3)
    pytest.skip(f"SKIPPED LOUDLY: {message}; run `make peers` to install it")


def require_tool(name: str) -> str:
    """Path of the executable ``name``; fail in CI, skip loudly elsewhere."""
    path = shutil.which(name)
    if path is None:
        _missing(name, "not on PATH")
    return str(path)


def require_libnbd():  # type: ignore[no-untyped-def]
    """libnbd's Python module ``nbd``, under the same rule as ``require_tool``."""
    try:
        import nbd
    except ImportError as exc:
        _missing("nbd", f"import failed: {exc}")
    return nbd


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "peers(*tools): executables the test needs (see require_tool)")


@pytest.fixture(autouse=True)
def _required_peers(request: pytest.FixtureRequest) -> None:
    for marker in request.node.iter_markers("peers"):
        for tool in marker.args:
            require_tool(tool)


@pytest.fixture
def nbd():  # type: ignore[no-untyped-def]
    """libnbd's Python module (Debian's python3-libnbd)."""
    return require_libnbd()


@pytest.fixture
def nbd_server(tmp_path: Path) -> Iterator[Callable[..., NbdServerProc]]:
    """Factory: ``nbd_server(*files, read_only=False)`` starts blockyard on port 0.

    Every server started is stopped (SIGTERM, by PID) at teardown, and a server
    that did not shut down cleanly fails the test.
    """
    started: list[NbdServerProc] = []

    def factory(*files: Path, read_only: bool = False,
                extra: tuple[str, ...] = ()) -> NbdServerProc:
        server = start_server(list(files), tmp_path, read_only=read_only, extra=extra)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop(check=True)
