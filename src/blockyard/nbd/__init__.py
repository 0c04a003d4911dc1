"""Sans-IO NBD core: constants, wire codecs, server and client state machines."""
