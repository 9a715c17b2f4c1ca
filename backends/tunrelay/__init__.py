"""tunrelay: the pure-Python TUN relay backend.

This package holds the packet core, pure code with no I/O and no clock:

- :mod:`.vnet` -- the virtio_net_hdr in front of each TUN frame;
- :mod:`.checksum` -- Internet checksum and RFC 1624 incremental updates;
- :mod:`.packets` -- parse IPv4/IPv6 + TCP/UDP/ICMP, build replies, rewrite;
- :mod:`.nat` -- the TCP NAT table (TUN NAT path) and UDP/echo flow tables;
- :mod:`.core` -- the engine an I/O loop drives (frames in, actions out);
- :mod:`.counters` -- drop reasons and counters.

Submodules are imported lazily by whoever needs them, so importing the
backend registry does not pay for the packet code.
"""
