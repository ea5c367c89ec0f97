"""``python -m gtp_ref.apps.bench plot ROWS.json... --figure PNG``: the throughput figure, from saved rows.

One panel per (device, model, batch, dtype): each method's speed-up over the unreduced model
(fused attention, same run and execution mode: eager, CUDA-graph replay or compiled) against P,
with its interquartile range, the line of no change at 1, and the speed-up the backbone's MACs
allow (dashed).  Speed-ups, not images per second, so the expected line and
the measurements share one scale.  The same colour marks a method in every figure.
"""

import argparse
import json
from typing import Any

from gtp_ref.style import COLORS

# The suffix sets the line style; the colour is the method's in every figure (gtp_ref.style).
STYLES = {"": "o-", "graph": "o--", "compile": "s-."}
ROW_KEYS = {
    "model": str,
    "method": str,
    "num_prop": int,
    "batch": int,
    "dtype": str,
    "img_per_s": (int, float),
    "expected_speedup": (int, float),
}


def add_arguments(sub: Any) -> None:
    pl = sub.add_parser("plot", help="redraw the throughput figure from saved --json-out files")
    pl.add_argument("json", nargs="+", help="JSON files written by 'throughput --json-out'")
    pl.add_argument("--figure", required=True, metavar="PNG", help="PNG path to write")


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from gtp_ref.cli import output_path

    output_path(parser, "--figure", args.figure, suffixes=[".png"])
    args.docs = [load(parser, path) for path in args.json]


def load(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    """A throughput JSON document, checked: exit 2 with one line on anything malformed."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        parser.error(f"cannot read throughput rows from {path}: {e}")
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list) or not doc["rows"]:
        parser.error(f"{path}: not a throughput result (a JSON object with a non-empty 'rows' list)")
    for i, row in enumerate(doc["rows"]):
        bad = [k for k, t in ROW_KEYS.items() if not isinstance(row, dict) or not isinstance(row.get(k), t)]
        if bad:
            parser.error(f"{path}: row {i} lacks or mistypes {', '.join(bad)} (is it a 'throughput' result?)")
    if not any(r["method"] == "baseline_fused" for r in doc["rows"]):
        parser.error(f"{path}: no baseline_fused row to measure speed-ups against")
    return doc


def device_label(env: dict[str, Any]) -> str:
    """'cuda (NVIDIA H100 80GB HBM3)' or 'cpu (AMD EPYC), 2 threads': the title's second line."""
    label = f"{env.get('device', '?')} ({env.get('device_name', '?')})"
    return label + (
        f", {env['threads']} threads" if env.get("device") == "cpu" and env.get("threads") else ""
    )


def run(args: argparse.Namespace) -> Any:
    from gtp_ref.apps.bench.throughput import add_speedups

    panels = {}
    for doc in args.docs:
        add_speedups(doc["rows"])
        label = device_label(doc)
        for r in doc["rows"]:
            panels.setdefault((label, r["model"], r["batch"], r["dtype"]), []).append(r)
    from gtp_ref.cli import write_files

    return write_files(args.parser, "--figure", [args.figure], lambda: draw(panels, args.figure))


def draw(panels: dict[tuple, list[dict[str, Any]]], path: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(max(8.5, 5.5 * cols), 4.6 * nrows), squeeze=False, constrained_layout=True
    )
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, ((device, model, batch, dtype), rows) in zip(axes.flat, sorted(panels.items())):
        methods = sorted({r["method"] for r in rows if r["num_prop"]})
        for method in methods:
            pts = sorted(
                (
                    r["num_prop"],
                    r["speedup"],
                    r["speedup"] * r.get("img_per_s_q1", r["img_per_s"]) / r["img_per_s"],
                    r["speedup"] * r.get("img_per_s_q3", r["img_per_s"]) / r["img_per_s"],
                )
                for r in rows
                if r["method"] == method
            )
            P, speedup, low, high = zip(*pts)
            family, _, suffix = method.partition("+")
            yerr = [
                [max(0.0, s - lo) for s, lo in zip(speedup, low)],
                [max(0.0, hi - s) for s, hi in zip(speedup, high)],
            ]
            ax.errorbar(
                P,
                speedup,
                yerr=yerr,
                fmt=STYLES[suffix],
                color=COLORS.get(family, "black"),
                capsize=2,
                label=method.replace("_", " "),
            )
        for r in rows:  # the explicit-attention unreduced model, as a flat line
            if r["method"].startswith("baseline_explicit"):
                ax.axhline(
                    r["speedup"],
                    ls=":",
                    color=COLORS["baseline_explicit"],
                    lw=1,
                    label=f"{r['method'].replace('_', ' ')} (unreduced)",
                )
        expected = sorted(
            {
                (r["num_prop"], r["expected_speedup"])
                for r in rows
                if r["num_prop"] and not r["method"].startswith("tome")
            }
        )
        if expected:
            ax.plot(*zip(*expected), "k--", lw=1, label="expected from backbone MACs")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks(sorted({r["num_prop"] for r in rows if r["num_prop"]}))
        ax.set(
            xlabel="$P$ (ToMe's $r$): tokens removed per block",
            ylabel="speed-up over the unreduced model",
            title=f"{model}, batch {batch}, {dtype}\n{device}",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return [path]
