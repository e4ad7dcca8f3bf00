"""Networks: parameters, GFLOPs, CPU time and validation quality -> docs/BENCHMARKS.md (section "models").

    python benchmarks/bench_models.py            # needs ../shared/data for the quality table

For every network architecture in hsfuse (trained or not): parameters and GFLOPs of one forward
pass at 512×512 output, 31 bands + RGB, ×8 (counted with torch's FlopCounterMode on a 128² tile and
multiplied by 16; every layer is local, so cost grows with the pixel count), and the median CPU
time of that forward pass on this machine's cores. Then, for the models with shipped weights, the
quality on the validation scenes next to bicubic, CNMF and detail injection (gsa), all measured in
the same run through the same engine (`fuse_arrays`), with the time per 512² scene.
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

from bench_fuse import VALIDATION_SCENES, evaluate, replace_section  # noqa: E402

BANDS, MSI, SCALE = 31, 3, 8


def networks() -> dict[str, torch.nn.Module]:
    """Every architecture at its default width for 31 bands + RGB, ×8 (untrained copies: cost only)."""
    from hsfuse.models import csakd, hsrdiff, zoo_fuser
    from hsfuse.weights import read_record

    rec = read_record(REPO / "weights" / "csakd-s-cave-gauss-x8.json")
    nets = {
        "csakd-s (shipped kwargs)": csakd.build_from_record(rec["architecture"], rec["kwargs"]),
        "csakd teacher (default widths, untrained)": csakd.CSAKDTeacher(BANDS, MSI, prior=True),
    }
    for name in ("mftn", "hyfusion", "mulsr"):
        nets[name] = zoo_fuser.build_network(name, {"bands": BANDS, "msi_bands": MSI, "scale": SCALE, "prior": False})
    nets["hsr-diff CDFormer (1 step)"] = hsrdiff.build_cdformer(bands=BANDS, msi_bands=MSI)
    return nets


def _inputs(net, size: int):
    lr = torch.rand(1, BANDS, size // SCALE, size // SCALE)
    msi = torch.rand(1, MSI, size, size)
    prior = torch.rand(1, BANDS, size, size) if getattr(net, "config", {}).get("prior") or getattr(net, "prior", False) else None
    return lr, msi, prior


def _forward(net, lr, msi, prior):
    if net.__class__.__name__ == "CDFormer":
        x = torch.rand(1, BANDS, msi.shape[-2], msi.shape[-1])
        return net(lr, msi, x, torch.full((1,), 0.5))
    return net(lr, msi, prior) if prior is not None else net(lr, msi)


def cost_table(repeats: int) -> list[dict]:
    from torch.utils.flop_counter import FlopCounterMode

    rows = []
    torch.manual_seed(0)
    for name, net in networks().items():
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
        row = {"model": name, "params": params, "gflops_512": gflops, "cpu_ms_512": 1000 * statistics.median(times)}
        rows.append(row)
        print(f"{name:28s} {params / 1e6:6.3f} M params {gflops:8.1f} GFLOPs  CPU {row['cpu_ms_512']:9.0f} ms", flush=True)
    return rows


def quality_table(shared: Path) -> list[dict]:
    rows = []
    for scene in VALIDATION_SCENES:
        for method in ("bicubic", "cnmf", "gsa", "csakd-s"):
            m = evaluate(shared, scene, "cave-gauss-x8", method)
            rows.append({"scene": scene, "method": method, **m})
            print(f"{scene:24s} {method:8s} PSNR {m['psnr']:6.2f} SAM {m['sam']:5.2f} ERGAS {m['ergas']:6.3f} {m['seconds']:6.2f} s",
                  flush=True)
    return rows


CAMERAS = ("nikon-5100", "sigma-sdmerrill", "cie1931")


def robustness_table(shared: Path) -> list[dict]:
    """csakd-s (trained with the D700 RGB) and gsa when the RGB comes from other cameras' responses."""
    from hsfuse.degrade import degrade_cube
    from hsfuse.fusion.engine import FuseConfig, fuse_arrays
    from hsfuse.io import open_cube
    from hsfuse.metrics import compute_metrics
    from hsfuse.protocols import get_protocol, read_protocol_input
    from hsfuse.srf import load_srf

    proto = get_protocol("cave-gauss-x8")
    psf, d700 = proto.build()
    wl = np.arange(400.0, 701.0, 10.0)
    cameras = {"nikon-d700 (training)": d700, **{c: load_srf(c, wl, BANDS).matrix for c in CAMERAS}}
    rows = []
    for scene in VALIDATION_SCENES:
        with open_cube(shared / "cave" / f"{scene}_ms") as src:
            z, _ = read_protocol_input(src, proto.input_scaling)
        for camera, srf in cameras.items():
            lr, msi = degrade_cube(z, psf, srf)
            for method in ("gsa", "csakd-s"):
                est = fuse_arrays(lr, msi, FuseConfig(model=method, psf=psf, srf=srf, device="cpu"))
                m = compute_metrics(z, est, scale=SCALE, ssim=False, uiqi=False, maps=False).summary
                rows.append({"scene": scene, "camera": camera, "method": method, "psnr": m["psnr"], "sam": m["sam"]})
                print(f"{scene:24s} {camera:22s} {method:8s} PSNR {m['psnr']:6.2f} SAM {m['sam']:5.2f}", flush=True)
    return rows


def markdown(costs: list[dict], quality: list[dict], robust: list[dict] | None = None) -> str:
    lines = ["## Networks (`benchmarks/bench_models.py`)", "",
             f"CPU: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}. "
             "One forward pass at 512×512 output (×8, 31 bands + RGB); GFLOPs = multiply-adds×2 from FlopCounterMode. "
             "**GPU (bf16/fp32) timings: not measured — no GPU machine was available to this run.** "
             "Only `csakd-s` has trained weights; the others are implemented but untrained (cost only).", "",
             "| model | parameters | GFLOPs @512² | CPU ms / 512² (median) |", "|---|---:|---:|---:|"]
    for r in costs:
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.3f} M | {r['gflops_512']:.1f} | {r['cpu_ms_512']:.0f} |")
    if quality:
        lines += ["", f"Validation quality, `cave-gauss-x8`, scenes {', '.join(VALIDATION_SCENES)} (never trained on), "
                  "true PSF/SRF given to every method, whole 512² scenes through the engine; time per scene on this CPU:", "",
                  "| method | mean PSNR | mean SAM | mean ERGAS | per-scene PSNR | s / scene |", "|---|---:|---:|---:|---|---:|"]
        for method in dict.fromkeys(r["method"] for r in quality):
            sel = [r for r in quality if r["method"] == method]
            lines.append(f"| {method} | {np.mean([r['psnr'] for r in sel]):.2f} | {np.mean([r['sam'] for r in sel]):.2f} | "
                         f"{np.mean([r['ergas'] for r in sel]):.3f} | {', '.join(format(r['psnr'], '.2f') for r in sel)} | "
                         f"{np.median([r['seconds'] for r in sel]):.2f} |")
    if robust:
        lines += ["", "Robustness to the user's camera: the RGB made with other response curves than the Nikon D700 "
                  "curve `csakd-s` was trained with (`cave-gauss-x8` otherwise; mean over the validation scenes). "
                  "`gsa` refits its regression per scene, `csakd-s` refines that estimate:", "",
                  "| RGB camera | gsa PSNR / SAM | csakd-s PSNR / SAM | csakd-s − gsa (dB) |", "|---|---:|---:|---:|"]
        for camera in dict.fromkeys(r["camera"] for r in robust):
            g = [r for r in robust if r["camera"] == camera and r["method"] == "gsa"]
            c = [r for r in robust if r["camera"] == camera and r["method"] == "csakd-s"]
            gp, cp = np.mean([r["psnr"] for r in g]), np.mean([r["psnr"] for r in c])
            lines.append(f"| {camera} | {gp:.2f} / {np.mean([r['sam'] for r in g]):.2f} | "
                         f"{cp:.2f} / {np.mean([r['sam'] for r in c]):.2f} | {cp - gp:+.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    args = ap.parse_args()
    costs = cost_table(args.repeats)
    have_shared = (args.shared / "cave").is_dir()
    quality = quality_table(args.shared) if have_shared else []
    robust = robustness_table(args.shared) if have_shared else []
    replace_section(args.out, "models", markdown(costs, quality, robust))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
