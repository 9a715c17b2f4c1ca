"""The doctor's host-uplink check: pyroute2 reads the routes, a pure function words them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest

from netwrap.cli.doctor import Uplink, uplink_check


def test_uplink_check_names_route_interface_and_addresses_per_family():
    check = uplink_check([
        Uplink(family=socket.AF_INET, gateway="198.51.100.1", interface="eth0", addresses=("198.51.100.7/24",)),
    ])
    assert check.ok
    assert check.detail == "IPv4 default via 198.51.100.1 dev eth0 (198.51.100.7/24); no IPv6 default route"


def test_uplink_check_fails_without_any_default_route():
    check = uplink_check([])
    assert not check.ok
    assert check.detail == "no default route: the sandbox would have no way out"
    assert check.fix and "default route" in check.fix


# In a network namespace of its own, configured with iproute2 (the oracle:
# what `ip` set up is what pyroute2 must report back).
NETNS_SCRIPT = textwrap.dedent("""
    import subprocess, sys
    from netwrap.cli.doctor import check_host_uplink
    print(check_host_uplink().detail)
    subprocess.run(["ip", "-batch", "-"], check=True, text=True, input='''
    link add nwa type veth peer name nwb
    addr add 203.0.113.5/24 dev nwa
    addr add 2001:db8:5::5/64 dev nwa nodad
    link set nwa up
    link set nwb up
    route add default via 203.0.113.1
    route add default via 2001:db8:5::1
    route add 10.9.0.0/16 via 203.0.113.9
    route add default via 203.0.113.2 table 100
    ''')
    print(check_host_uplink().detail)
""")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None,
                    reason="needs root, ip and unshare for a network namespace of its own")
def test_host_uplinks_reports_what_ip_configured_in_a_fresh_netns():
    done = subprocess.run(["unshare", "-n", sys.executable, "-c", NETNS_SCRIPT],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "no default route: the sandbox would have no way out",
        "IPv4 default via 203.0.113.1 dev nwa (203.0.113.5/24); "
        "IPv6 default via 2001:db8:5::1 dev nwa (2001:db8:5::5/64)",
    ]
