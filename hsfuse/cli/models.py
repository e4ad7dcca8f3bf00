"""`hsfuse models`: what is registered and what is installed."""

from __future__ import annotations


from . import options
from .common import emit_json, guard, out


def models(
    json_out: bool = options.json_flag(help="Print one JSON object on stdout."),
) -> None:
    """List the fusion models, their kind, what inputs they accept and which trained weights are installed.

    $ hsfuse models

    $ hsfuse models --json | jq '.models[] | select(.available) | .name'
    """
    with guard():
        from rich.table import Table

        from ..models.registry import describe_entry, list_models, weights_dir

        entries = [describe_entry(e) for e in list_models()]
        if json_out:
            emit_json({"weights_dir": str(weights_dir()), "models": entries})
            return
        t = Table(title="hsfuse models")
        for col in ("name", "kind", "accepts", "weights", "summary"):
            t.add_column(col, overflow="fold")
        for e in entries:
            if not e["needs_weights"]:
                w = "not needed"
            elif e["installed"]:
                def cost(i) -> str:  # the measured whole-run CPU cost next to gsa (benchmarks/bench_process.py)
                    c = i.get("cpu_cost_vs_gsa") or {}
                    return "; CPU " + ", ".join(f"{v:g}x gsa at x{k}" for k, v in c.items()) if c else ""

                w = ", ".join(f"{i['file']} (x{','.join(map(str, i.get('scales') or []))}{cost(i)})" for i in e["installed"])
            else:
                w = "[red]not installed: unavailable[/]"
            t.add_row(e["name"], e["kind"], e["accepts"], w, e["summary"])
        out.print(t)
        if not any(e["installed"] for e in entries if e["needs_weights"]):
            out.print(f"no weights installed in {weights_dir()}: the default is the classical 'gsa' (set "
                      "HSFUSE_WEIGHTS to a folder of NAME.json + NAME.safetensors)", markup=False)
        else:
            out.print(f"weights from {weights_dir()} (HSFUSE_WEIGHTS overrides)", markup=False)
