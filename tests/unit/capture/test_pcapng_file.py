"""The capture file writer: files tshark reads, counters that add up.

Every file written here is read back with tshark (exit 0, nothing on stderr
but tshark's own note about running as root) and the metadata with capinfos:
on tshark/capinfos 4.0, `capinfos -F -I` prints the section's "Capture
application" and each interface's Name and Description; tshark's
`frame.interface_name` / `frame.interface_description` fields show them per
packet. Neither prints the values of interface statistics blocks (capinfos
only counts them), so those are read back with python-pcapng.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import netwrap
from netwrap.capture.writer import CaptureWriter, QueueLimits
from netwrap.errors import UsageError
from netwrap.capture.pcapng_file import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    CaptureFile,
    describe_interface,
)
from netwrap.capture.tail_guard import TailGuard

from inet_checksum import ref_csum

REPO = Path(__file__).resolve().parents[3]
ROOT_NOTE = 'Running as user "root" and group "root". This could be dangerous.'
BASE_NS = 1_700_000_000_123_456_789  # a timestamp whose nanoseconds show

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


# ------------------------------------------------------------ packet makers


def ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    import socket

    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, 64, proto, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    return hdr[:10] + struct.pack("!H", ref_csum(hdr)) + hdr[12:] + payload


def ipv6(src: str, dst: str, nxt: int, payload: bytes) -> bytes:
    import socket

    return (
        struct.pack("!IHBB", 6 << 28, len(payload), nxt, 64)
        + socket.inet_pton(socket.AF_INET6, src)
        + socket.inet_pton(socket.AF_INET6, dst)
        + payload
    )


def tcp(sport: int, dport: int, data: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x18, 65535, 0, 0) + data


def udp(sport: int, dport: int, data: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def icmp_echo(kind: int = 8) -> bytes:
    body = struct.pack("!BBHHH", kind, 0, 0, 0x1234, 1) + b"ping"
    return body[:2] + struct.pack("!H", ref_csum(body)) + body[4:]


def ethernet(ethertype: int, payload: bytes) -> bytes:
    return bytes.fromhex("02000000000202000000000a") + struct.pack("!H", ethertype) + payload


RAW_PACKETS = [
    ("ip:tcp", "10.0.0.2", ipv4("10.0.0.2", "93.184.216.34", 6, tcp(40000, 80, b"GET / HTTP/1.1\r\n\r\n"))),
    ("ip:udp", "10.0.0.2", ipv4("10.0.0.2", "9.9.9.9", 17, udp(40001, 5353, b"hello"))),
    ("ip:icmp", "10.0.0.2", ipv4("10.0.0.2", "8.8.8.8", 1, icmp_echo())),
    ("ipv6:tcp", "fd00::2", ipv6("fd00::2", "2001:db8::1", 6, tcp(40002, 443))),
    ("ipv6:udp", "fd00::2", ipv6("fd00::2", "2001:db8::53", 17, udp(40003, 5353, b"x"))),
    ("ipv6:icmpv6", "fd00::2", ipv6("fd00::2", "2001:db8::1", 58, icmp_echo(128))),
]


# ------------------------------------------------------------------ helpers


def run_tool(program: str, *args: str) -> str:
    """Its stdout; a non-zero exit raises sh.ErrorReturnCode (argv, status, stderr)."""
    import sh

    # _tty_out=False: sh would give it a terminal; tools print for a pipe otherwise.
    return sh.Command(program)(*args, _tty_out=False, _timeout=60)


def tshark(*args: str) -> str:
    """tshark's stdout; it must exit 0 and say nothing on stderr but the root note."""
    import sh

    done = sh.Command("tshark")(*args, _tty_out=False, _timeout=60, _return_cmd=True)
    noise = [line for line in done.stderr.decode().splitlines() if line.strip() and line != ROOT_NOTE]
    assert not noise, done.stderr
    return done.stdout.decode()


def fields(path: Path, *names: str) -> list[list[str]]:
    args = ["-r", str(path), "-T", "fields", "-E", "separator=|"]
    for name in names:
        args += ["-e", name]
    return [line.split("|") for line in tshark(*args).splitlines()]


def statistics(path: Path) -> dict[int, dict[str, int]]:
    """The interface statistics blocks, by interface id."""
    import warnings

    import pcapng

    out = {}
    with open(path, "rb") as f, warnings.catch_warnings():
        # python-pcapng 2.1 warns when it decodes if_tsresol (untyped option)
        warnings.simplefilter("ignore", DeprecationWarning)
        for block in pcapng.FileScanner(f):
            if type(block).__name__ == "InterfaceStatistics":
                out[block.interface_id] = {k: v for k, v in block.options.items()}
    return out


def wait_for_guard(path: Path) -> None:
    """The guard of a dead writer keeps the flock until its repair is done."""
    with open(path, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_SH)


def run_python(code: str, *args: str, **kw) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))  # this checkout, not an installed netwrap
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw,
    )  # fmt: skip


# ------------------------------------------------------------------- opening


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/nonexistent-netwrap-dir/run.pcapng", "does not exist"),
        ("/tmp", "is a directory"),
        ("/dev/null", "not a regular file"),
        ("", "empty path"),
    ],
)
def test_bad_paths_are_usage_errors(path, message):
    with pytest.raises(UsageError) as exc:
        CaptureFile.open(path)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_file_in_use_by_another_run_is_refused(tmp_path, monkeypatch):
    import netwrap.capture.pcapng_file as pcapng_file

    monkeypatch.setattr(pcapng_file, "_LOCK_WAIT", 0.1)
    path = tmp_path / "busy.pcapng"
    with CaptureFile.open(path):
        with pytest.raises(UsageError, match="in use"):
            CaptureFile.open(path)


def test_opened_file_is_readable_before_any_packet(tmp_path):
    path = tmp_path / "empty.pcapng"
    with CaptureFile.open(path) as f:
        tshark("-r", str(path))  # section header only, already on disk
        f.add_interface("child", LINKTYPE_RAW, "x")
        tshark("-r", str(path))


def test_existing_file_is_replaced(tmp_path):
    path = tmp_path / "old.pcapng"
    path.write_bytes(b"not a capture" * 1000)
    with CaptureFile.open(path) as f:
        f.add_interface("child", LINKTYPE_RAW, "x")
        f.write_packet(0, BASE_NS, RAW_PACKETS[0][2])
    assert len(fields(path, "frame.number")) == 1


# ------------------------------------------------------------------ contents


def test_raw_ip_packets_read_back_with_ns_timestamps(tmp_path):
    path = tmp_path / "raw.pcapng"
    with CaptureFile.open(path) as f:
        iface = f.add_interface("child", LINKTYPE_RAW, describe_interface(view="child", backend="tunrelay"))
        for i, (_proto, _src, pkt) in enumerate(RAW_PACKETS):
            assert f.write_packet(iface, BASE_NS + i * 1_000_001, pkt)
    rows = fields(path, "frame.time_epoch", "ip.src", "ipv6.src", "frame.protocols", "frame.len")
    assert len(rows) == len(RAW_PACKETS)
    for i, (row, (proto, src, pkt)) in enumerate(zip(rows, RAW_PACKETS)):
        ts = BASE_NS + i * 1_000_001
        assert row[0] == f"{ts // 10**9}.{ts % 10**9:09d}"
        assert src in (row[1], row[2])
        assert row[3].startswith("raw:" + proto)
        assert row[4] == str(len(pkt))


def test_ethernet_and_raw_interfaces_in_one_file(tmp_path):
    path = tmp_path / "two.pcapng"
    with CaptureFile.open(path) as f:
        tap = f.add_interface("nwtap0", LINKTYPE_ETHERNET, describe_interface(view="child", backend="pasta"))
        f.write_packet(tap, BASE_NS, ethernet(0x0800, RAW_PACKETS[0][2]))
        egress = f.add_interface("egress", LINKTYPE_RAW, describe_interface(view="egress", backend="pasta"))
        f.write_packet(egress, BASE_NS + 1, RAW_PACKETS[3][2])
        f.write_packet(tap, BASE_NS + 2, ethernet(0x86DD, RAW_PACKETS[5][2]), orig_len=2000)
    rows = fields(path, "frame.interface_id", "frame.interface_name", "frame.protocols", "frame.len", "frame.cap_len")
    assert [r[:2] for r in rows] == [["0", "nwtap0"], ["1", "egress"], ["0", "nwtap0"]]
    assert rows[0][2].startswith("eth:ethertype:ip:tcp")
    assert rows[1][2].startswith("raw:ipv6:tcp")
    assert rows[2][2].startswith("eth:ethertype:ipv6:icmpv6")
    assert rows[2][3:] == ["2000", str(14 + len(RAW_PACKETS[5][2]))]


def test_section_and_interface_metadata(tmp_path):
    path = tmp_path / "meta.pcapng"
    desc = describe_interface(view="child", backend="pasta", detail="what the command sent and received")
    with CaptureFile.open(path) as f:
        f.add_interface("nwtap0", LINKTYPE_ETHERNET, desc)
        f.add_interface("egress", LINKTYPE_RAW, describe_interface(view="egress", backend="pasta"))
    info = run_tool("capinfos", "-F", "-I", str(path))
    assert f"Capture application: netwrap {netwrap.__version__}" in info
    assert "Name = nwtap0" in info
    assert f"Description = {desc}" in info
    assert "Description = netwrap view=egress backend=pasta" in info
    assert "Time precision = nanoseconds (9)" in info
    # And per packet, through tshark's frame fields.
    with CaptureFile.open(path) as f:
        f.add_interface("nwtap0", LINKTYPE_ETHERNET, desc)
        f.write_packet(0, BASE_NS, ethernet(0x0800, RAW_PACKETS[1][2]))
    assert fields(path, "frame.interface_name", "frame.interface_description") == [["nwtap0", desc]]


def test_statistics_blocks_at_close(tmp_path):
    path = tmp_path / "stats.pcapng"
    with CaptureFile.open(path) as f:
        a = f.add_interface("a", LINKTYPE_RAW, "a")
        b = f.add_interface("b", LINKTYPE_RAW, "b")
        for i in range(5):
            f.write_packet(a, BASE_NS + i, RAW_PACKETS[0][2])
        f.close({a: (100, 7)})
    stats = statistics(path)
    assert stats[a]["isb_ifrecv"] == 100
    assert stats[a]["isb_ifdrop"] == 7
    assert stats[a]["isb_usrdeliv"] == 5
    assert stats[b]["isb_ifrecv"] == 0 and stats[b]["isb_ifdrop"] == 0
    assert stats[a]["isb_starttime"] <= stats[a]["isb_endtime"]
    tshark("-r", str(path))


def test_batch_larger_than_a_chunk(tmp_path):
    path = tmp_path / "big.pcapng"
    pkt = ipv4("10.0.0.2", "10.0.0.3", 17, udp(1, 2, bytes(65000)))
    with CaptureFile.open(path) as f:
        f.add_interface("child", LINKTYPE_RAW, "x")
        assert f.write_packets([(0, BASE_NS + i, pkt) for i in range(40)]) == 40
        assert f.counts(0) == (40, 40 * len(pkt), 0)
    assert len(fields(path, "frame.number")) == 40


# -------------------------------------------------------------------- writer


def test_writer_round_trip(tmp_path):
    path = tmp_path / "w.pcapng"
    w = CaptureWriter.open(str(path))
    iface = w.add_interface("child", LINKTYPE_RAW, describe_interface(view="child", backend="pasta"))
    w.start()
    for i in range(1000):
        assert w.submit(iface, BASE_NS + i, RAW_PACKETS[i % len(RAW_PACKETS)][2])
    late = w.add_interface("egress", LINKTYPE_RAW, "added while running")
    assert w.submit(late, BASE_NS + 1000, RAW_PACKETS[0][2])
    s = w.stop(time.monotonic() + 5, tap_stats={iface: (1003, 3)})
    assert (s.captured, s.dropped_queue, s.dropped_tap, s.dropped_write, s.error) == (1001, 0, 3, 0, None)
    assert s.bytes == sum(len(RAW_PACKETS[i % len(RAW_PACKETS)][2]) for i in range(1000)) + len(RAW_PACKETS[0][2])
    assert "1001 packets" in s.line()
    assert len(fields(path, "frame.number")) == 1001
    stats = statistics(path)
    assert (stats[iface]["isb_ifrecv"], stats[iface]["isb_ifdrop"]) == (1003, 3)
    assert (stats[late]["isb_ifrecv"], stats[late]["isb_usrdeliv"]) == (1, 1)


def test_writer_queue_overflow_is_counted(tmp_path):
    path = tmp_path / "full.pcapng"
    w = CaptureWriter.open(str(path), limits=QueueLimits(packets=8, bytes=1 << 20))
    a = w.add_interface("a", LINKTYPE_RAW, "a")
    b = w.add_interface("b", LINKTYPE_RAW, "b")
    # Not started: nothing drains, so the queue fills and submit drops.
    results = [w.submit(a if i % 2 else b, BASE_NS + i, RAW_PACKETS[0][2]) for i in range(20)]
    assert results.count(True) == 8
    s = w.stop(time.monotonic() + 5)
    assert s.captured == 8
    assert s.dropped_queue == 12
    assert {i.name: i.dropped_queue for i in s.interfaces} == {"a": 6, "b": 6}
    assert not w.submit(a, BASE_NS, RAW_PACKETS[0][2])  # after stop: dropped, counted
    assert w.summary().dropped_queue == 13
    stats = statistics(path)
    assert (stats[a]["isb_ifrecv"], stats[a]["isb_ifdrop"], stats[a]["isb_usrdeliv"]) == (10, 6, 4)
    assert len(fields(path, "frame.number")) == 8


def test_writer_queue_bounded_by_bytes(tmp_path):
    w = CaptureWriter.open(str(tmp_path / "bytes.pcapng"), limits=QueueLimits(packets=1000, bytes=3000))
    iface = w.add_interface("a", LINKTYPE_RAW, "a")
    pkt = bytes(1400)
    assert [w.submit(iface, BASE_NS, pkt) for _ in range(4)] == [True, True, False, False]
    assert w.stop(time.monotonic() + 5).dropped_queue == 2


def test_stop_deadline_drops_and_counts_the_backlog(tmp_path):
    w = CaptureWriter.open(str(tmp_path / "late.pcapng"))
    iface = w.add_interface("a", LINKTYPE_RAW, "a")
    for i in range(100):
        w.submit(iface, BASE_NS + i, RAW_PACKETS[0][2])
    s = w.stop(time.monotonic() - 1)  # deadline already passed
    assert s.captured + s.dropped_queue == 100
    assert s.dropped_queue == 100
    tshark("-r", str(tmp_path / "late.pcapng"))


def test_capture_modules_import_without_pcapng():
    code = "import sys, netwrap.capture.writer; print('pcapng' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)),
                       capture_output=True, text=True, check=True)  # fmt: skip
    assert r.stdout.strip() == "False"


# ------------------------------------------------------ kills and full disks


def test_guard_cuts_a_partial_block_when_the_writer_dies(tmp_path):
    path = tmp_path / "g.pcapng"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"A" * 100)
        guard = TailGuard(fd)
        guard.commit(100)
        os.write(fd, b"half a block")
        os.close(guard._pipe)  # what the kernel does when netwrap dies
        guard._pipe = -1
        guard._proc.wait(10)
        os.close(guard._sizefd)
        assert os.fstat(fd).st_size == 100
    finally:
        os.close(fd)


def test_guard_leaves_a_cleanly_closed_file_alone(tmp_path):
    path = tmp_path / "ok.pcapng"
    with CaptureFile.open(path) as f:
        f.add_interface("child", LINKTYPE_RAW, "x")
        guard = f._guard
        assert guard is not None
    assert guard._proc.returncode == 0
    size = path.stat().st_size
    time.sleep(0.1)
    assert path.stat().st_size == size
    assert len(statistics(path)) == 1


WRITER_LOOP = """
    import sys, time
    from netwrap.capture.writer import CaptureWriter
    w = CaptureWriter.open(sys.argv[1])
    iface = w.add_interface("child", 101, "netwrap view=child backend=test")
    w.start()
    pkt = bytes.fromhex("450005dc000140004011000a0a0000020a000003") + bytes(1480)
    print("ready", flush=True)
    while True:
        w.submit(iface, time.time_ns(), pkt)
        time.sleep(0)  # a tap reader waits in read(2), releasing the GIL
"""


def test_sigkill_mid_run_leaves_a_readable_file(tmp_path):
    path = tmp_path / "killed.pcapng"
    for round_ in range(3):
        proc = run_python(WRITER_LOOP, str(path))
        try:
            assert proc.stdout.readline() == "ready\n"
            deadline = time.monotonic() + 20
            while path.stat().st_size < (round_ + 1) << 20 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            proc.kill()
            proc.communicate()
        wait_for_guard(path)
        count = len(fields(path, "frame.number"))
        assert count >= ((round_ + 1) << 20) // 1600


def _full_disk_script() -> str:
    return """
    import json, shutil, sys, time
    from netwrap.capture.writer import CaptureWriter
    path, copy = sys.argv[1], sys.argv[2]
    w = CaptureWriter.open(path)
    iface = w.add_interface("child", 101, "netwrap view=child backend=test")
    w.start()
    pkt = bytes.fromhex("450003e8000140004011000a0a0000020a000003") + bytes(980)
    accepted = 0
    for i in range(300):
        accepted += w.submit(iface, 1_700_000_000_000_000_000 + i, pkt)
        if i % 10 == 0:
            time.sleep(0.002)  # several batches, so the failure lands mid-stream
    s = w.stop(time.monotonic() + 5)
    shutil.copy(path, copy)
    print(json.dumps(dict(captured=s.captured, bytes=s.bytes, dropped_write=s.dropped_write,
                          dropped_queue=s.dropped_queue, error=s.error, accepted=accepted)))
    """


def _check_full_disk_result(out: str, copy: Path, errname: str) -> None:
    s = json.loads(out)
    assert s["error"] and errname in s["error"], s
    assert s["dropped_write"] > 0
    assert s["captured"] + s["dropped_write"] + s["dropped_queue"] == 300
    rows = fields(copy, "frame.number")
    assert len(rows) == s["captured"] > 0
    stats = statistics(copy)
    assert stats[0]["isb_usrdeliv"] == s["captured"]
    assert stats[0]["isb_ifdrop"] == s["dropped_write"] + s["dropped_queue"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_disk_full_leaves_a_readable_file_and_records_the_error(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    copy = tmp_path / "copy.pcapng"
    shell = 'mount -t tmpfs -o size=64k netwrap-test "$1" && exec "$2" -c "$3" "$1/cap.pcapng" "$4"'
    script = textwrap.dedent(_full_disk_script())
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", shell, "sh", str(mnt), sys.executable, script, str(copy)],
        env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    _check_full_disk_result(r.stdout, copy, "ENOSPC")


def test_file_size_limit_behaves_like_a_full_disk(tmp_path):
    import resource

    copy = tmp_path / "copy.pcapng"
    limit = 100_000

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = run_python(_full_disk_script(), str(tmp_path / "cap.pcapng"), str(copy), preexec_fn=limit_file_size)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    _check_full_disk_result(out, copy, "EFBIG")
    assert copy.stat().st_size <= limit


def test_bad_write_never_raises_into_the_submitter(tmp_path):
    w = CaptureWriter.open(str(tmp_path / "closed.pcapng"))
    iface = w.add_interface("a", LINKTYPE_RAW, "a")
    w.start()
    os.close(w._file._fd)  # the file turns to EBADF under the writer
    w._file._fd = os.open("/dev/null", os.O_RDONLY)  # keep the number valid for close()
    for i in range(10):
        w.submit(iface, BASE_NS + i, RAW_PACKETS[0][2])
    s = w.stop(time.monotonic() + 5)
    assert s.error and "EBADF" in s.error
    assert s.captured == 0 and s.dropped_write == 10
