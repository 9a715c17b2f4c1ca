"""worldd: the world's daemon (HTTP, HTTPS, DNS, UDP echo), one process.

Run as `python -m world.worldd` with the tests directory on PYTHONPATH, in
whichever namespace it should serve (the harness starts it through enter.py).
Listeners come from argv; every one is bound before the daemon writes one
JSON line to --ready-fd (the listeners with their actual ports, so port 0
works), which is the harness's only readiness signal.

  --http/--https/--dns/--echo ENDPOINT   repeatable; '[::]:80' is dual-stack
      (for UDP it means one IPv4 and one IPv6 socket, both answering from the
      queried address); '127.0.0.1:0' picks a free port.
  --zone FILE        JSON zone for --dns (name -> type -> [values]); re-read
                     whenever the file changes (replace it atomically)
  --forward ADDR     --dns forwards to ADDR port 53 instead (the host resolver)
  --cert/--key FILE  for --https
  --log-dir DIR      http.jsonl, dns.jsonl, echo.jsonl
  --ready-fd N

stdlib only: it runs with whatever python the harness runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading

from . import dnsd, udpd
from .httpd import HttpServer, tls_context
from .jsonlog import JsonLog
from .sockaddr import parse_endpoint


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="worldd")
    parser.add_argument("--http", action="append", default=[], type=parse_endpoint)
    parser.add_argument("--https", action="append", default=[], type=parse_endpoint)
    parser.add_argument("--dns", action="append", default=[], type=parse_endpoint)
    parser.add_argument("--echo", action="append", default=[], type=parse_endpoint)
    parser.add_argument("--zone")
    parser.add_argument("--forward")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    args = parser.parse_args(argv)
    if args.https and not (args.cert and args.key):
        parser.error("--https needs --cert and --key")
    if args.dns and not (args.zone or args.forward):
        parser.error("--dns needs --zone or --forward")
    return args


class ZoneFile:
    """The zone as the file says now: a test may change a name's answer mid-run."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._key: tuple | None = None
        self._zone: dict[str, dict[str, list[str]]] = {}
        self._lock = threading.Lock()

    def __call__(self) -> dict[str, dict[str, list[str]]]:
        with self._lock:
            st = os.stat(self.path)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if key != self._key:
                with open(self.path, encoding="utf-8") as file:
                    self._zone = {name.lower().rstrip("."): records for name, records in json.load(file).items()}
                self._key = key
            return self._zone


def start(args: argparse.Namespace) -> list[dict]:
    """Bind everything, start serving threads; return what is listening where."""
    logs = {name: JsonLog(os.path.join(args.log_dir, f"{name}.jsonl")) for name in ("http", "dns", "echo")}
    listening: list[dict] = []
    servers = []

    context = tls_context(args.cert, args.key) if args.https else None
    for kind, endpoints in (("http", args.http), ("https", args.https)):
        for host, port in endpoints:
            server = HttpServer((host, port), logs["http"], context if kind == "https" else None)
            servers.append(server)
            listening.append({"kind": kind, "proto": "tcp", "host": host, "port": server.port})

    if args.dns:
        if args.forward:
            respond = dnsd.forwarding((args.forward, 53), logs["dns"])
        else:
            respond = dnsd.authoritative(ZoneFile(args.zone), logs["dns"])
        for host, port in args.dns:
            sockets = udpd.open_sockets(host, port)
            port = sockets[0].getsockname()[1]
            # TCP on the same port as UDP, as resolvers expect.
            server = dnsd.TcpDnsServer((host, port), respond)
            servers.append(server)
            for sock in sockets:
                dnsd.serve_udp(sock, respond, threaded=bool(args.forward))
            listening.append({"kind": "dns", "proto": "udp+tcp", "host": host, "port": port})

    for host, port in args.echo:
        sockets = udpd.open_sockets(host, port)
        for sock in sockets:
            udpd.serve(sock, udpd.echo_handler(logs["echo"]), name=f"echo-{port}")
        listening.append({"kind": "echo", "proto": "udp", "host": host, "port": sockets[0].getsockname()[1]})

    for server in servers:
        threading.Thread(target=server.serve_forever, name=f"tcp-{server.port}", daemon=True).start()
    return listening


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        listening = start(args)
    except OSError as error:
        print(f"worldd: cannot listen: {error}", file=sys.stderr, flush=True)
        return 1
    with os.fdopen(args.ready_fd, "w") as ready:
        ready.write(json.dumps({"pid": os.getpid(), "listening": listening}) + "\n")
    # Serve until a signal ends the process (the harness sends SIGTERM).
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
