"""What a remote LUN is: the commands ``open_remote`` runs once before I/O starts.

The order QEMU uses (``block/iscsi.c``): TEST UNIT READY until the unit
attentions of a fresh nexus are consumed, standard INQUIRY (a LUN that is
not there, or not a disk, is refused here), READ CAPACITY(16) (10 when 16 is
refused), the VPD pages the target lists (83h identity, 80h serial, B0h
block limits, B2h provisioning), MODE SENSE(6) for write protection and
DPOFUA, and a GET LBA STATUS probe on thin LUNs.  Errors name the URL.
"""

from __future__ import annotations

from blockyard.block.remote import LunProperties, ScsiPath, ScsiStatusError, run_scsi
from blockyard.errors import MediaError, NotFoundError
from blockyard.iscsi import initiator_scsi as scsi

DEVICE_TYPES = {0: "disk", 1: "tape", 5: "CD/DVD drive", 0x0C: "storage array controller",
                0x0D: "enclosure", 0x1F: "unknown device"}
_LU_NOT_SUPPORTED = 0x25


async def inspect_lun(path: ScsiPath, lun: int) -> LunProperties:
    where = f"{path.display}"
    try:
        await run_scsi(path, lun, scsi.test_unit_ready(), "TEST UNIT READY")
        inq = scsi.parse_inquiry(bytes((await run_scsi(
            path, lun, scsi.inquiry(None, 96), "INQUIRY", read_len=96)).data))
    except ScsiStatusError as exc:
        if exc.sense is not None and exc.sense.asc == _LU_NOT_SUPPORTED:
            raise NotFoundError(f"{where}: LUN {lun} does not exist ({exc.sense})") from None
        raise MediaError(str(exc)) from None
    if inq.qualifier != 0 or inq.device_type == 0x1F:
        raise NotFoundError(f"{where}: LUN {lun} does not exist (peripheral qualifier "
                            f"{inq.qualifier})")
    if inq.device_type != 0:
        kind = DEVICE_TYPES.get(inq.device_type, f"device type {inq.device_type:02x}h")
        raise MediaError(f"{where}: LUN {lun} is a {kind}, not a disk")
    try:
        props = await _capacity(path, lun, inq)
        await _vpd(path, lun, props)
        await _mode(path, lun, props)
    except ScsiStatusError as exc:
        raise MediaError(str(exc)) from None
    if props.lbpme:
        props.lba_status = await _supported(path, lun, scsi.get_lba_status(0, 24),
                                            "GET LBA STATUS", 24)
    return props


async def _capacity(path: ScsiPath, lun: int, inq: scsi.Inquiry) -> LunProperties:
    try:
        cmd = await run_scsi(path, lun, scsi.read_capacity16(), "READ CAPACITY(16)",
                             read_len=32)
        cap = scsi.parse_capacity16(bytes(cmd.data))
    except ScsiStatusError as exc:
        if exc.sense is None or exc.sense.key != 0x5:
            raise
        cmd = await run_scsi(path, lun, scsi.read_capacity10(), "READ CAPACITY(10)", read_len=8)
        cap = scsi.parse_capacity10(bytes(cmd.data))
    if not 512 <= cap.block_size <= 65536 or cap.block_size & (cap.block_size - 1):
        raise MediaError(f"{path.display}: unusable logical block size {cap.block_size}")
    return LunProperties(cap.blocks, cap.block_size, inq, lbpme=cap.lbpme, lbprz=cap.lbprz)


async def _vpd(path: ScsiPath, lun: int, props: LunProperties) -> None:
    data = await _page(path, lun, 0x00)
    pages = scsi.parse_supported_pages(data) if data else []
    if 0x83 in pages:
        props.identity = scsi.parse_identity(await _page(path, lun, 0x83))
    if 0x80 in pages:
        props.serial = scsi.parse_serial(await _page(path, lun, 0x80))
    if 0xB0 in pages:
        props.limits = scsi.parse_block_limits(await _page(path, lun, 0xB0))
    if 0xB2 in pages and props.lbpme:
        props.provisioning = scsi.parse_provisioning(await _page(path, lun, 0xB2))


async def _page(path: ScsiPath, lun: int, page: int) -> bytes:
    try:
        cmd = await run_scsi(path, lun, scsi.inquiry(page, 1024), f"INQUIRY VPD {page:02x}h",
                             read_len=1024)
    except ScsiStatusError as exc:
        if page == 0x00 and exc.sense is not None and exc.sense.key == 0x5:
            return b""  # no VPD pages at all
        raise
    return bytes(cmd.data)


async def _mode(path: ScsiPath, lun: int, props: LunProperties) -> None:
    try:
        cmd = await run_scsi(path, lun, scsi.mode_sense6(), "MODE SENSE(6)", read_len=255)
    except ScsiStatusError:
        return  # not writable-protected as far as we know; FUA emulated by SYNCHRONIZE CACHE
    props.write_protected, props.dpofua = scsi.parse_mode_header6(bytes(cmd.data))


async def _supported(path: ScsiPath, lun: int, cdb: bytes, what: str, read_len: int) -> bool:
    try:
        await run_scsi(path, lun, cdb, what, read_len=read_len)
    except ScsiStatusError as exc:
        if exc.sense is not None and exc.sense.key == 0x5:
            return False
        raise
    return True
