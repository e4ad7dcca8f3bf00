"""Quality of the classical fusers on CAVE scenes (read from ../shared/data by path, never copied).

Protocols (simulated pairs from the 512×512×31 ground truth, values /65535):
  cave-gauss-x8 : LR = block form, 8×8 Gaussian σ=2 centred at 3.5 (Psf.block), MSI = R·HR (MHF-Net R)
  cave-mhf-x32  : LR = block form with the MHF-Net 32×32 kernel C, MSI = R·HR

Metrics: PSNR per band with peak 1.0 (data_range=1), averaged over the 31 bands; SAM in degrees, mean over
pixels whose GT and estimate are both non-zero; no border crop. The fusers get the true PSF and SRF.

    $ .venv/bin/python benchmarks/quality_classical.py --scenes beads,cloth --protocols cave-gauss-x8
    $ .venv/bin/python benchmarks/quality_classical.py --methods gsa --opt gsa:upsampler=bicubic
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"

from hsfuse.forward.psf import Psf, gaussian_kernel  # noqa: E402
from hsfuse.fusion.base import FusionProblem  # noqa: E402
from hsfuse.models.classical import fuse_arrays  # noqa: E402
from hsfuse.models.registry import classical_fusers  # noqa: E402


def read_cave(scene: str) -> np.ndarray:
    from PIL import Image

    files = sorted((SHARED / "cave" / f"{scene}_ms").glob("*.png"))
    bands = [np.asarray(Image.open(f), dtype=np.float64) / 65535.0 for f in files]
    bands = [b if b.ndim == 2 else b[..., 0] for b in bands]
    return np.stack(bands).astype(np.float32)


def mhf_rc() -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    d = loadmat(SHARED / "srf" / "nikon_d700_mhfnet" / "response_coefficient.mat")
    return np.asarray(d["R"], dtype=np.float64), np.asarray(d["C"], dtype=np.float64)


def protocol(name: str) -> tuple[Psf, np.ndarray]:
    r, c = mhf_rc()
    if name == "cave-gauss-x8":
        return Psf.block(gaussian_kernel(8, 2.0)), r.T
    if name == "cave-mhf-x32":
        return Psf.block(c), r.T
    raise SystemExit(f"unknown protocol {name}")


def psnr(gt: np.ndarray, x: np.ndarray) -> float:
    mse = ((gt.astype(np.float64) - x) ** 2).reshape(gt.shape[0], -1).mean(1)
    return float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-20))))


def sam(gt: np.ndarray, x: np.ndarray) -> float:
    g = gt.reshape(gt.shape[0], -1).astype(np.float64)
    e = x.reshape(x.shape[0], -1).astype(np.float64)
    ng, ne = np.linalg.norm(g, axis=0), np.linalg.norm(e, axis=0)
    ok = (ng > 0) & (ne > 0)
    cos = np.clip((g[:, ok] * e[:, ok]).sum(0) / (ng[ok] * ne[ok]), -1, 1)
    return float(np.degrees(np.arccos(cos)).mean())


def parse_opts(items: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for it in items:
        meth, kv = it.split(":", 1)
        k, v = kv.split("=", 1)
        try:
            val = int(v)
        except ValueError:
            try:
                val = float(v)
            except ValueError:
                val = v
        out.setdefault(meth, {})[k] = val
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", default="beads,cloth,face,oil_painting,real_and_fake_apples,superballs")
    ap.add_argument("--protocols", default="cave-gauss-x8,cave-mhf-x32")
    ap.add_argument("--methods", default="bicubic,gsa,glp-hs,cnmf")
    ap.add_argument("--opt", action="append", default=[], help="METHOD:KEY=VALUE (method option), repeatable")
    ap.add_argument("--label", action="append", default=[], help="extra run name=METHOD:KEY=VALUE[,KEY=VALUE]")
    ap.add_argument("--no-srf", action="store_true", help="do not give the SRF (methods estimate it)")
    args = ap.parse_args()
    if not (SHARED / "cave").is_dir():
        raise SystemExit(f"{SHARED / 'cave'} not found")
    opts = parse_opts(args.opt)
    runs = [(m, m, opts.get(m, {})) for m in args.methods.split(",") if m]
    for lab in args.label:
        name, spec = lab.split("=", 1)
        meth, kvs = spec.split(":", 1)
        o = dict(opts.get(meth, {}))
        o.update(parse_opts([f"{meth}:{kv}" for kv in kvs.split(",")]).get(meth, {}))
        runs.append((name, meth, o))
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for prot in args.protocols.split(","):
        psf, srf = protocol(prot)
        for scene in args.scenes.split(","):
            gt = read_cave(scene)
            lr = psf.apply(gt.astype(np.float64)).astype(np.float32)
            msi = np.einsum("mc,chw->mhw", srf, gt.astype(np.float64)).astype(np.float32)
            for name, meth, o in runs:
                prob = FusionProblem(psf.scale, gt.shape[0], msi.shape[0], psf=psf,
                                     srf=None if args.no_srf else srf, options=o)
                t0 = time.perf_counter()
                out = fuse_arrays(classical_fusers()[meth], lr, msi, prob)
                dt = time.perf_counter() - t0
                r = (psnr(gt, out), sam(gt, out), dt)
                results.setdefault((prot, name), []).append(r)
                print(f"{prot:14s} {scene:22s} {name:14s} PSNR {r[0]:6.2f} dB  SAM {r[1]:5.2f}°  {dt:6.1f} s", flush=True)
    print("\nmean over scenes (PSNR peak 1.0 per band averaged; SAM degrees; time s per 512² scene, this CPU)")
    for (prot, name), rs in results.items():
        a = np.array(rs)
        print(f"{prot:14s} {name:14s} PSNR {a[:, 0].mean():6.2f}  SAM {a[:, 1].mean():5.2f}  time {a[:, 2].mean():6.1f}  (n={len(rs)})")


if __name__ == "__main__":
    main()
