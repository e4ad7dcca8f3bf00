"""Speed, memory and quality of the fusion methods -> docs/BENCHMARKS.md (section "fuse").

    python benchmarks/bench_fuse.py                 # full run (needs ~10 GB free disk for the 4096² scene)
    python benchmarks/bench_fuse.py --quick         # 512² only, 1 repeat

Each measurement runs `fuse_files` in a fresh subprocess (so peak RSS is that run's own, read from
/proc/self/status VmHWM) on files on disk: a 512×512×31 synthetic scene and a 4096×4096×31 one
streamed from disk (its ×8 LR and RGB are written tile by tile; the output is 2 GB of float32).
Bicubic is measured in the same run as the baseline; times are medians of the repeats. CPU
numbers are from this machine; absolute GPU numbers come only from the GPU machine.
Quality: each method on CAVE validation scenes from ../shared/data under cave-gauss-x8 and
cave-mhf-x32 (skipped when ../shared is absent).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

METHODS = ["bicubic", "gsa", "glp-hs", "cnmf"]
VALIDATION_SCENES = ["fake_and_real_peppers", "oil_painting", "stuffed_toys"]
SCALE = 8


def _rgb_srf(wl: np.ndarray) -> np.ndarray:
    """A smooth Gaussian RGB response (centres 610/540/465 nm, FWHM 80 nm), rows summing to 1."""
    g = np.stack([np.exp(-0.5 * ((wl - c) / (80 / 2.3548)) ** 2) for c in (610, 540, 465)])
    return g / g.sum(1, keepdims=True)


def make_scene_files(folder: Path, size: int) -> tuple[Path, Path]:
    """Write lr.hdr (×8, block Gaussian σ=2) and msi.tif for a size×size synthetic scene, tile by tile."""
    from hsfuse.cube import CubeMeta, Window
    from hsfuse.forward.psf import Psf, gaussian_kernel
    from hsfuse.demo import WAVELENGTHS, synthetic_scene
    from hsfuse.io import create_writer

    base = synthetic_scene(min(size, 512), seed=1)
    psf = Psf.block(gaussian_kernel(SCALE, 2.0))
    srf = _rgb_srf(WAVELENGTHS)
    lr_path, msi_path = folder / f"lr{size}.hdr", folder / f"msi{size}.tif"
    tile = base.shape[1]
    with create_writer(lr_path, (31, size // SCALE, size // SCALE), CubeMeta(wavelengths=WAVELENGTHS), overwrite=True) as lw, \
            create_writer(msi_path, (3, size, size), CubeMeta(), overwrite=True) as mw:
        for r in range(0, size, tile):
            for c in range(0, size, tile):
                z = base if (r // tile + c // tile) % 2 == 0 else base[:, ::-1, :].copy()
                lw.write(psf.apply(z), Window(r // SCALE, c // SCALE, tile // SCALE, tile // SCALE))
                mw.write(np.einsum("mc,chw->mhw", srf, z).astype(np.float32), Window(r, c, tile, tile))
    return lr_path, msi_path


CHILD = r"""
import json, sys, time
import rasterio, torch  # imported before timing: library start-up is not fusion time
from hsfuse.fusion.engine import FuseConfig, fuse_files
lr, msi, out, method, tile = sys.argv[1:6]
t0 = time.perf_counter()
res = fuse_files(lr, msi, out, FuseConfig(model=method, tile=int(tile), device="cpu"), overwrite=True)
dt = time.perf_counter() - t0
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"seconds": dt, "peak_rss_mb": int(hwm) / 1024, "mp": res.plan["out_shape"][1] * res.plan["out_shape"][2] / 1e6}))
"""


def run_child(lr: Path, msi: Path, out: Path, method: str, tile: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(lr), str(msi), str(out), method, str(tile)],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def speed_table(sizes: list[int], repeats: int, methods: list[str], tile: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(dir=REPO) as tmp:
        tmp = Path(tmp)
        for size in sizes:
            lr, msi = make_scene_files(tmp, size)
            base_time = None
            for method in methods:
                reps = repeats if size <= 1024 else 1
                runs = [run_child(lr, msi, tmp / f"out{size}.hdr", method, tile) for _ in range(reps)]
                sec = statistics.median(r["seconds"] for r in runs)
                if method == "bicubic":
                    base_time = sec
                row = {"size": size, "method": method, "seconds": sec, "mp_per_s": runs[0]["mp"] / sec,
                       "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "repeats": reps,
                       "x_bicubic_time": sec / base_time if base_time else None}
                rows.append(row)
                print(f"{size:5d}² {method:8s} {sec:8.2f} s  {row['mp_per_s']:7.3f} MP/s  peak RSS {row['peak_rss_mb']:7.0f} MB", flush=True)
            for f in tmp.glob(f"*{size}*"):
                f.unlink()
    return rows


def evaluate(shared: Path, scene: str, protocol: str, method: str) -> dict:
    """Degrade one CAVE scene with ``protocol`` exactly as `hsfuse degrade` does, fuse, score."""
    from hsfuse.forward.degrade import degrade_cube
    from hsfuse.fusion.engine import FuseConfig, fuse_arrays
    from hsfuse.io import open_cube
    from hsfuse.metrics import compute_metrics
    from hsfuse.forward.protocols import get_protocol, read_protocol_input

    proto = get_protocol(protocol)
    with open_cube(shared / "cave" / f"{scene}_ms") as src:
        z, _ = read_protocol_input(src, proto.input_scaling)
    psf, srf = proto.build()
    lr, msi = degrade_cube(z, psf, srf)
    t0 = time.perf_counter()
    est = fuse_arrays(lr, msi, FuseConfig(model=method, psf=psf, srf=srf, device="cpu"))
    dt = time.perf_counter() - t0
    rep = compute_metrics(z, est, scale=psf.scale, peak=1.0, ssim=False, uiqi=False, maps=False)
    return {"psnr": rep.summary["psnr"], "sam": rep.summary["sam"], "ergas": rep.summary["ergas"], "seconds": dt}


def quality_table(shared: Path, methods: list[str]) -> list[dict]:
    rows = []
    for protocol in ("cave-gauss-x8", "cave-mhf-x32"):
        for scene in VALIDATION_SCENES:
            for method in methods:
                m = evaluate(shared, scene, protocol, method)
                rows.append({"protocol": protocol, "scene": scene, "method": method, **m})
                print(f"{protocol} {scene:24s} {method:8s} PSNR {m['psnr']:6.2f} SAM {m['sam']:5.2f} ERGAS {m['ergas']:6.3f} "
                      f"{m['seconds']:6.2f} s", flush=True)
    return rows


def per_scene(rows: list[dict]) -> str:
    return ", ".join(f"{r['psnr']:.2f}" for r in rows)


def write_markdown(speed: list[dict], quality: list[dict], path: Path) -> None:
    lines = ["## Classical fusion methods (`benchmarks/bench_fuse.py`)", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
             f"CPU only, {time.strftime('%Y-%m-%d')}. Files on local disk, ×8, 31 bands + 3-band RGB; "
             "times are medians of the repeats; peak RSS of the whole process (Python + torch included).", ""]
    if speed:
        lines += ["| scene | method | time (s) | MP/s | × bicubic time | peak RSS (MB) | repeats |", "|---|---|---:|---:|---:|---:|---:|"]
        for r in speed:
            lines.append(f"| {r['size']}×{r['size']}×31 | {r['method']} | {r['seconds']:.2f} | {r['mp_per_s']:.3f} | "
                         f"{r['x_bicubic_time']:.1f} | {r['peak_rss_mb']:.0f} | {r['repeats']} |")
        lines.append("")
    if quality:
        lines += [f"Quality on CAVE validation scenes ({', '.join(VALIDATION_SCENES)}; never used for training), "
                  "degraded with `hsfuse degrade --protocol ...`, true PSF and SRF given to the methods. "
                  "PSNR (peak 1), SAM (degrees), ERGAS (100/s):", "",
                  "| protocol | method | mean PSNR | mean SAM | mean ERGAS | per-scene PSNR | s/scene |", "|---|---|---:|---:|---:|---|---:|"]
        for protocol in dict.fromkeys(r["protocol"] for r in quality):
            for method in dict.fromkeys(r["method"] for r in quality):
                sel = [r for r in quality if r["protocol"] == protocol and r["method"] == method]
                lines.append(f"| {protocol} | {method} | {np.mean([r['psnr'] for r in sel]):.2f} | "
                             f"{np.mean([r['sam'] for r in sel]):.2f} | {np.mean([r['ergas'] for r in sel]):.3f} | "
                             f"{per_scene(sel)} | {np.median([r['seconds'] for r in sel]):.2f} |")
        lines.append("")
    replace_section(path, "fuse", "\n".join(lines) + "\n")


def replace_section(path: Path, key: str, body: str) -> None:
    """Put ``body`` between ``<!-- key:start -->`` / ``<!-- key:end -->`` markers in ``path`` (other sections kept)."""
    start, end = f"<!-- {key}:start (written by benchmarks/; rerun the script to refresh) -->", f"<!-- {key}:end -->"
    section = f"{start}\n{body}{end}"
    text = path.read_text() if path.exists() else ("# Benchmarks\n\nProduced by the scripts in `benchmarks/`; "
                                                   "rerun them to refresh. Quote ratios, not absolute CPU times.\n")
    if f"<!-- {key}:start" in text:
        head, rest = text.split(f"<!-- {key}:start", 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="512² only, one repeat, no quality")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--big", type=int, default=4096, help="side of the streamed scene")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--methods", nargs="*", default=METHODS)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    args = ap.parse_args()
    sizes = [512] if args.quick else [512, args.big]
    speed = speed_table(sizes, 1 if args.quick else args.repeats, args.methods, args.tile)
    quality = []
    if not (args.quick or args.no_quality) and (args.shared / "cave").is_dir():
        quality = quality_table(args.shared, args.methods)
    write_markdown(speed, quality, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
