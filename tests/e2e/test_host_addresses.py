"""Flows to the host's own addresses are flows like any other: in the flow
log, the summary and the capture, on every backend.

(Reached versus closed is in test_foundation.py; refused by the presets in
test_policy.py.)
"""

from __future__ import annotations

import json
import os
import time

from world.harness import World


def test_flows_to_the_host_are_logged_counted_and_captured(world: World, backend) -> None:
    port = 20000 + (os.getpid() * 17 + int(time.time())) % 20000
    folder = world.user_dir("hostaddr")
    log, capture = folder / "flows.jsonl", folder / "run.pcapng"
    urls = [f"http://{World.HOST_V4}:{port}/hello", f"http://[{World.HOST_LO_V6}]:{port}/hello"]
    with world.spawn_server(ns="host", http=[("::", port)]) as server:
        done = world.netwrap(*backend.argv, "--flow-log", str(log), "--summary", "-c", str(capture), "--",
                             "sh", "-c", " && ".join(f"curl -sS -m 10 {u}" for u in urls))
        seen = server.log("http")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello from the world\n" * 2, done.stderr
    assert sorted(r["local"] for r in seen) == sorted([World.HOST_V4, World.HOST_LO_V6])

    # The flow log: one allowed TCP flow to each address, with its bytes.
    records = [json.loads(line) for line in log.read_text().splitlines()]
    to_host = {r["destination"]["address"]: r for r in records if r["destination"]["port"] == port}
    assert set(to_host) == {World.HOST_V4, World.HOST_LO_V6}, records
    for r in to_host.values():
        assert (r["protocol"], r["verdict"]) == ("tcp", "allow"), r
        assert r["bytes_sent"] > 0 and r["bytes_received"] > len("hello from the world\n"), r

    # The summary counts them.
    report = {line.split(":", 2)[1].strip(): line.split(":", 2)[2].strip()
              for line in done.stderr.splitlines() if line.startswith("netwrap: ")}
    assert report["flows"] == "2 allowed, 0 blocked", done.stderr

    # The capture holds each conversation: the SYN to the host's address and the request.
    for address, ip in ((World.HOST_V4, "ip"), (World.HOST_LO_V6, "ipv6")):
        shown = world.run(["tshark", "-r", str(capture), "-Y", f"tcp.port == {port} && {ip}.dst == {address}",
                           "-T", "fields", "-E", "separator=|", "-e", "tcp.flags.syn", "-e", "http.request.uri"])
        assert shown.returncode == 0 and shown.stderr == "", shown.stderr
        rows = [line.split("|") for line in shown.stdout.splitlines()]
        assert ["1", ""] in rows and ["0", "/hello"] in rows, (address, rows)
