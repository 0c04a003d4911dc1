"""Transports: the only code that touches sockets and the event loop clock."""
