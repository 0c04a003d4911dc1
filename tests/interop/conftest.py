"""Fixtures for the interop tests (real peers from Debian).

The rule for missing peers is ``require_tool`` in tests/conftest.py: in CI
(``CI=true``) a missing peer fails, elsewhere the test is skipped loudly.
Tests name their peers with ``@pytest.mark.peers("qemu-img", ...)`` (checked
through that fixture before each test) and get libnbd's Python module from
the ``nbd`` fixture, under the same rule.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from nbd_helpers import NbdServerProc, start_server  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "peers(*tools): executables the test needs (see require_tool)")


@pytest.fixture(autouse=True)
def _required_peers(request: pytest.FixtureRequest) -> None:
    tools = [tool for marker in request.node.iter_markers("peers") for tool in marker.args]
    if tools:
        require_tool: Callable[[str], str] = request.getfixturevalue("require_tool")
        for tool in tools:
            require_tool(tool)


@pytest.fixture
def nbd():  # type: ignore[no-untyped-def]
    """libnbd's Python module (Debian's python3-libnbd, linked into the venv)."""
    try:
        import nbd as module
    except ImportError as exc:
        message = f"libnbd's Python module is missing ({exc}; Debian package python3-libnbd)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}: a missing peer fails the run in CI", pytrace=False)
        warnings.warn(message, stacklevel=2)
        pytest.skip(f"SKIPPED LOUDLY: {message}; run `make setup`")
    return module


@pytest.fixture
def nbd_server(tmp_path: Path) -> Iterator[Callable[..., NbdServerProc]]:
    """Factory: ``nbd_server(*files, read_only=False)`` starts blockyard on port 0.

    Every server started is stopped (SIGTERM, by PID) at teardown, and a server
    that did not shut down cleanly (exit status 0) fails the test.
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
