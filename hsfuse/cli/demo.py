"""`hsfuse demo`: the whole job end to end on a scene the project generates itself."""

from __future__ import annotations

from pathlib import Path

import typer

from . import options
from .common import emit_json, err, guard, out


def demo(
    out_dir: Path = typer.Option(Path("demo_out"), "--out-dir", help="Where the demo files go."),
    size: int = typer.Option(256, "--size", help="Side of the synthetic HR scene (a multiple of the scale)."),
    scale: int = typer.Option(8, "--scale", help="Resolution ratio between MSI and LR."),
    srf: str = options.srf_option(default="nikon-5100", help="Camera response used to make the RGB (a built-in SRF name)."),
    model: str = typer.Option(None, "--model", help="Model to demonstrate (default: what `fuse` would pick)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic scene."),
    overwrite: bool = options.overwrite_flag(help="Replace files of an earlier demo."),
    json_out: bool = options.json_flag(help="Print one JSON object on stdout."),
    quiet: bool = options.quiet_flag(help="No messages."),
) -> None:
    """Generate a synthetic 31-band scene, degrade it, fuse it back and score the result.

    Writes hr.tif (ground truth), lr.hdr (×scale LR-HSI), msi.tif (RGB through --srf) and fused.hdr, made
    exactly as `hsfuse fuse lr.hdr msi.tif -o fused.hdr` with no flags (the PSF and SRF estimated from the
    pair, the model chosen from that), then prints its PSNR/SAM/ERGAS next to gsa told the true PSF and
    SRF, and bicubic. The synthetic shapes are far from the CAVE scenes the networks were trained on,
    which the comparison makes visible.

    $ hsfuse demo --out-dir demo_out --overwrite
    """
    with guard():
        import time

        from ..cube import CubeMeta
        from ..forward.psf import Psf, gaussian_kernel
        from ..forward.degrade import degrade_cube
        from ..demo import WAVELENGTHS, synthetic_scene
        from ..errors import HsfuseError, UsageError
        from ..fusion.engine import FuseConfig, fuse_arrays, fuse_files
        from ..io import read_cube, write_cube
        from ..metrics import compute_metrics
        from ..forward.srf import load_srf

        if scale < 2 or size < 2 * scale or size % scale:
            raise UsageError(f"--size {size} must be a multiple of --scale {scale} (>= 2)")
        out_dir.mkdir(parents=True, exist_ok=True)
        z = synthetic_scene(size, seed)
        response = load_srf(srf, WAVELENGTHS, len(WAVELENGTHS))
        psf = Psf.block(gaussian_kernel(scale, scale / 4))  # the cave-gauss form: s×s blocks, Gaussian σ = s/4
        lr, msi = degrade_cube(z, psf, response.matrix)
        paths = {k: out_dir / n for k, n in (("hr", "hr.tif"), ("lr", "lr.hdr"), ("msi", "msi.tif"), ("fused", "fused.hdr"))}
        write_cube(paths["hr"], z, CubeMeta(wavelengths=WAVELENGTHS), overwrite=overwrite)
        write_cube(paths["lr"], lr, CubeMeta(wavelengths=WAVELENGTHS), overwrite=overwrite)
        write_cube(paths["msi"], msi, CubeMeta(band_names=list(response.band_names)), overwrite=overwrite)
        notes: list[str] = []
        res = fuse_files(paths["lr"], paths["msi"], paths["fused"], FuseConfig(model=model), overwrite=overwrite,
                         notify=notes.append)  # the front-page command: no PSF, no SRF, no model
        fused = read_cube(paths["fused"]).data
        rows = [(f"{res.plan['model']} (no flags: fused.hdr)", fused, res.seconds)]
        for baseline, cfg in (("gsa (told the true PSF/SRF)", FuseConfig(model="gsa", psf=psf, srf=response.matrix)),
                              ("bicubic", FuseConfig(model="bicubic", psf=psf))):
            t0 = time.perf_counter()
            try:
                est = fuse_arrays(lr, msi, cfg)
            except HsfuseError:  # pragma: no cover - classical methods take any pair
                continue
            rows.append((baseline, est, time.perf_counter() - t0))
        report = []
        for name, est, sec in rows:
            m = compute_metrics(z, est, scale=scale, peak=1.0, maps=False).summary
            report.append({"method": name, "psnr": m["psnr"], "ssim": m.get("ssim"), "sam": m["sam"], "ergas": m["ergas"],
                           "seconds": sec})
        result = {"out_dir": str(out_dir), "files": {k: str(v) for k, v in paths.items()}, "scale": scale, "srf": response.name
                  if hasattr(response, "name") else srf, "model": res.plan["model"], "model_reason": res.plan["model_reason"],
                  "metrics": report, "forward_model": res.plan.get("forward_model")}
        if json_out:
            emit_json(result)
            return
        if not quiet:
            from rich.table import Table

            err.print(f"demo scene {size}×{size}×31, ×{scale}, RGB through '{srf}'; files in {out_dir}/", markup=False)
            for note in notes:
                err.print(note, markup=False, soft_wrap=True)
            err.print(f"model: {res.plan['model']} — {res.plan['model_reason']}", markup=False, soft_wrap=True)
            t = Table(title="fused vs ground truth (hr.tif)")
            for c in ("method", "PSNR (dB)", "SSIM", "SAM (°)", "ERGAS", "time (s)"):
                t.add_column(c, justify="right" if c != "method" else "left")
            for r in report:
                t.add_row(r["method"], f"{r['psnr']:.2f}", f"{r['ssim']:.4f}", f"{r['sam']:.2f}", f"{r['ergas']:.3f}", f"{r['seconds']:.2f}")
            out.print(t)
