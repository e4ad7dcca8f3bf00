"""What a CPU user pays: whole `hsfuse fuse` processes, each shipped network against `gsa`, same run.

For each protocol (cave-gauss-x8, cave-mhf-x32) the held-out CAVE scenes (fake_and_real_peppers, oil_painting,
stuffed_toys; read from ../shared/data by path, never copied) are degraded with `hsfuse degrade` into a temporary
folder; then `hsfuse fuse LR MSI -o OUT --protocol P --model M --overwrite --quiet` runs as a child process,
`--repeats` times per scene and model, interleaved (gsa, net1, net2, ..., gsa, net1, ...) so that a slow minute of
this shared machine hits every model alike. Per run: CPU seconds (user + system of the child, from wait4), peak
RSS (ru_maxrss) and wall time; the quality (PSNR/SAM against the truth) from the first run's output. Reported:
per model the median over scenes of the per-scene median CPU-s, its ratio to gsa's, the largest peak RSS, and
the mean PSNR/SAM. No thread flag is given: the tool's own default (one thread per available core) is measured.

    $ .venv/bin/python benchmarks/bench_process.py                       # every shipped network, 3 repeats
    $ .venv/bin/python benchmarks/bench_process.py --models refine,mulsr --repeats 1
    $ .venv/bin/python benchmarks/bench_process.py --write               # also replace the section in docs/BENCHMARKS.md
    $ .venv/bin/python benchmarks/bench_process.py --record              # also store each ratio in the weights record used

`--record` writes `cpu_cost_vs_gsa` into the record of the weights each network ran with (the per-scale median
ratio, the CPU seconds and the date): on a CPU, `hsfuse fuse` without --model skips weights recorded above
`engine.MAX_CPU_COST_VS_GSA` times gsa. Weights run under another preset than their own also get their
per-scene PSNR and gsa's there (`validation_protocols`): the model choice then takes them for pairs of that
preset if their mean gain over gsa is positive and no scene lost more than `engine.MAX_SCENE_LOSS_DB`
(`engine.measured_better`).

A preset that leaves scale and SRF open (wald-gauss, block-mean, imresize-*) is given as NAME@SCALE: the
scenes are degraded with it and CAVE's own camera response (the MHF-Net D700 R), and the record notes that
SRF (the model choice still checks the pair's SRF against the training one):

    $ .venv/bin/python benchmarks/bench_process.py --protocols wald-gauss@8,block-mean@8 --models refine --record
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"
VAL = ("fake_and_real_peppers", "oil_painting", "stuffed_toys")
PROTOCOLS = ("cave-gauss-x8", "cave-mhf-x32")


def markers(section: str) -> tuple[str, str]:
    return f"<!-- bench_process:{section}:begin -->", f"<!-- bench_process:{section}:end -->"
HSFUSE = [str(Path(sys.executable).with_name("hsfuse"))]  # the console script beside this interpreter


def shipped_networks(scale: int) -> list[str]:
    """Registry networks with installed weights for ``scale`` (registry order)."""
    from hsfuse.models.registry import list_models
    from hsfuse.weights import read_record

    out = []
    for e in list_models(include_unavailable=False):
        if e.kind != "supervised":
            continue
        if any(scale in read_record(p).scales for p in e.installed_weights()):
            out.append(e.name)
    return out


#: a small process that runs the command and reports its rusage: the measured child must not be forked from this
#: (large) benchmark process, because Linux counts the pages a child held before exec in its ru_maxrss (a forked
#: copy of a 0.8 GiB parent reads as at least 0.8 GiB whatever the command uses)
_RUSAGE = (
    "import json, os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[2:])\n"
    "_, status, ru = os.wait4(p.pid, 0)\n"
    "json.dump({'code': os.waitstatus_to_exitcode(status), 'user': ru.ru_utime, 'sys': ru.ru_stime,\n"
    "           'maxrss_kib': ru.ru_maxrss}, open(sys.argv[1], 'w'))\n"
)


def run_child(cmd: list[str]) -> dict:
    """Run ``cmd``; its CPU seconds, peak RSS (GiB) and wall time (rusage of the command alone, through the small
    ``_RUSAGE`` launcher), and its stdout."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(suffix=".json") as usage:
        subprocess.run([sys.executable, "-c", _RUSAGE, usage.name, *cmd], stdout=out, stderr=err, check=False)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        ru = json.loads(Path(usage.name).read_text())
    if ru["code"]:
        raise RuntimeError(f"{' '.join(cmd)} failed ({ru['code']}): {stderr.strip()[-400:]}")
    return {"cpu": ru["user"] + ru["sys"], "user": ru["user"], "sys": ru["sys"],
            "rss_gib": ru["maxrss_kib"] / 2**20, "wall": wall, "stdout": stdout}


def quality(out: Path, ref: Path, scale: int) -> dict[str, float]:
    """PSNR (peak 1), SSIM, SAM (degrees) and ERGAS of ``out`` against the truth (hsfuse.metrics conventions)."""
    import numpy as np

    from hsfuse.io import read_cube
    from hsfuse.metrics import compute_metrics

    rep = compute_metrics(read_cube(ref).data.astype(np.float64), read_cube(out).data.astype(np.float64), scale=scale,
                          peak=1.0, ssim=True, uiqi=False, maps=False)
    return {k: float(rep.summary[k]) for k in ("psnr", "ssim", "sam", "ergas")}


#: the pseudo-model "default": `hsfuse fuse LR MSI -o OUT` with no flags at all (the forward model estimated, the
#: model chosen by the tool), as users run it
DEFAULT = "default"


#: the SRF an open-SRF preset is measured with: the CAVE scenes' camera (what the networks were trained on)
OPEN_SRF_NAME = "MHF-Net R (Nikon D700)"


def preset_spec(protocol: str) -> tuple[str, int, list[str], list[str]]:
    """(preset name, scale, `hsfuse degrade` flags, the truth flags of `hsfuse fuse`) of "NAME" or "NAME@SCALE"."""
    from hsfuse.forward.protocols import find_mhf_response, get_protocol

    name, _, at = protocol.partition("@")
    proto = get_protocol(name)
    if proto.scale is not None:
        return name, proto.scale, ["-p", name], ["--protocol", name]
    if not at:
        sys.exit(f"{name} leaves the scale open: give it as {name}@SCALE")
    srf = f"{find_mhf_response()}:R"
    return name, int(at), ["-p", name, "-s", at, "--srf", srf], ["--protocol", name, "--srf", srf]


def prepare(tmp: Path, protocol: str, scenes=VAL) -> list[tuple[str, Path, Path, Path]]:
    """(scene, LR, MSI, HR truth) files for each validation scene, made by `hsfuse degrade`."""
    import numpy as np

    from hsfuse.io import read_cube, write_cube

    pairs = []
    for scene in scenes:
        src = SHARED / "cave" / f"{scene}_ms"
        lr, msi = (tmp / f"{scene}_{protocol}_{k}.tif" for k in ("lr", "msi"))
        hr = tmp / f"{scene}_hr.tif"  # the truth, written once per scene whatever the protocol
        subprocess.run(HSFUSE + ["degrade", str(src), *preset_spec(protocol)[2], "-o", str(lr), "--msi", str(msi),
                                 "--quiet", "--overwrite"], check=True)
        if not hr.exists():
            cube = read_cube(src)
            write_cube(hr, np.asarray(cube.data, np.float32), cube.meta)
        pairs.append((scene, lr, msi, hr))
    return pairs


def measure(protocol: str, models: list[str], repeats: int, tmp: Path, scenes=VAL) -> list[dict]:
    pairs = prepare(tmp, protocol, scenes)
    _, scale, _, truth = preset_spec(protocol)
    rows = {m: {"model": m, "protocol": protocol, "runs": {}, "psnr": [], "sam": [], "ssim": [], "ergas": [],
                "chosen": []} for m in models}
    for scene, lr, msi, hr in pairs:
        for r in range(repeats):
            for m in models:
                out = tmp / f"{scene}_{protocol}_{m}.tif"
                flags = [] if m == DEFAULT else [*truth, "--model", m]
                res = run_child(HSFUSE + ["fuse", str(lr), str(msi), "-o", str(out), *flags, "--overwrite", "--quiet",
                                          "--json"])
                rows[m]["runs"].setdefault(scene, []).append(res)
                plan = json.loads(res.pop("stdout")).get("plan", {})
                rows[m]["weights"] = plan.get("weights")
                if r == 0:
                    for k, v in quality(out, hr, scale).items():
                        rows[m][k].append(v)
                    rows[m]["chosen"].append(str(plan.get("model")))
                print(f"{protocol} {scene} {m} run {r + 1}: {res['cpu']:.2f} CPU-s ({res['user']:.2f} user + "
                      f"{res['sys']:.2f} sys), {res['rss_gib']:.2f} GiB, {res['wall']:.2f} s wall", flush=True)
    out = []
    base = None
    for m in models:
        row = rows[m]
        per_scene = [statistics.median(x["cpu"] for x in runs) for runs in row["runs"].values()]
        row["cpu"] = statistics.median(per_scene)
        row["per_scene_cpu"] = per_scene
        row["wall"] = statistics.median(statistics.median(x["wall"] for x in runs) for runs in row["runs"].values())
        row["rss_gib"] = max(x["rss_gib"] for runs in row["runs"].values() for x in runs)
        for k in ("psnr", "sam", "ssim", "ergas"):
            row[f"mean_{k}"] = statistics.fmean(row[k])
        if m == "gsa":
            base = row
        out.append(row)
    for row in out:
        row["ratio"] = row["cpu"] / base["cpu"] if base else float("nan")
        row["per_scene_ratio"] = [a / b for a, b in zip(row["per_scene_cpu"], base["per_scene_cpu"])] if base else []
    return out


def record_costs(tables: dict[str, list[dict]], scenes=VAL, repeats: int = 3) -> None:
    """Merge each network's measured ratio into ``cpu_cost_vs_gsa`` of the weights record it ran with."""
    for protocol, rows in tables.items():
        name, scale, degrade_flags, _ = preset_spec(protocol)
        open_srf = "--srf" in degrade_flags
        scale = str(scale)
        gsa = next(r for r in rows if r["model"] == "gsa")
        for r in rows:
            if r["model"] in ("gsa", DEFAULT) or not r.get("weights"):
                continue
            path = Path(r["weights"]).with_suffix(".json")
            rec = json.loads(path.read_text())
            cost = rec.get("cpu_cost_vs_gsa") or {"ratio": {}, "cpu_s": {}, "gsa_cpu_s": {}}
            own = rec.get("protocol") == name
            if not own and scale in cost["ratio"]:
                cost = None  # the cost under its own preset stays the one the model choice reads
            if cost is not None:
                cost["ratio"][scale] = round(r["ratio"], 2)
                cost["cpu_s"][scale] = round(r["cpu"], 2)
                cost["gsa_cpu_s"][scale] = round(gsa["cpu"], 2)
                cost["peak_rss_gib"] = {**cost.get("peak_rss_gib", {}), scale: round(r["rss_gib"], 2)}
                cost["measured"] = (f"benchmarks/bench_process.py {time.strftime('%Y-%m-%d')}: whole `hsfuse fuse` "
                                    f"processes, {os.cpu_count()}-core CPU, CAVE validation scene(s) {', '.join(scenes)}, "
                                    f"median of {repeats} run(s) each")
                rec["cpu_cost_vs_gsa"] = cost
            if rec.get("protocol") != name:  # run under another preset than its own: record how it did there
                entry = {"scenes": {sc: {"model": round(m, 3), "gsa": round(g, 3)}
                                    for sc, m, g in zip(scenes, r["psnr"], gsa["psnr"])},
                         "scale": int(scale), "srf": OPEN_SRF_NAME if open_srf else None,
                         "measured": (f"benchmarks/bench_process.py {time.strftime('%Y-%m-%d')}: whole `hsfuse fuse "
                                      f"--protocol {name} --model {r['model']}` on pairs made by `hsfuse degrade "
                                      f"{' '.join(degrade_flags[:4]) + (' --srf D700-R' if open_srf else '')}`, "
                                      "PSNR against the truth, gsa told the protocol in the same run")}
                rec["validation_protocols"] = {**(rec.get("validation_protocols") or {}), name: entry}
                print(f"recorded its quality under {name} in {path}")
            path.write_text(json.dumps(rec, indent=2) + "\n")
            if cost is not None:
                print(f"recorded x{scale} cost {r['ratio']:.2f}x gsa in {path}")


def markdown(tables: dict[str, list[dict]], repeats: int, scenes=VAL, section: str = "main") -> str:
    import platform

    import torch

    begin, _ = markers(section)
    title = "What a CPU user pays" + ("" if section == "main" else f" ({section})")
    lines = [begin, f"### {title} (`benchmarks/bench_process.py --section {section}`)", "",
             f"Whole `hsfuse fuse --protocol P --model M` processes (start-up, reading, planning, fusion, LR "
             f"consistency, writing), {platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"{time.strftime('%Y-%m-%d')}; the tool's default thread count. CPU-s = user + system seconds of the "
             f"child process (median of {repeats} interleaved runs per scene, then the median over the held-out "
             f"CAVE scenes {', '.join(scenes)}, 512²×31); ratio = that over gsa's, same run; peak RSS = the largest ru_maxrss of any run. "
             "Quality from the same outputs. **No GPU column: no GPU machine was lent to this project.**", ""]
    if any(r["model"] == DEFAULT for rows in tables.values() for r in rows):
        lines += ["`default` is `hsfuse fuse LR MSI -o OUT` with no flags: the forward model estimated from the pair, "
                  "the model chosen by the tool (named per scene); every other row is told the protocol.", ""]
    for protocol, rows in tables.items():
        lines += [f"`{protocol}`:", "", "| model | CPU-s (median) | × gsa | per-scene × gsa | peak RSS GiB | wall s | "
                  "PSNR | SSIM | SAM | ERGAS | per-scene PSNR |", "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            name = r["model"] if r["model"] != DEFAULT else f"default (no flags: {', '.join(dict.fromkeys(r['chosen']))})"
            lines.append(f"| {name} | {r['cpu']:.2f} | {r['ratio']:.2f} | "
                         f"{', '.join(f'{x:.2f}' for x in r['per_scene_ratio'])} | {r['rss_gib']:.2f} | {r['wall']:.2f} | "
                         f"{r['mean_psnr']:.2f} | {r['mean_ssim']:.4f} | {r['mean_sam']:.2f} | {r['mean_ergas']:.3f} | "
                         f"{', '.join(f'{p:.2f}' for p in r['psnr'])} |")
        lines.append("")
    lines.append(markers(section)[1])
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="", help="comma-separated registry models, or 'default' for the no-flag run "
                    "(default: every shipped network at the protocol's scale); gsa is always run")
    ap.add_argument("--presets", action="store_true", help="the issue-19 table: bicubic, gsa, cnmf, every shipped "
                    "network at the protocol's scale and the no-flag default, per protocol")
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scenes", default=",".join(VAL), help="comma-separated validation scenes (a subset: a rough ratio)")
    ap.add_argument("--write", action="store_true", help="replace the section in docs/BENCHMARKS.md")
    ap.add_argument("--section", default="main", help="name of the docs/BENCHMARKS.md section this run replaces")
    ap.add_argument("--record", action="store_true", help="store each network's ratio (and, under another preset than its own, its quality there) in the weights record it ran with")
    a = ap.parse_args()
    if not (SHARED / "cave").is_dir():
        sys.exit(f"needs the CAVE scenes under {SHARED / 'cave'}")
    tables = {}
    with tempfile.TemporaryDirectory(prefix="hsfuse-bench-") as tmp:
        for protocol in a.protocols.split(","):
            scale = preset_spec(protocol)[1]
            nets = [m for m in a.models.split(",") if m] or shipped_networks(scale)
            if a.presets:
                nets = ["bicubic", "cnmf", *shipped_networks(scale), DEFAULT]
            tables[protocol] = measure(protocol, ["gsa", *[m for m in nets if m != "gsa"]], a.repeats, Path(tmp),
                                       tuple(a.scenes.split(",")))
    if a.record:
        record_costs(tables, tuple(a.scenes.split(",")), a.repeats)
    md = markdown(tables, a.repeats, tuple(a.scenes.split(",")), a.section)
    print(md)
    if a.write:
        doc = REPO / "docs" / "BENCHMARKS.md"
        text = doc.read_text()
        begin, end = markers(a.section)
        if begin in text:
            head, rest = text.split(begin, 1)
            text = head + md + rest.split(end, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + md + "\n"
        doc.write_text(text)


if __name__ == "__main__":
    main()
