"""Networks: parameters, GFLOPs, CPU time, training budgets and validation quality -> docs/BENCHMARKS.md ("models").

    python benchmarks/bench_models.py                      # needs ../shared/data for the quality tables
    python benchmarks/bench_models.py --skip steps,robust  # the slow parts are optional

For every network architecture in hsfuse: parameters and GFLOPs of one forward pass at 512×512
output, 31 bands + RGB, ×8 (FlopCounterMode on a 128² tile × 16; every layer is local, so cost
grows with the pixel count) and the median CPU time of that pass, in the trained configuration
where weights exist. Then quality on the validation scenes at ×8 (`cave-gauss-x8`) and ×32
(`cave-mhf-x32`) of every trained model — shipped ones from weights/, and models that did not beat
their GSA prior from the run folders (``runs/*/candidate-*``, marked "not shipped") — next to
bicubic, CNMF and detail injection (gsa), all through the same engine in the same run; HSR-Diff
quality against its number of sampling steps; the camera-robustness table; and generated scenes whose
spectra no training scene has (the demo's generator).
GPU timings need the GPU machine; none was available when this was run (the table says so).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_fuse import VALIDATION_SCENES, replace_section  # noqa: E402

BANDS, MSI, SCALE = 31, 3, 8


ZOO = ("mftn", "hyfusion", "mulsr")


def trained_weights(candidates: list[Path]) -> dict[tuple[str, int], tuple[Path, bool]]:
    """(registry model, scale) -> (weights stem, shipped?) for shipped weights and run-folder candidates.

    Candidates are ``runs/*/candidate-*.json``: models trained like the shipped ones that did not
    beat their GSA prior on validation, so ``hsfuse train`` kept them out of weights/.
    """
    from hsfuse.weights import read_record

    out: dict[tuple[str, int], tuple[Path, bool]] = {}
    for json_path, shipped in [(p, True) for p in sorted((REPO / "weights").glob("*.json"))] + [(p, False) for p in candidates]:
        rec = read_record(json_path.with_suffix(""))
        model = rec.get("registry_model") or ("csakd-s" if str(rec.get("architecture", "")).startswith("csakd-") else None)
        if model is None:
            continue
        td = rec.get("training_data") or {}
        tags = (["spectral"] if td.get("spectral_augmentation") else []) + (
            ["SRF"] if "anyrgb" in json_path.stem or td.get("srf_augmentation") else [])
        if tags:
            model += f" ({'+'.join(tags)}-augmented)"
        for sc in rec.get("scales", []):
            out.setdefault((model, int(sc)), (json_path.with_suffix(""), shipped))
    return out


def networks(weights: dict) -> dict[str, tuple[torch.nn.Module, str]]:
    """Every architecture for 31 bands + RGB: the trained configuration where weights exist, else default widths."""
    from hsfuse.models import hsrdiff, zoo_fuser
    from hsfuse.models.networks import csakd
    from hsfuse.weights import read_record

    def trained(model: str):
        for (m, sc), (stem, shipped) in sorted(weights.items(), key=lambda kv: kv[0][1]):
            if m == model:
                return read_record(stem), stem, shipped
        return None, None, False

    nets = {}
    rec, stem, _ = trained("csakd-s")
    nets["csakd-s"] = (csakd.build_from_record(rec["architecture"], rec["kwargs"]), "shipped")
    nets["csakd teacher"] = (csakd.CSAKDTeacher(BANDS, MSI, prior=True), "untrained (default widths)")
    for name in ZOO:
        rec, stem, shipped = trained(name)
        if rec is not None:
            nets[name] = (zoo_fuser.build_network(name, rec["kwargs"]), "shipped" if shipped else "trained, not shipped")
        else:
            nets[name] = (zoo_fuser.build_network(name, {"bands": BANDS, "msi_bands": MSI, "scale": SCALE, "prior": True}),
                          "untrained (default widths)")
    rec, stem, shipped = trained("hsr-diff")
    if rec is not None:
        net = hsrdiff.build_from_record(rec["architecture"], rec["kwargs"])
        nets["hsr-diff CDFormer (per step)"] = (net, "shipped" if shipped else "trained, not shipped")
    else:
        nets["hsr-diff CDFormer (per step)"] = (hsrdiff.build_cdformer(bands=BANDS, msi_bands=MSI), "untrained (default widths)")
    return nets


def _inputs(net, size: int):
    lr = torch.rand(1, BANDS, size // SCALE, size // SCALE)
    msi = torch.rand(1, MSI, size, size)
    prior = torch.rand(1, BANDS, size, size) if getattr(net, "prior", False) else None
    return lr, msi, prior


def _forward(net, lr, msi, prior):
    if net.__class__.__name__ == "CDFormer":
        x = torch.rand(1, BANDS, msi.shape[-2], msi.shape[-1])
        return net(lr, msi, x, torch.full((1,), 0.5), prior=prior)
    return net(lr, msi, prior)


def cost_table(repeats: int, weights: dict) -> list[dict]:
    from torch.utils.flop_counter import FlopCounterMode

    rows = []
    torch.manual_seed(0)
    for name, (net, status) in networks(weights).items():
        net.eval()
        params = sum(p.numel() for p in net.parameters())
        with torch.no_grad():
            lr, msi, prior = _inputs(net, 128)
            with FlopCounterMode(display=False) as fc:
                _forward(net, lr, msi, prior)
            gflops = fc.get_total_flops() * 16 / 1e9
            lr, msi, prior = _inputs(net, 512)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                _forward(net, lr, msi, prior)
                times.append(time.perf_counter() - t0)
        row = {"model": name, "status": status, "params": params, "gflops_512": gflops,
               "cpu_ms_512": 1000 * statistics.median(times)}
        rows.append(row)
        print(f"{name:30s} {status:28s} {params / 1e6:6.3f} M {gflops:8.1f} GFLOPs  CPU {row['cpu_ms_512']:9.0f} ms", flush=True)
    return rows


def evaluate(shared: Path, scene: str, protocol: str, method: str, options: dict | None = None,
             srf_name: str | None = None) -> dict:
    """Degrade one CAVE scene with ``protocol`` (optionally another camera's SRF), fuse through the engine, score."""
    from hsfuse.forward.degrade import degrade_cube
    from hsfuse.fusion.engine import FuseConfig, fuse_arrays
    from hsfuse.io import open_cube
    from hsfuse.metrics import compute_metrics
    from hsfuse.forward.protocols import get_protocol, read_protocol_input
    from hsfuse.forward.srf import load_srf

    base, _, at = protocol.partition("@x")  # "cave-gauss-x8@x4": the protocol's PSF binned to x4 (Psf.rescaled)
    proto = get_protocol(base)
    with open_cube(shared / "cave" / f"{scene}_ms") as src:
        z, _ = read_protocol_input(src, proto.input_scaling)
    psf, srf = proto.build()
    if at:
        psf = psf.rescaled(int(at))
    if srf_name:
        srf = load_srf(srf_name, np.arange(400.0, 701.0, 10.0), BANDS).matrix
    lr, msi = degrade_cube(z, psf, srf)
    t0 = time.perf_counter()
    est = fuse_arrays(lr, msi, FuseConfig(model=method, psf=psf, srf=srf, device="cpu", options=dict(options or {})))
    dt = time.perf_counter() - t0
    rep = compute_metrics(z, est, scale=psf.scale, peak=1.0, ssim=False, uiqi=False, maps=False)
    return {"psnr": rep.summary["psnr"], "sam": rep.summary["sam"], "ergas": rep.summary["ergas"], "seconds": dt}


PROTOCOLS = {"cave-gauss-x8": 8, "cave-mhf-x32": 32}
JOINT_PROTOCOLS = {"cave-gauss-x8@x4": 4, "cave-mhf-x32@x16": 16}  # rows only when a model was trained for that scale (MulSR --joint-scale)


def quality_table(shared: Path, weights: dict, diffusion_steps: int = 8, only: set[str] | None = None,
                  tta: set[str] | None = None, plain: set[str] | None = None) -> list[dict]:
    """Every method with weights for the protocol's scale, and the classical baselines, in one run.

    ``only``: just these methods or row labels (e.g. a model trained after the rest was measured;
    --from-log merges). ``tta``: these models also with ``-O tta=8`` (test-time self-ensemble).
    ``plain``: these models also with ``-O lr_consistency=off`` (the network's own output: the engine
    is given the true PSF, so the LR-consistency step is on by default; models/consistency.py).
    """
    rows = []
    protocols = {**PROTOCOLS, **{p: s for p, s in JOINT_PROTOCOLS.items() if any(sc == s for _, sc in weights)}}
    for protocol, scale in protocols.items():
        methods: list[tuple[str, str, dict]] = [(m, m, {}) for m in ("bicubic", "cnmf", "gsa")]
        for (model, sc), (stem, shipped) in sorted(weights.items()):
            if sc != scale or "augmented" in model:  # those are in the camera-robustness table
                continue
            label = model if shipped else f"{model} (not shipped)"
            opts = {"weights": str(stem)}
            if model == "hsr-diff":
                opts["steps"] = diffusion_steps
                label += f", {diffusion_steps} DDIM steps"
            methods.append((label, model, opts))
            if tta and model in tta:
                methods.append((f"{label} (tta 8)", model, {**opts, "tta": 8}))
            if plain and model in plain:
                methods.append((f"{label} (no LR consistency)", model, {**opts, "lr_consistency": "off"}))
        if only:
            methods = [m for m in methods if m[1] in only or m[0] in only]
        for label, method, opts in methods:
            for scene in VALIDATION_SCENES:
                m = evaluate(shared, scene, protocol, method, opts)
                rows.append({"protocol": protocol, "scene": scene, "method": label, **m})
                print(f"{protocol} {scene:24s} {label:34s} PSNR {m['psnr']:6.2f} SAM {m['sam']:5.2f} ERGAS {m['ergas']:6.3f} "
                      f"{m['seconds']:6.2f} s", flush=True)
    return rows


def steps_table(shared: Path, weights: dict, steps_list: list[int]) -> list[dict]:
    """HSR-Diff quality vs DDIM sampling steps at x32 (the paper's 100-step ancestral sampler last)."""
    if ("hsr-diff", 32) not in weights:
        return []
    stem, shipped = weights[("hsr-diff", 32)]
    rows = []
    for steps in steps_list:
        samplers = [("ddim", steps)] + ([("ancestral", steps)] if steps == 100 else [])
        for sampler, n in samplers:
            for scene in VALIDATION_SCENES:
                m = evaluate(shared, scene, "cave-mhf-x32", "hsr-diff", {"weights": str(stem), "steps": n, "sampler": sampler})
                rows.append({"sampler": sampler, "steps": n, "scene": scene, **m})
                print(f"hsr-diff {sampler:9s} {n:4d} steps {scene:24s} PSNR {m['psnr']:6.2f} SAM {m['sam']:5.2f} "
                      f"{m['seconds']:7.1f} s", flush=True)
    return rows


CAMERAS = ("nikon-5100", "sigma-sdmerrill", "cie1931")


def robustness_table(shared: Path, weights: dict) -> list[dict]:
    """gsa, csakd-s (D700 only) and the SRF-augmented csakd-s when the RGB comes from other cameras."""
    methods = [("gsa", "gsa", {}), ("csakd-s", "csakd-s", {"weights": str(weights[("csakd-s", 8)][0])})]
    if ("csakd-s (SRF-augmented)", 8) in weights:
        methods.append(("csakd-s SRF-aug", "csakd-s", {"weights": str(weights[("csakd-s (SRF-augmented)", 8)][0])}))
    if ("csakd-s (spectral+SRF-augmented)", 8) in weights:
        stem, shipped = weights[("csakd-s (spectral+SRF-augmented)", 8)]
        methods.append(("csakd-s spec+SRF-aug" + ("" if shipped else " (not shipped)"), "csakd-s", {"weights": str(stem)}))
    rows = []
    for camera in ("nikon-d700 (training)",) + CAMERAS:
        for label, method, opts in methods:
            for scene in VALIDATION_SCENES:
                m = evaluate(shared, scene, "cave-gauss-x8", method, opts, None if camera.startswith("nikon-d700") else camera)
                rows.append({"scene": scene, "camera": camera, "method": label, "psnr": m["psnr"], "sam": m["sam"]})
                print(f"{scene:24s} {camera:22s} {label:16s} PSNR {m['psnr']:6.2f} SAM {m['sam']:5.2f}", flush=True)
    return rows


def demo_table(weights: dict, size: int = 512, seeds: tuple[int, ...] = (0, 1)) -> list[dict]:
    """Scenes whose spectra no training scene has: the generated demo scene (hsfuse.demo), x8, every x8 model.

    No third-party data: the scene is generated (``synthetic_scene``), degraded with the cave-gauss
    form (8×8 Gaussian block, σ = 2) and the Nikon 5100 RGB curve (the README demo's camera).
    """
    from hsfuse.forward.psf import Psf, gaussian_kernel
    from hsfuse.forward.degrade import degrade_cube
    from hsfuse.demo import WAVELENGTHS, synthetic_scene
    from hsfuse.fusion.engine import FuseConfig, fuse_arrays
    from hsfuse.metrics import compute_metrics
    from hsfuse.forward.srf import load_srf

    psf = Psf.block(gaussian_kernel(8, 2.0))
    srf = load_srf("nikon-5100", WAVELENGTHS, len(WAVELENGTHS)).matrix
    methods = [(m, m, {}) for m in ("bicubic", "gsa")]
    for (model, sc), (stem, shipped) in sorted(weights.items()):
        if sc == 8:
            label = model if shipped else f"{model} (not shipped)"
            methods.append((label, model.split(" (")[0], {"weights": str(stem)}))
            methods.append((f"{label} (no LR consistency)", model.split(" (")[0], {"weights": str(stem), "lr_consistency": "off"}))
    rows = []
    for seed in seeds:
        z = synthetic_scene(size, seed)
        lr, msi = degrade_cube(z, psf, srf)
        for label, method, opts in methods:
            est = fuse_arrays(lr, msi, FuseConfig(model=method, psf=psf, srf=srf, device="cpu", options=opts))
            m = compute_metrics(z, est, scale=8, peak=1.0, ssim=False, uiqi=False, maps=False).summary
            rows.append({"scene": f"demo-{size}-seed{seed}", "method": label, "psnr": m["psnr"], "sam": m["sam"]})
            print(f"demo demo-{size}-seed{seed} {label:40s} PSNR {m['psnr']:6.2f} SAM {m['sam']:5.2f}", flush=True)
    return rows


def _mean(rows, key):
    return float(np.mean([r[key] for r in rows]))


def markdown(costs: list[dict], quality: list[dict], robust: list[dict], steps: list[dict], weights: dict,
             demo: list[dict] | None = None) -> str:
    from hsfuse.weights import read_record

    lines = ["## Networks (`benchmarks/bench_models.py`)", "",
             f"CPU: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s), "
             f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}. "
             "One forward pass at 512×512 output (×8, 31 bands + RGB; networks that refine the GSA estimate get it as "
             "an input, its cost is not included); GFLOPs = multiply-adds×2 from FlopCounterMode. "
             "**GPU (bf16/fp32) timings: not measured — no GPU machine was lent to this project's sessions so far.** "
             "Every model below was trained on this 2-core CPU (budgets in the training table); the papers train "
             "for hours to days on GPUs.", "",
             "| model | weights | parameters | GFLOPs @512² | CPU ms / 512² (median) |", "|---|---|---:|---:|---:|"]
    for r in costs:
        lines.append(f"| {r['model']} | {r['status']} | {r['params'] / 1e6:.3f} M | {r['gflops_512']:.1f} | {r['cpu_ms_512']:.0f} |")
    lines += ["", "Training budgets (from the weights records):", "",
              "| weights | shipped | protocol | steps | batch × patch | CPU min | validation PSNR model / gsa |",
              "|---|---|---|---:|---|---:|---|"]
    for stem, shipped in dict.fromkeys(v for _, v in sorted(weights.items())):  # a two-scale weights file: one row
        rec = read_record(stem)
        cfg = rec.get("training_config") or {}
        v = rec.get("validation_metrics") or {}
        mins = (rec.get("cpu_seconds") or rec.get("wall_seconds") or 0) / 60
        chain, prev = [], rec.get("previous_training") or {}
        while prev:  # fine-tuning chains: the earlier runs, newest first
            chain.append(str(prev.get("steps")))
            mins += (prev.get("cpu_seconds") or 0) / 60
            prev = prev.get("previous_training") or {}
        lines.append(f"| {stem.name} | {'yes' if shipped else 'no (below gsa)'} | {rec.get('protocol')} | {rec.get('steps')}"
                     f"{' + ' + ' + '.join(chain) + ' (earlier runs)' if chain else ''} | "
                     f"{cfg.get('batch')} × {cfg.get('patch')}² | {mins:.0f} | "
                     f"{v.get('model', {}).get('mean', {}).get('psnr', float('nan')):.2f} / "
                     f"{v.get('gsa', {}).get('mean', {}).get('psnr', float('nan')):.2f} |")
    for protocol in dict.fromkeys(r["protocol"] for r in quality):
        sel_p = [r for r in quality if r["protocol"] == protocol]
        lines += ["", f"Validation quality, `{protocol}`, scenes {', '.join(VALIDATION_SCENES)} (never trained on), "
                  "true PSF/SRF given to every method, whole 512² scenes through the engine (`fuse_arrays`, default "
                  "tiling), all measured in this run; time per scene on this CPU"
                  + ("; `(tta 8)`: the same weights with `-O tta=8`, the mean of 8 passes over flipped/transposed "
                     "inputs" if any("(tta 8)" in r["method"] for r in sel_p) else "")
                  + ("; networks are run as `hsfuse fuse` runs them with a known PSF, LR consistency on "
                     "(docs/models/mulsr.md), and `(no LR consistency)` rows give the network's own output "
                     "(`-O lr_consistency=off`)" if any("(no LR consistency)" in r["method"] for r in sel_p) else "")
                  + ":", "",
                  "| method | mean PSNR | mean SAM | mean ERGAS | per-scene PSNR | s / scene |", "|---|---:|---:|---:|---|---:|"]
        for method in dict.fromkeys(r["method"] for r in sel_p):
            sel = [r for r in sel_p if r["method"] == method]
            lines.append(f"| {method} | {_mean(sel, 'psnr'):.2f} | {_mean(sel, 'sam'):.2f} | {_mean(sel, 'ergas'):.3f} | "
                         f"{', '.join(format(r['psnr'], '.2f') for r in sel)} | {np.median([r['seconds'] for r in sel]):.2f} |")
    if steps:
        lines += ["", "HSR-Diff at ×32 (`cave-mhf-x32`, same scenes): quality against the number of sampling steps "
                  "(DDIM η = 0, deterministic, seed 0; the paper's ancestral sampler at 100 steps where listed). "
                  "The trained CDFormer is the third CPU run (residual space, half of each batch at the first "
                  "sampling level, 2000 steps; not shipped: it does not beat its GSA prior, docs/models/hsr-diff.md). "
                  "One step returns the prior; every added step costs quality, so the 100-step samplers "
                  "(≈ 40 CPU-minutes per scene) were not run on this CPU.", "",
                  "| sampler | steps | mean PSNR | mean SAM | mean ERGAS | s / scene (CPU) |", "|---|---:|---:|---:|---:|---:|"]
        for key in dict.fromkeys((r["sampler"], r["steps"]) for r in steps):
            sel = [r for r in steps if (r["sampler"], r["steps"]) == key]
            erg = _mean(sel, "ergas")
            lines.append(f"| {key[0]} | {key[1]} | {_mean(sel, 'psnr'):.2f} | {_mean(sel, 'sam'):.2f} | "
                         f"{'—' if np.isnan(erg) else format(erg, '.3f')} | "
                         f"{np.median([r['seconds'] for r in sel]):.1f} |")
    if robust:
        labels = list(dict.fromkeys(r["method"] for r in robust))
        lines += ["", "Robustness to the user's camera: the RGB made with other response curves than the Nikon D700 "
                  "curve of the protocol (`cave-gauss-x8` otherwise; mean over the validation scenes). `gsa` refits its "
                  "regression per scene; `csakd-s` was trained with the D700 curve only; `csakd-s SRF-aug` was fine-tuned "
                  "with the D700 and Nikon 5100 curves plus random smooth perturbations, `csakd-s spec+SRF-aug` also with "
                  "re-coloured copies of the training scenes (`--spectral-augment`); Sigma SD Merrill and CIE 1931 "
                  "never seen in training:", "",
                  "| RGB camera | " + " | ".join(f"{m} PSNR / SAM" for m in labels) + " | " +
                  " | ".join(f"{m} − gsa (dB)" for m in labels if m != "gsa") + " |",
                  "|---|" + "---:|" * (2 * len(labels) - 1)]
        for camera in dict.fromkeys(r["camera"] for r in robust):
            means = {m: [r for r in robust if r["camera"] == camera and r["method"] == m] for m in labels}
            cells = [f"{_mean(means[m], 'psnr'):.2f} / {_mean(means[m], 'sam'):.2f}" for m in labels]
            deltas = [f"{_mean(means[m], 'psnr') - _mean(means['gsa'], 'psnr'):+.2f}" for m in labels if m != "gsa"]
            lines.append(f"| {camera} | " + " | ".join(cells + deltas) + " |")
    if demo:
        labels = list(dict.fromkeys(r["method"] for r in demo))
        scenes = list(dict.fromkeys(r["scene"] for r in demo))
        lines += ["", "Spectra no training scene has: generated demo scenes (`hsfuse.demo.synthetic_scene`, 512², "
                  "two seeds; materials are smooth spectral bumps, unlike CAVE's), ×8 with the 8×8 Gaussian block "
                  "(σ = 2) and the Nikon 5100 RGB curve, true PSF/SRF given. `gsa` refits its regression per scene; "
                  "the networks carry what they learned from CAVE; their LR consistency step (on with the true "
                  "PSF) takes the regions' spectra back from the LR-HSI, `(no LR consistency)` rows are without it:", "",
                  "| method | " + " | ".join(f"{sc} PSNR / SAM" for sc in scenes) + " | mean − gsa (dB) |",
                  "|---|" + "---:|" * (len(scenes) + 1)]
        g = _mean([r for r in demo if r["method"] == "gsa"], "psnr")
        for m in labels:
            sel = {r["scene"]: r for r in demo if r["method"] == m}
            cells = [f"{sel[sc]['psnr']:.2f} / {sel[sc]['sam']:.2f}" for sc in scenes]
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {_mean(list(sel.values()), 'psnr') - g:+.2f} |")
    return "\n".join(lines) + "\n"


def rows_from_log(path: Path) -> tuple[list[dict], list[dict], list[dict], list[dict], list[dict]]:
    """(costs, quality, steps, robustness, demo) rows re-read from the printed lines of earlier runs (``--from-log``).

    Lets a long run be finished in parts (e.g. the robustness table alone) without re-measuring;
    the values are the printed ones (PSNR to 0.01 dB, times to the printed precision).
    """
    import re

    costs, quality, steps, robust, demo = [], [], [], [], []
    d_re = re.compile(r"^demo (\S+) (.+?)\s+PSNR\s+([\d.]+) SAM\s+([\d.]+)$")
    r_re = re.compile(r"^(\S+)\s+(nikon-d700 \(training\)|\S+)\s+(gsa|csakd-s spec\+SRF-aug(?: \(not shipped\))?|csakd-s SRF-aug|csakd-s)"
                      r"\s+PSNR\s+([\d.]+) SAM\s+([\d.]+)$")
    cost_re = re.compile(r"^(.+?)\s{2,}(shipped|trained, not shipped|untrained \(default widths\))\s+([\d.]+) M\s+([\d.]+) GFLOPs\s+CPU\s+(\d+) ms")
    q_re = re.compile(r"^(cave-\S+) (\S+)\s+(.+?)\s+PSNR\s+([\d.]+) SAM\s+([\d.]+) ERGAS\s+([\d.]+)\s+([\d.]+) s$")
    s_re = re.compile(r"^hsr-diff (\S+)\s+(\d+) steps (\S+)\s+PSNR\s+([\d.]+) SAM\s+([\d.]+)\s+([\d.]+) s$")
    for line in Path(path).read_text().splitlines():
        if m := cost_re.match(line):
            costs.append({"model": m[1].strip(), "status": m[2], "params": float(m[3]) * 1e6, "gflops_512": float(m[4]),
                          "cpu_ms_512": float(m[5])})
        elif m := q_re.match(line):
            quality.append({"protocol": m[1], "scene": m[2], "method": m[3].strip(), "psnr": float(m[4]), "sam": float(m[5]),
                            "ergas": float(m[6]), "seconds": float(m[7])})
        elif m := s_re.match(line):
            steps.append({"sampler": m[1], "steps": int(m[2]), "scene": m[3], "psnr": float(m[4]), "sam": float(m[5]),
                          "ergas": float("nan"), "seconds": float(m[6])})
        elif m := d_re.match(line):
            demo.append({"scene": m[1], "method": m[2].strip(), "psnr": float(m[3]), "sam": float(m[4])})
        elif m := r_re.match(line):
            robust.append({"scene": m[1], "camera": m[2], "method": m[3], "psnr": float(m[4]), "sam": float(m[5])})
    return costs, quality, steps, robust, demo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    ap.add_argument("--candidates", default=str(REPO / "runs" / "*" / "candidate-*.json"),
                    help="glob of trained-but-not-shipped weights records to include (marked as such)")
    ap.add_argument("--steps", default="1,2,4,8,16,100", help="HSR-Diff sampling steps to compare (empty: skip)")
    ap.add_argument("--only", default="", help="quality part: only these comma-separated methods (merge the rest --from-log)")
    ap.add_argument("--tta", default="", help="quality part: these comma-separated models also with -O tta=8")
    ap.add_argument("--plain", default="", help="quality part: these comma-separated models also with -O lr_consistency=off")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: cost,quality,steps,robust,demo")
    ap.add_argument("--from-log", type=Path, action="append", default=None,
                    help="take the skipped parts' rows from the printed output of earlier runs (repeatable)")
    args = ap.parse_args()
    import glob

    skip = set(filter(None, args.skip.split(",")))
    weights = trained_weights([Path(p) for p in sorted(glob.glob(args.candidates))])
    old_costs, old_quality, old_steps, old_robust, old_demo = [], [], [], [], []
    for log in args.from_log or []:
        c, q, st, r, d = rows_from_log(log)
        old_costs, old_quality, old_steps, old_robust, old_demo = (old_costs + c, old_quality + q, old_steps + st,
                                                                   old_robust + r, old_demo + d)
    costs = cost_table(args.repeats, weights) if "cost" not in skip else old_costs
    have_shared = (args.shared / "cave").is_dir()
    only = set(filter(None, args.only.split(",")))
    quality = ((old_quality if only else []) + quality_table(args.shared, weights, only=only or None,
                                                               tta=set(filter(None, args.tta.split(","))) or None,
                                                               plain=set(filter(None, args.plain.split(","))) or None)
               if have_shared and "quality" not in skip else old_quality)
    steps = (steps_table(args.shared, weights, [int(x) for x in args.steps.split(",") if x])
             if have_shared and "steps" not in skip else old_steps)
    robust = robustness_table(args.shared, weights) if have_shared and "robust" not in skip else old_robust
    demo = demo_table(weights) if "demo" not in skip else old_demo
    replace_section(args.out, "models", markdown(costs, quality, robust, steps, weights, demo))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
