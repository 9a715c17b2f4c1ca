"""DNS and hosts: the sandbox's resolv.conf and hosts files, the DNS message codec."""
