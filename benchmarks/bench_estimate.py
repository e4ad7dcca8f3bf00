"""Zero-configuration fusion: the no-flag result against the same method told the true PSF/SRF, and the cost.

Pairs are simulated from scenes in ../shared/data (read by path, never copied):
  * CAVE held-out scenes (fake_and_real_peppers, oil_painting, stuffed_toys; 512²×31, /65535) under the presets
    cave-gauss-x8, cave-gauss-x4, cave-mhf-x32, dian-gauss-x8, imresize-bicubic ×4, block-mean ×8, a conv Gaussian (σ 2) sampled on the first pixel
    of each 8×8 block instead of its centre, and cave-gauss-x8 with white noise at 40 and 30 dB per-band SNR;
  * two remote-sensing cubes as HR truth: Houston (CASI, 48 bands 380–1050 nm, 128²) with Sentinel-2 B2–B8A
    and Paris (Hyperion, 128 bands, 72²) with Landsat-8 OLI B1–B7, ×4, conv Gaussian PSF (σ 1.9 and 1.5 HR px)
    with a quarter-pixel shift. Wavelengths: Houston linspace(380, 1050, 48); Hyperion band b at
    355.59 + 10.1757 (b − 1) nm (VNIR, b ≤ 70) and 851.92 + 10.0904 (b − 71) nm (SWIR): nominal, not per-scene.

Every fusion runs through the engine users run (hsfuse.fusion.engine.run). "told" gets the true Psf and SRF
objects; "no flags" gets nothing. Times are medians, 2 threads, same process and run; the estimation overhead
is the estimate's own time against gsa's whole fusion time on the same pair.

    $ .venv/bin/python benchmarks/bench_estimate.py                 # gsa rows (a few minutes)
    $ .venv/bin/python benchmarks/bench_estimate.py --networks      # + the default model rows (slow on CPU)
    $ .venv/bin/python benchmarks/bench_estimate.py --write         # also replace the section in docs/BENCHMARKS.md
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
VAL = ("fake_and_real_peppers", "oil_painting", "stuffed_toys")
BEGIN, END = "<!-- bench_estimate:begin -->", "<!-- bench_estimate:end -->"

from hsfuse.cube import CubeMeta  # noqa: E402
from hsfuse.forward.psf import Psf, gaussian_kernel  # noqa: E402
from hsfuse.forward.degrade import add_noise, spatial_degrade
from hsfuse.fusion.engine import FuseConfig, run  # noqa: E402
from hsfuse.io.memory import ArraySink, ArraySource  # noqa: E402
from hsfuse.forward.protocols import get_protocol  # noqa: E402


def read_cave(scene: str) -> np.ndarray:
    from PIL import Image

    files = sorted((SHARED / "cave" / f"{scene}_ms").glob("*.png"))
    bands = [np.asarray(Image.open(f), dtype=np.float64) / 65535.0 for f in files]
    return np.stack([b if b.ndim == 2 else b[..., 0] for b in bands]).astype(np.float32)


def houston() -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    z = loadmat(SHARED / "houston2018_dfc_subset" / "houston_dataset.mat")["hyprImg"].astype(np.float32)
    z = np.transpose(z, (2, 0, 1)) / np.float32(z.max())
    return z, np.linspace(380.0, 1050.0, z.shape[0])


def paris() -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    d = loadmat(SHARED / "paris_eo1_hyperion_ali" / "paris_data_hs_ms.mat")
    z = np.transpose(d["HSim"].astype(np.float32), (2, 0, 1))
    b = d["non_del_bands"].ravel().astype(float)
    wl = np.where(b <= 70, 355.59 + 10.1757 * (b - 1), 851.92 + 10.0904 * (b - 71))
    return z / np.float32(z.max()), wl


def psnr(ref: np.ndarray, x: np.ndarray, peak: float = 1.0) -> float:
    mse = ((ref.astype(np.float64) - x) ** 2).reshape(ref.shape[0], -1).mean(1)
    return float(np.mean(10 * np.log10(peak * peak / np.maximum(mse, 1e-20))))


def sam(ref: np.ndarray, x: np.ndarray) -> float:
    a, b = ref.reshape(ref.shape[0], -1).astype(np.float64), x.reshape(x.shape[0], -1).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
    ok = (na > 0) & (nb > 0)
    cos = np.clip((a[:, ok] * b[:, ok]).sum(0) / (na[ok] * nb[ok]), -1, 1)
    return float(np.degrees(np.arccos(cos)).mean())


def fuse(lr, msi, wl, cfg):
    t = time.perf_counter()
    plan, _, sink = run(ArraySource(lr, CubeMeta(wavelengths=wl), "<lr>"), ArraySource(msi, None, "<msi>"), cfg,
                        lambda p: ArraySink(p.out_shape))
    return sink.data, time.perf_counter() - t, plan


def cases(quick: bool):
    from scipy.io import loadmat

    r = loadmat(SHARED / "srf" / "nikon_d700_mhfnet" / "response_coefficient.mat")["R"].T
    cave_wl = np.arange(400.0, 701.0, 10.0)
    scenes = VAL[:1] if quick else VAL
    for name in ("cave-gauss-x8", "cave-gauss-x4", "cave-mhf-x32", "dian-gauss-x8"):
        yield name, [(s, "cave") for s in scenes], get_protocol(name).build_psf(), r, cave_wl, None, name
    for name, sc in (("imresize-bicubic", 4), ("block-mean", 8)):
        yield f"{name} ×{sc}", [(s, "cave") for s in scenes], get_protocol(name).build_psf(sc), r, cave_wl, None, None
    yield ("conv Gaussian σ2, first-pixel phase, ×8", [(s, "cave") for s in scenes],
           Psf(gaussian_kernel(13, 2.0), 8, pad=6), r, cave_wl, None, None)
    for snr in (40.0, 30.0):
        yield (f"cave-gauss-x8, {snr:g} dB SNR", [(s, "cave") for s in scenes], get_protocol("cave-gauss-x8").build_psf(),
               r, cave_wl, snr, "cave-gauss-x8")
    from hsfuse.forward.srf import load_srf

    for label, loader, srf_name, sig in (("Houston CASI + Sentinel-2 B2-B8A, ×4", houston, "sentinel2", 1.9),
                                         ("Paris Hyperion + Landsat-8 OLI, ×4", paris, "landsat-oli", 1.5)):
        z, wl = loader()
        try:
            srf = load_srf(srf_name, wl, len(wl)).matrix
        except Exception:  # bands outside the cube's range: keep those inside
            names = {"sentinel2": "sentinel2:B2,B3,B4,B5,B6,B7,B8,B8A"}
            srf = load_srf(names[srf_name], wl, len(wl)).matrix
        k = 15
        psf = Psf(gaussian_kernel(k, sig, center=(k - 1) / 2.0 + 0.25), 4, pad=(k - 4) // 2)
        yield label, [(z, "array")], psf, srf, wl, None, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", action="store_true", help="also the default model (no flags vs told)")
    ap.add_argument("--quick", action="store_true", help="one CAVE scene per case")
    ap.add_argument("--write", action="store_true", help="replace the section in docs/BENCHMARKS.md")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    rows = []
    for label, items, psf, srf, wl, snr, proto in cases(args.quick):
        acc = {k: [] for k in ("told", "blind", "assumed", "told_sam", "blind_sam", "t_gsa", "t_est", "dflt_told",
                               "dflt_blind")}
        what = ""
        for item, kind in items:
            z = read_cave(item) if kind == "cave" else item
            lr = spatial_degrade(z, psf).astype(np.float32)
            msi = np.einsum("mc,chw->mhw", srf, z).astype(np.float32)
            if snr:
                rng = np.random.default_rng(0)
                lr, msi = add_noise(lr, snr, rng), add_noise(msi, snr, rng)
            peak = 1.0
            told, t_gsa, _ = fuse(lr, msi, wl, FuseConfig(model="gsa", psf=psf, srf=srf))
            blind, _, plan = fuse(lr, msi, wl, FuseConfig(model="gsa"))
            assumed, _, _ = fuse(lr, msi, wl, FuseConfig(model="gsa", estimate="off", denoise="off"))
            est = plan.forward.estimate
            what = est.psf_kind + (f" σ {est.sigma:.2f} ({est.centre_offset[0]:+.2f},{est.centre_offset[1]:+.2f})"
                                   if not est.psf_kind.startswith("preset") else "") + f"; SRF {est.srf_kind}"
            acc["told"].append(psnr(z, told, peak))
            acc["blind"].append(psnr(z, blind, peak))
            acc["assumed"].append(psnr(z, assumed, peak))
            acc["told_sam"].append(sam(z, told))
            acc["blind_sam"].append(sam(z, blind))
            acc["t_gsa"].append(t_gsa)
            acc["t_est"].append(est.seconds)
            if args.networks:
                cfg_told = FuseConfig(protocol=proto) if proto else FuseConfig(psf=psf, srf=srf)
                dt, _, p_told = fuse(lr, msi, wl, cfg_told)
                db, _, p_blind = fuse(lr, msi, wl, FuseConfig())
                acc["dflt_told"].append((psnr(z, dt, peak), p_told.model.name))
                acc["dflt_blind"].append((psnr(z, db, peak), p_blind.model.name))
        row = {"case": label, "found": what, "n": len(items),
               **{k: float(np.mean(v)) for k, v in acc.items() if v and not isinstance(v[0], tuple)},
               "t_gsa": float(np.median(acc["t_gsa"])), "t_est": float(np.median(acc["t_est"]))}
        for k in ("dflt_told", "dflt_blind"):
            if acc[k]:
                row[k] = (float(np.mean([a for a, _ in acc[k]])), acc[k][0][1])
        rows.append(row)
        print(row, flush=True)
    lines = [
        "## Zero-configuration fusion (`hsfuse fuse lr msi -o out`, no flags)", "",
        f"`benchmarks/bench_estimate.py{' --networks' if args.networks else ''}`, {time.strftime('%Y-%m-%d')}, "
        "2 threads, CPU. PSNR (dB, mean over scenes; peak 1, or the cube's maximum for the remote-sensing cubes) "
        "of `gsa` told the true PSF/SRF, with no flags (estimated from the pair), and with the estimate off (the "
        "old assumption: Gaussian FWHM = scale, SRF fitted by gsa). Estimate time against gsa's whole fusion on the "
        "same pair (medians).", "",
        "| forward model | scenes | estimated | gsa told | gsa no flags | Δ | SAM told / no flags | estimate off "
        "| estimate s | gsa s | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['n']} | {r['found']} | {r['told']:.2f} | {r['blind']:.2f} | "
                     f"{r['blind'] - r['told']:+.2f} | {r['told_sam']:.2f} / {r['blind_sam']:.2f} | {r['assumed']:.2f} | "
                     f"{r['t_est']:.2f} | {r['t_gsa']:.2f} | {r['t_est'] / r['t_gsa']:.2f} |")
    if args.networks:
        lines += ["", "Default model (what `fuse` picks), told (`--protocol`, or the true Psf/SRF) vs no flags:", "",
                  "| forward model | told: model, PSNR | no flags: model, PSNR | Δ |", "|---|---|---|---|"]
        for r in rows:
            if "dflt_told" in r:
                (a, ma), (b, mb) = r["dflt_told"], r["dflt_blind"]
                lines.append(f"| {r['case']} | {ma} {a:.2f} | {mb} {b:.2f} | {b - a:+.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        doc = REPO / "docs" / "BENCHMARKS.md"
        old = doc.read_text()
        block = f"{BEGIN}\n{text}{END}"
        if BEGIN in old:
            new = old[: old.index(BEGIN)] + block + old[old.index(END) + len(END):]
        else:
            new = old.rstrip("\n") + "\n\n" + block + "\n"
        doc.write_text(new)


if __name__ == "__main__":
    main()
