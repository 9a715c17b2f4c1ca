"""The capture's pure parts: flags and paths, egress synthesis, wire matching (BPF: test_bpf.py)."""

from __future__ import annotations

import os
import pathlib
import socket
import struct
import subprocess
import sys

import pytest

from netwrap.cli import options as cli
from netwrap.capture import fields as packet_fields
from netwrap.capture.spec import CaptureSpec, parse_capture
from netwrap.capture.egress import Addressing, EgressSynthesiser, host_resolver_forwarders
from netwrap.errors import UsageError
from netwrap.capture.wire_egress import WINDOW_NS, HostPacket, WireMatcher
from privileges import needs_real_root_if_root

from inet_checksum import ref_sum

V4 = socket.inet_aton


def _tcp_v4(src: bytes, dst: bytes, sport: int, dport: int, flags: int, payload: bytes = b"") -> bytes:
    tcp = bytearray(struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload)
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    struct.pack_into("!H", tcp, 16, 0xFFFF - ref_sum(pseudo + bytes(tcp)))
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, src, dst))
    struct.pack_into("!H", ip, 10, 0xFFFF - ref_sum(bytes(ip)))
    return bytes(ip + tcp)


def _ether(ip: bytes) -> bytes:
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip


# -- flags and paths ---------------------------------------------------------------------------

@pytest.mark.parametrize("point, files", [
    ("child", {"child": "run.pcapng"}),
    ("egress", {"egress": "run.pcapng"}),
    ("wire-egress", {"wire-egress": "run.pcapng"}),
    ("both", {"child": "run.child.pcapng", "egress": "run.egress.pcapng"}),
])
def test_each_point_names_its_files(point, files):
    assert CaptureSpec(path="run.pcapng", point=point).files() == files


def test_both_without_pcapng_suffix_appends():
    assert CaptureSpec(path="dump", point="both").files() == {"child": "dump.child.pcapng",
                                                              "egress": "dump.egress.pcapng"}


def test_cli_takes_capture_flags(tmp_path):
    config = cli.parse(["-c", str(tmp_path / "x.pcapng"), "true"])
    assert config.capture == CaptureSpec(path=str(tmp_path / "x.pcapng"), point="child")
    # Opened (created, empty) while the flags are checked; the run writes through the fd.
    assert [(o.path, o.created) for o in config.outputs] == [(str(tmp_path / "x.pcapng"), True)]
    assert (tmp_path / "x.pcapng").stat().st_size == 0
    config = cli.parse(["--capture", str(tmp_path / "y.pcapng"), "-C", "both", "true"])
    assert config.capture.point == "both"
    assert sorted(o.path for o in config.outputs) == [str(tmp_path / "y.child.pcapng"),
                                                      str(tmp_path / "y.egress.pcapng")]
    assert cli.parse(["true"]).capture is None


@pytest.mark.parametrize("argv, message", [
    (["-C", "egress", "true"], "--capture-point needs --capture FILE"),
    (["-c", "/nonexistent/dir/x.pcapng", "true"], "directory /nonexistent/dir does not exist"),
    (["-c", "/", "true"], "is a directory"),
    (["-c", "/dev/null", "true"], "not a regular file"),
    (["-c", "x.pcapng", "-C", "sideways", "true"], "invalid choice"),
])
def test_bad_capture_flags_are_usage_errors(argv, message):
    with pytest.raises(UsageError, match=message):
        cli.parse(argv)


@needs_real_root_if_root
def test_unwritable_directory_is_a_usage_error():
    import tempfile

    # Under /tmp itself: pytest's own tmp_path is not traversable by others.
    base = tempfile.mkdtemp(prefix="netwrap-test-")
    os.chmod(base, 0o755)
    locked = pathlib.Path(base) / "locked"
    locked.mkdir(mode=0o555)
    # Root may write anywhere: check as "nobody" in a child (CI runs as root).
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            cli.parse(["-c", str(locked / "x.pcapng"), "true"])
        except UsageError as exc:
            code = 0 if "permission denied" in str(exc).lower() else 2
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    locked.rmdir()
    os.rmdir(base)
    assert os.waitstatus_to_exitcode(status) == 0


def test_wire_egress_needs_cap_net_raw(monkeypatch, tmp_path):
    from netwrap.capture import spec as capture_spec

    monkeypatch.setattr(capture_spec, "has_effective_capability", lambda cap: False)
    with pytest.raises(UsageError, match="needs CAP_NET_RAW"):
        parse_capture(str(tmp_path / "w.pcapng"), "wire-egress")
    monkeypatch.setattr(capture_spec, "has_effective_capability", lambda cap: cap == capture_spec.CAP_NET_RAW)
    assert parse_capture(str(tmp_path / "w.pcapng"), "wire-egress").point == "wire-egress"


def test_capture_flags_do_not_load_pcapng_until_the_run(tmp_path):
    code = (f"from netwrap.cli import options as cli; cli.parse(['-c', {str(tmp_path / 'x.pcapng')!r}, 'true'])\n"
            "import sys; print('pcapng' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "False", done.stderr


# -- egress synthesis ----------------------------------------------------------------------------

class _Fixed(Addressing):
    def __init__(self, source: bytes, forwarders=None) -> None:
        super().__init__(forwarders)
        self.source = source

    def host_source(self, peer: bytes) -> bytes | None:
        return self.source


def test_egress_rewrites_addresses_and_keeps_checksums_right():
    synth = EgressSynthesiser(_Fixed(V4("192.0.2.2")))
    frame = _ether(_tcp_v4(V4("10.0.2.100"), V4("93.184.215.14"), 40000, 80, 0x02))
    packet, f = synth.synthesise(frame, packet_fields.parse(frame, 14), outgoing=True, csum_partial=False)
    assert packet[12:20] == V4("192.0.2.2") + V4("93.184.215.14")
    assert ref_sum(packet[:20]) == 0xFFFF  # IPv4 header checksum verifies
    pseudo = packet[12:20] + struct.pack("!BBH", 0, 6, len(packet) - 20)
    assert ref_sum(pseudo + packet[20:]) == 0xFFFF  # and so does TCP's
    assert (f.src, f.dst, f.sport, f.dport) == (V4("192.0.2.2"), V4("93.184.215.14"), 40000, 80)
    assert packet_fields.is_flow_opener(f)
    # The reply: the peer stays the source, the host becomes the destination.
    reply = _ether(_tcp_v4(V4("93.184.215.14"), V4("10.0.2.100"), 80, 40000, 0x12))
    packet, f = synth.synthesise(reply, packet_fields.parse(reply, 14), outgoing=False, csum_partial=False)
    assert packet[12:20] == V4("93.184.215.14") + V4("192.0.2.2")
    assert not packet_fields.is_flow_opener(f)


def test_egress_maps_the_backend_resolver_and_leaves_link_chatter_out():
    synth = EgressSynthesiser(_Fixed(V4("127.0.0.1"), {V4("10.0.2.3"): V4("127.0.0.53")}))
    frame = _ether(_tcp_v4(V4("10.0.2.100"), V4("10.0.2.3"), 5353, 53, 0x02))
    packet, _ = synth.synthesise(frame, packet_fields.parse(frame, 14), outgoing=True, csum_partial=False)
    assert packet[16:20] == V4("127.0.0.53")
    link_local = _ether(_tcp_v4(V4("10.0.2.100"), V4("169.254.1.1"), 1, 2, 0x02))
    assert synth.synthesise(link_local, packet_fields.parse(link_local, 14), outgoing=True, csum_partial=False) is None
    assert packet_fields.parse(b"\x00" * 14 + b"\x45", 14) is None  # too short to be anything


def test_sandbox_addresses_leave_loopback_out():
    from netwrap.capture.session import sandbox_addresses

    found = sandbox_addresses(os.getpid())
    assert all(len(a) in (4, 16) for a in found)
    assert V4("127.0.0.1") not in found and bytes(15) + b"\x01" not in found


def test_host_resolver_forwarders_pick_the_same_family(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("search x\nnameserver 2001:db8::53\nnameserver 127.0.0.53\n")
    got = host_resolver_forwarders(("169.254.0.53", "fd00::3"), str(conf))
    assert got == {V4("169.254.0.53"): V4("127.0.0.53"),
                   socket.inet_pton(socket.AF_INET6, "fd00::3"): socket.inet_pton(socket.AF_INET6, "2001:db8::53")}


# -- wire-egress matching -----------------------------------------------------------------------

def _host(ts: int, src: str, dst: str, sport: int, dport: int, flags: int) -> tuple[HostPacket, packet_fields.Fields]:
    frame = _ether(_tcp_v4(V4(src), V4(dst), sport, dport, flags))
    return HostPacket(ts, 2, 1, frame, len(frame)), packet_fields.parse(frame, 14)


def _expected(src: str, dst: str, dport: int) -> packet_fields.Fields:
    return packet_fields.parse(_tcp_v4(V4(src), V4(dst), 40000, dport, 0x02), 0)


def test_wire_keeps_the_backend_flow_and_not_others():
    m = WireMatcher()
    assert m.expect(1000, _expected("192.0.2.2", "93.184.215.14", 80)) == []
    syn, f = _host(2000, "192.0.2.2", "93.184.215.14", 51000, 80, 0x02)
    assert m.offer(syn, f) == [syn]
    back, f = _host(2100, "93.184.215.14", "192.0.2.2", 80, 51000, 0x12)
    assert m.offer(back, f) == [back]
    # Another process's flow to the same place, with nothing expected for it.
    other, f = _host(3000, "192.0.2.2", "93.184.215.14", 52000, 80, 0x02)
    assert m.offer(other, f) == []
    m.flush()
    assert m.unmatched == 1


def test_wire_matches_host_packets_read_before_the_child_packet():
    m = WireMatcher()
    syn, f = _host(2000, "192.0.2.2", "93.184.215.14", 51000, 80, 0x02)
    assert m.offer(syn, f) == []
    back, f = _host(2100, "93.184.215.14", "192.0.2.2", 80, 51000, 0x12)
    assert m.offer(back, f) == []
    assert m.expect(1500, _expected("192.0.2.2", "93.184.215.14", 80)) == [syn, back]


def test_wire_ignores_a_host_flow_older_than_the_child_flow_or_too_late():
    m = WireMatcher()
    early, f = _host(1000, "192.0.2.2", "93.184.215.14", 51000, 80, 0x02)
    m.offer(early, f)
    assert m.expect(1000 + 5_000_000, _expected("192.0.2.2", "93.184.215.14", 80)) == []
    late, f = _host(1000 + 5_000_000 + WINDOW_NS + 1, "192.0.2.2", "93.184.215.14", 51001, 80, 0x02)
    assert m.offer(late, f) == []


# -- the benchmark's report ------------------------------------------------------------------------

def test_capture_benchmark_report_lines():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "capture_throughput.py"
    spec = importlib.util.spec_from_file_location("capture_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = [dict(backend="pasta", bitrate="1G", direction="up", capture=False, gbit_s=1.0),
            dict(backend="pasta", bitrate="1G", direction="up", capture=True, gbit_s=0.99, captured=15000,
                 dropped=0, file_mb=500.0)]
    table = module.report(rows, 4)
    assert "| pasta | 1G | up | 1.00 | 0.99 | 0.99 | 15000 | 0 | 500 |" in table
