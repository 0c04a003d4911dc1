"""blockyard: a network block server (NBD and iSCSI) over VirtualBox-style disk images."""

__version__ = "0.1.0"
