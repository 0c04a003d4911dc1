"""Project-wide test helpers.

``require_tool(name)`` is the rule for an external tool a test needs (qemu-img,
qemu-io, ...): in CI (env ``CI=true``) a missing tool fails the test; elsewhere
the test is skipped with a loud reason.  Use the function directly or through
the ``require_tool`` fixture.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable

import pytest

DEBIAN_PACKAGES = {
    "qemu-img": "qemu-utils", "qemu-io": "qemu-utils", "qemu-nbd": "qemu-utils",
    "nbdinfo": "libnbd-bin", "nbdcopy": "libnbd-bin", "nbdsh": "python3-libnbd",
    "nbdkit": "nbdkit", "fio": "fio", "tgtd": "tgt", "tgtadm": "tgt",
    "iscsi-test-cu": "libiscsi-bin", "iscsi-inq": "libiscsi-bin", "iscsi-ls": "libiscsi-bin",
    "iscsi-readcapacity16": "libiscsi-bin", "iscsi-perf": "libiscsi-bin",
}


def require_tool(name: str) -> str:
    """Path of executable ``name``; fail in CI, skip loudly elsewhere."""
    path = shutil.which(name)
    if path:
        return path
    package = DEBIAN_PACKAGES.get(name, "?")
    message = f"external tool {name!r} is missing (Debian package {package})"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message}: a missing tool fails the run in CI", pytrace=False)
    warnings.warn(message, stacklevel=2)
    pytest.skip(f"SKIPPED LOUDLY: {message}")


@pytest.fixture(name="require_tool")
def require_tool_fixture() -> Callable[[str], str]:
    return require_tool
