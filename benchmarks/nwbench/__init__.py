"""The pieces of benchmarks/run.py, one concern each.

  parse     pure parsing of iperf3 JSON, sockperf output, /proc/net tables
  probes    what is measured (client argv + parser) and the servers it needs
  paths     how a client is run: host, raw pasta, raw slirp4netns, netwrap --backend B
  measure   running probes over paths, alternating, keeping every sample
  rows      which comparisons become rows, targets, ratios, the Result record
  startup   the `-- true` wall-time rows (timed inside the world by timer.py)
  report    markdown table, results.json, chart.png

Adding a row: a probe in probes.PROBES gets a row per backend; a path in
paths.extra_paths() plus a RowSpec in rows.extra_rows() compares any two
paths; a backend in BUILTIN gets rows against its raw form (rows.RAW_ANCHORS),
or against every raw backend when it has none.

Processes are driven with subprocess through the test world's launcher
(world.run / world.popen), not with `sh`: every command must enter the world's
namespaces through that launcher, whose API is subprocess-shaped and tracks
what it started for teardown; slirp4netns needs pass_fds for --ready-fd; and
the tools report through their output (iperf3 --json, sockperf's text), so
sh's conveniences (piping, baked commands) buy nothing here.
"""
