"""The run's outputs: a markdown table, results.json, chart.png."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .measure import Measurements
from .probes import PROBES
from .rows import Result

COLUMNS = ("row", "metric", "netwrap", "anchor", "ratio", "target", "met", "ceiling (host)", "netwrap/host", "note")


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    text = f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    return f"{text} {unit}".strip()


def _met(result: Result) -> str:
    if result.meets_target is None:
        return "–"
    return "yes" if result.meets_target else "no"


def table(results: list[Result]) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in results:
        cells = (r.row, r.metric, _num(r.netwrap, r.unit), f"{_num(r.anchor, r.unit)} ({r.anchor_name})",
                 "n/a" if r.ratio is None else f"{r.ratio:.3f}", r.target, _met(r), _num(r.ceiling, r.unit) if r.ceiling_name else "–",
                 _num(r.of_ceiling) if r.ceiling_name else "–", r.note.replace("|", "/"))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def write_json(path: Path, meta: dict[str, Any], results: list[Result], measurements: Measurements) -> None:
    doc = {
        "meta": meta,
        "rows": [asdict(r) for r in results],
        # Every path's numbers per probe, the anchors that no row uses included (raw slirp4netns
        # before netwrap has that backend).
        "measurements": [
            {"probe": m.probe, "path": m.path, "unit": m.unit, "median": m.median, "samples": m.samples,
             "details": m.details, "errors": m.errors} for m in measurements.values()],
    }
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


def write_markdown(path: Path, meta: dict[str, Any], results: list[Result]) -> None:
    lines = [f"# netwrap benchmarks, {meta['timestamp']}", "",
             f"{meta['machine']}; repetitions {meta['reps']}, {meta['seconds']:g} s per run; "
             f"runs as {meta['user']}; values are medians; ratio = netwrap / anchor.", "",
             table(results), ""]
    path.write_text("\n".join(lines))


def write_chart(path: Path, meta: dict[str, Any], measurements: Measurements) -> None:
    """Grouped bars, one group per probe, one bar per path; throughput and latency side by side."""
    import matplotlib

    matplotlib.use("Agg")  # no display; import pyplot only after choosing the backend
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    path_names = list(dict.fromkeys(m.path for m in measurements.values()))
    panels = [(kind, [p for p in PROBES.values() if p.kind == kind
                      and any(m.probe == p.name for m in measurements.values())])
              for kind in ("throughput", "latency")]
    panels = [(kind, probes) for kind, probes in panels if probes]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5),
                             gridspec_kw={"width_ratios": [len(p) for _, p in panels]}, squeeze=False)
    width = 0.8 / max(1, len(path_names))
    for ax, (kind, probes) in zip(axes[0], panels):
        for i, name in enumerate(path_names):
            xs, heights = [], []
            for x, probe in enumerate(probes):
                m = measurements.get((probe.name, name))
                if m is not None and m.median is not None:
                    xs.append(x - 0.4 + width * (i + 0.5))
                    heights.append(m.median)
            if xs:
                bars = ax.bar(xs, heights, width, label=name)
                ax.bar_label(bars, fmt="%.3g", fontsize=6, rotation=90, padding=2)
        ax.set_xticks(range(len(probes)), [p.name for p in probes])
        unit = probes[0].unit
        if kind == "throughput":
            ax.set_yscale("log")  # host runs ~100x a stalling backend: keep both readable
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_title(f"TCP throughput ({unit}, higher is better)")
        else:
            ax.set_title(f"round trip ({unit}, lower is better)")
        ax.margins(y=0.15)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(f"netwrap benchmarks {meta['timestamp']} ({meta['reps']} reps x {meta['seconds']:g} s, medians)")
    fig.tight_layout(rect=(0, 0.05, 1, 1))  # room for the legend under the panels
    fig.savefig(path, dpi=120)
    plt.close(fig)
