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
"""
