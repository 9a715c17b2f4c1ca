"""Low-level Linux helpers: syscalls, external commands, netlink, the host's files, scratch directories."""
