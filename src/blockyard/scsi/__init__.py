"""The SCSI command set shared by the iSCSI target and initiator (SPC-4, SBC-3, MMC-6)."""
