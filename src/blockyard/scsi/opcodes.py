"""Operation codes and service actions (SPC-4 annex D.3, SBC-3 table 12)."""

from __future__ import annotations

from enum import IntEnum


class Op(IntEnum):
    TEST_UNIT_READY = 0x00
    REQUEST_SENSE = 0x03
    READ_6 = 0x08
    WRITE_6 = 0x0A
    INQUIRY = 0x12
    MODE_SELECT_6 = 0x15
    RESERVE_6 = 0x16
    RELEASE_6 = 0x17
    MODE_SENSE_6 = 0x1A
    START_STOP_UNIT = 0x1B
    PREVENT_ALLOW = 0x1E
    READ_CAPACITY_10 = 0x25
    READ_10 = 0x28
    WRITE_10 = 0x2A
    WRITE_VERIFY_10 = 0x2E
    VERIFY_10 = 0x2F
    PRE_FETCH_10 = 0x34
    SYNCHRONIZE_CACHE_10 = 0x35
    READ_DEFECT_DATA_10 = 0x37
    WRITE_SAME_10 = 0x41
    UNMAP = 0x42
    MODE_SELECT_10 = 0x55
    MODE_SENSE_10 = 0x5A
    PERSISTENT_RESERVE_IN = 0x5E
    PERSISTENT_RESERVE_OUT = 0x5F
    EXTENDED_COPY = 0x83
    RECEIVE_COPY_RESULTS = 0x84
    READ_16 = 0x88
    COMPARE_AND_WRITE = 0x89
    WRITE_16 = 0x8A
    ORWRITE_16 = 0x8B
    WRITE_VERIFY_16 = 0x8E
    VERIFY_16 = 0x8F
    PRE_FETCH_16 = 0x90
    SYNCHRONIZE_CACHE_16 = 0x91
    WRITE_SAME_16 = 0x93
    WRITE_ATOMIC_16 = 0x9C
    SERVICE_ACTION_IN_16 = 0x9E
    REPORT_LUNS = 0xA0
    MAINTENANCE_IN = 0xA3
    READ_12 = 0xA8
    WRITE_12 = 0xAA
    WRITE_VERIFY_12 = 0xAE
    VERIFY_12 = 0xAF
    READ_DEFECT_DATA_12 = 0xB7


class SaIn16(IntEnum):
    """SERVICE ACTION IN(16) service actions (SBC-3 table 12)."""

    READ_CAPACITY_16 = 0x10
    GET_LBA_STATUS = 0x12


class SaMaintIn(IntEnum):
    REPORT_SUPPORTED_OPCODES = 0x0C  # SPC-4 6.35


class SaCopyIn(IntEnum):
    """RECEIVE COPY RESULTS service actions (SPC-4 6.18, LID1)."""

    COPY_STATUS = 0x00
    OPERATING_PARAMETERS = 0x03


class SaCopyOut(IntEnum):
    EXTENDED_COPY_LID1 = 0x00  # SPC-4 6.3


def cdb_length(opcode: int) -> int:
    """CDB length from the group code (SAM-5 5.2, SPC-4 4.2.5.1); 0 if variable."""
    group = opcode >> 5
    return {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}.get(group, 0)
