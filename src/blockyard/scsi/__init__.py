"""The SCSI command set shared by the iSCSI target and initiator (SPC-4, SBC-3, MMC-6).

The transport side uses ``ScsiTargetDevice`` (``device.py``) with the types of
``task.py``; logical units are ``DiskUnit`` (``disk.py``) instances, each over a
block ``Layer``.
"""
