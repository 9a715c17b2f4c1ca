"""The test world: a sealed little internet for netwrap's end-to-end tests.

Two network namespaces made by the test run (root needed), joined by two veths:

  host  nwh<pid>   where netwrap runs; lo + nwveth0 (192.0.2.2/24, 2001:db8:ff::2/64),
                   default routes to the internet; a second uplink nwveth2 (198.18.0.2/24,
                   2001:db8:fe::2/64) with defaults of a higher metric and source-address
                   rules (for --iface); a stub resolver on 127.0.0.53;
                   /etc/resolv.conf is a symlink naming only 127.0.0.53
  inet  nwi<pid>   answers *every* address (AnyIP): HTTP on 80 and 8080, HTTPS on
                   443, DNS on 53 (UDP+TCP), UDP echo on 7, all served by worldd

Before anything is sent, the guard checks that the host's only interfaces are
lo and the two veths and that every route leaves by one of them (else pytest.exit).

The `world` fixture (session) yields a World:

  world.run(argv, *, user=True, input=None, timeout=60, env=None, cwd=None, ns="host")
        -> CompletedProcess (text, stdout/stderr captured); runs in the host
        namespace (ns="inet": in the internet) as the test user (user=False:
        as root; a str: that user), clean environment (env= adds to it),
        PYTHONPATH=<runtime copy of netwrap>, HOME=<world dir>; raises
        TimeoutExpired after `timeout` (the command is killed)
  world.popen(argv, *, user=True, env=None, cwd=None, **popen_kwargs) -> Popen
        same, not waited for; pid is the command's; same process group as pytest
  world.netwrap(*args, user=True, **run_kw)   run `python -m netwrap ARGS`
  world.netwrap_cmd(*args)                    [python, -m, netwrap, *args] for run/popen
  world.netwrap_argv(*args, user=True, env=None, cwd=None)
        the full launcher argv (enter.py ... -- python -m netwrap ARGS), for
        pty.fork()/exec or subprocess with your own plumbing
  world.launcher_argv(argv, *, ns="host", user=True, env=None, cwd=None)
  world.mark() -> Mark;  world.http_log(since=mark), dns_log(), echo_log(),
        resolver_log() -> list[dict]; wait_http(predicate, timeout=5, since=None)
        and wait_log(read, predicate, timeout) poll until a record matches
  world.spawn_server(ns="host", http=[("127.0.0.1", 0)], https=..., dns=..., echo=...,
        forward=None) -> Daemon with .port(kind), .log(kind, since), .stop()
  world.zone_records({name: {type: [values]}}) -> context manager: those names in the
        world's DNS zone (worldd re-reads the file on change), restored on exit
  world.user (name, uid, gid), world.ca_file, world.user_dir() (a fresh dir the
        user owns), world.host_ns / inet_ns (names), world.netns_path("host")
  constants: WORLD_V4 93.184.215.14, WORLD_V6 2606:4700::1111, DNS_V4 198.51.100.53,
        DNS_V6 2001:db8:53::53, HTTP_PORT 80, HTTP_ALT_PORT 8080, HTTPS_PORT 443,
        ECHO_PORT 7, HOST_V4, HOST_V6, HOST_RESOLVER 127.0.0.53

Log records (one JSON object per line, written before the answer is sent):
  http: time, listener (http|https), port, peer, peer_port, local, request,
        method, path, host, headers [[name, value]...], body_size
  dns:  time, proto (udp|tcp), peer, peer_port, local (the queried address),
        port, qname, qtype, rcode, answers (+ upstream, error for the resolver)
  echo: time, proto, service, peer, peer_port, local, port, size

HTTP paths: /hello, /echo, /bytes/N (world.bytegen.sha256_hex(N) is its
digest), anything else 404.  Zone: see world.addresses.ZONE.

Modules: harness (World, open_world), netns, guard, certs, testuser, runtime,
daemons (start/stop worldd), enter (the launcher), and the daemon's own
stdlib-only modules worldd, httpd, dnsd, dnswire, udpd, tcpserver, jsonlog,
sockaddr, bytegen, addresses.
"""

from .addresses import DNS_V4, DNS_V6, HTTP_PORT, WORLD_V4, WORLD_V6

__all__ = ["DNS_V4", "DNS_V6", "HTTP_PORT", "WORLD_V4", "WORLD_V6", "World", "open_world", "Mark"]


def __getattr__(name: str):
    # Lazy: worldd imports this package too and should not pay for the harness.
    if name in ("World", "open_world", "Mark", "WorldError", "WorldRefused"):
        from . import harness

        return getattr(harness, name)
    raise AttributeError(name)
