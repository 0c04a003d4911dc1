"""The Layer contract (tests/unit/block/test_block_layer_contract.py) run again over this
capability's layers: DirectFile with and without its write cache, and ThrottleLayer over
DirectFile and over a RAM disk."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
import test_block_layer_contract as contract

from blockyard.block.hostcache_direct import DirectFile
from blockyard.block.layer import Layer
from blockyard.block.ram import RamDisk
from blockyard.block.throttle import ThrottleGroup, ThrottleLayer

SIZE = contract.SIZE

test_write_read_round_trip = contract.test_write_read_round_trip
test_reads_past_end_are_einval = contract.test_reads_past_end_are_einval
test_writes_past_end_are_enospc = contract.test_writes_past_end_are_enospc
test_negative_offset_refused = contract.test_negative_offset_refused
test_read_only_refuses_writes = contract.test_read_only_refuses_writes
test_zero_with_trim_makes_a_hole = contract.test_zero_with_trim_makes_a_hole
test_zero_without_trim_reads_zero = contract.test_zero_without_trim_reads_zero
test_extents_cover_request_exactly = contract.test_extents_cover_request_exactly
test_flush_and_fua = contract.test_flush_and_fua


@pytest.fixture(params=["direct", "direct-nocache", "throttle-direct", "throttle-ram"])
def layer(request: pytest.FixtureRequest) -> Iterator[Layer]:
    d = tempfile.mkdtemp(prefix="blockyard-contract-", dir="/var/tmp")
    path = os.path.join(d, "disk.raw")
    with open(path, "wb") as f:
        f.truncate(SIZE)
    direct = DirectFile(path, cache_limit=0 if request.param == "direct-nocache" else 64 << 10,
                        writeout_delay=3600)
    group = ThrottleGroup("contract", 1 << 30)
    if request.param == "throttle-ram":
        yield ThrottleLayer(RamDisk(SIZE), group, "s")
    elif request.param.startswith("throttle"):
        yield ThrottleLayer(direct, group, "s")
    else:
        yield direct
    os.close(direct.dfd) if direct.dfd >= 0 else None
    os.close(direct.fd) if direct.fd >= 0 else None
    shutil.rmtree(d, ignore_errors=True)
