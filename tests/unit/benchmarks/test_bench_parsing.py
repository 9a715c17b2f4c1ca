"""Parsing of what the benchmark tools print (benchmarks/nwbench/parse.py).

The samples in bench_samples/ were captured from real runs in the test world
(iperf3 3.12, sockperf 3.7), unedited.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parent / "bench_samples"
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

from nwbench import parse, probes  # noqa: E402


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


def test_iperf3_upload_one_stream_is_the_receivers_count() -> None:
    result = parse.iperf3_json(sample("iperf3-up-P1.json"))
    # end.sum_received, not sum_sent (10.847e9: the sender counts bytes not yet acknowledged)
    assert result.bits_per_second == pytest.approx(10809037948.987915)
    assert result.gbit_per_second == pytest.approx(10.809, abs=1e-3)
    assert (result.streams, result.reverse, result.retransmits) == (1, False, 386)
    assert result.seconds == pytest.approx(1.002978)


def test_iperf3_download_four_streams() -> None:
    result = parse.iperf3_json(sample("iperf3-down-P4.json"))
    assert result.bits_per_second == pytest.approx(16882745980.07851)
    assert (result.streams, result.reverse, result.retransmits) == (4, True, 3)


def test_iperf3_error_in_json_is_a_parse_error() -> None:
    # iperf3 reports "connection refused" inside the JSON (and may exit 0).
    with pytest.raises(parse.ParseError, match="unable to connect to server: Connection refused"):
        parse.iperf3_json(sample("iperf3-refused.json"))


@pytest.mark.parametrize("text", ["", "iperf3: error - bad option", "[]", '{"start": {}, "end": {}}'])
def test_iperf3_without_a_result_is_a_parse_error(text: str) -> None:
    with pytest.raises(parse.ParseError):
        parse.iperf3_json(text)


def test_sockperf_full_rtt() -> None:
    result = parse.sockperf_output(sample("sockperf-tcp-full-rtt.txt"))
    assert (result.avg_us, result.std_dev_us, result.round_trip) == (17.817, 18.447, True)
    assert result.observations == 30836
    assert result.percentiles["p50"] == 16.721
    assert result.percentiles["p99"] == 29.875
    assert result.percentiles["p99.9"] == 72.515
    assert result.percentiles["p99.999"] == 1484.045
    assert (result.percentiles["min"], result.percentiles["max"]) == (16.470, 1484.045)


def test_sockperf_default_reports_half_the_round_trip() -> None:
    result = parse.sockperf_output(sample("sockperf-udp-half-rtt.txt"))
    assert (result.avg_us, result.round_trip, result.observations) == (7.867, False, 35030)
    assert result.percentiles["p99"] == 14.296


def test_sockperf_refused_is_a_parse_error() -> None:
    # sockperf exits 0 here; only its output says it measured nothing.
    with pytest.raises(parse.ParseError, match="Connection refused"):
        parse.sockperf_output(sample("sockperf-refused.txt"))


def test_listening_ports_tcp_and_udp() -> None:
    assert parse.listening_ports(sample("proc-net-tcp.txt"), "tcp") == {5201, 11111}
    assert parse.listening_ports(sample("proc-net-udp.txt"), "udp") == {7, 53, 11112}


def test_listening_ports_ignores_connections() -> None:
    # Constructed: a header plus one ESTABLISHED (01) socket on port 5201.
    table = ("  sl  local_address rem_address   st\n"
             "   0: 0ED7B85D:1451 0200000C:9C40 01 00000000:00000000 00:00000000 00000000 0 0 1 1\n")
    assert parse.listening_ports(table, "tcp") == set()


def test_probe_parsers_return_the_unit_value() -> None:
    value, details = probes.PROBES["tcp-down-4"].parse(sample("iperf3-down-P4.json"))
    assert value == pytest.approx(16.883, abs=1e-3) and details["retransmits"] == 3
    value, details = probes.PROBES["lat-tcp"].parse(sample("sockperf-tcp-full-rtt.txt"))
    assert value == 17.817 and details["p99"] == 29.875


def test_probe_clients_name_the_server_and_duration() -> None:
    server = probes.Endpoint("93.184.215.14", 5201)
    argv = probes.PROBES["tcp-down-4"].client(server, 3)
    assert argv[:5] == ["iperf3", "--client", "93.184.215.14", "--port", "5201"]
    assert {"--reverse", "--json"} <= set(argv) and argv[argv.index("--parallel") + 1] == "4"
    assert "--reverse" not in probes.PROBES["tcp-up-1"].client(server, 3)
    argv = probes.PROBES["lat-udp"].client(probes.Endpoint("93.184.215.14", 11112), 3)
    assert argv[argv.index("-t") + 1] == "3" and "--tcp" not in argv and "--full-rtt" in argv
