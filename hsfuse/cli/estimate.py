"""`hsfuse estimate`: blind PSF + SRF estimation from an LR-HSI / HR-MSI pair.

Library: ``hsfuse.forward.blind.estimate_blind`` / ``save_estimate`` / ``plot_estimate``;
the method is described in that module's docstring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import OutputError, UsageError
from . import options
from .common import emit_json, err, guard, out


def estimate(
    lr: Path = typer.Argument(..., help="LR hyperspectral cube.", show_default=False),
    msi: Path = typer.Argument(..., help="HR multispectral image (same scene, an integer times finer grid).", show_default=False),
    scale: Optional[int] = typer.Option(None, "--scale", "-s", help="Resolution ratio (default: inferred from the grids)."),
    json_out: bool = options.json_flag(help="Print one JSON object on stdout."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the estimate as JSON (usable as fuse --psf/--srf)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG with the kernel and the SRF curves."),
    method: str = typer.Option("auto", "--method", help="auto: the estimate `hsfuse fuse` makes (presets recognised, "
                               "Gaussian width and phase, free kernel if it explains held-out pixels better); "
                               "hysure: the free-kernel PSF/SRF alternation (--iters, --support, --psf-smooth)."),
    iters: int = typer.Option(5, "--iters", help="hysure: at most this many PSF/SRF alternations."),
    support: Optional[int] = typer.Option(None, "--support", help="Kernel side in HR pixels (same parity as the scale)."),
    psf_smooth: float = typer.Option(1e-5, "--psf-smooth", help="Relative smoothness weight of the kernel."),
    srf_smooth: float = typer.Option(0.0, "--srf-smooth", help="Relative spectral smoothness weight of the SRF."),
    no_normalise: bool = typer.Option(False, "--no-normalise", help="Keep the SRF rows' gain instead of rows summing to 1 + gain."),
    lr_var: Optional[str] = typer.Option(None, "--lr-var", help="Variable of a .mat LR input."),
    msi_var: Optional[str] = typer.Option(None, "--msi-var", help="Variable of a .mat MSI input."),
    overwrite: bool = options.overwrite_flag(help="Replace existing -o / --plot files."),
    quiet: bool = options.quiet_flag(help="No messages (errors still go to stderr)."),
) -> None:
    """Estimate the spatial PSF (kernel, width, sampling phase) and the spectral response (SRF) from the pair.

    By default the very estimate `hsfuse fuse` makes with no flags (docs/fusion.md); --method hysure runs
    the HySure-style alternation instead (SRF by non-negative least squares, kernel ≥ 0 summing to 1 by
    least squares). The SRF rows sum to 1 and the sensor gain is kept apart (docs/models/umsft.md).

    $ hsfuse estimate lr.tif msi.tif -o est.json --plot est.png

    $ hsfuse fuse lr.tif msi.tif --model umsft --psf est.json --srf est.json -o fused.tif

    $ hsfuse estimate paris_pan.mat paris_pan.mat --lr-var HSim --msi-var PCim --json
    """
    with guard():
        import numpy as np

        from ..forward.blind import estimate_blind, plot_estimate, save_estimate
        from ..fusion.engine import infer_scale
        from ..io import open_cube

        for p in (output, plot):
            if p is not None and p.exists() and not overwrite:
                raise OutputError("exists (use --overwrite)", p)
        if iters < 1:
            raise UsageError(f"--iters must be >= 1, got {iters}")
        method = method.strip().lower()
        if method not in ("auto", "hysure"):
            raise UsageError(f"--method must be auto or hysure, got '{method}'")
        lr_opts = {"var": lr_var} if lr_var else {}
        msi_opts = {"var": msi_var} if msi_var else {}
        with open_cube(lr, **lr_opts) as lr_src, open_cube(msi, **msi_opts) as msi_src:
            s_grid = infer_scale(lr_src, msi_src)
            if scale is not None and int(scale) != s_grid:
                raise UsageError(f"--scale {scale} does not match the grids (LR {lr_src.height}x{lr_src.width}, "
                                 f"MSI {msi_src.height}x{msi_src.width} give x{s_grid})")
            s = s_grid
            wl = lr_src.meta.wavelengths
            names = msi_src.meta.band_names
            lr_data = lr_src.read()
            msi_data = msi_src.read()
        if not quiet:
            err.print(f"hsfuse estimate: {lr.name} {lr_data.shape} + {msi.name} {msi_data.shape}, x{s}", soft_wrap=True,
                      markup=False)
        pair = None
        if method == "auto":
            from ..forward.blind import BlindEstimate
            from ..forward.estimate import estimate_pair

            pair = estimate_pair(lr_data, msi_data, s)
            est = BlindEstimate.from_pair(pair)
            if no_normalise:
                est.srf, est.gain = pair.srf, None
        else:
            est = estimate_blind(lr_data, msi_data, s, iters=iters, support=support, psf_smooth=psf_smooth,
                                 srf_smooth=srf_smooth, normalise=not no_normalise)
        if not quiet:
            for wmsg in est.warnings:
                err.print(f"hsfuse estimate: warning: {wmsg}", soft_wrap=True, markup=False)
        extra = {"inputs": {"lr": str(lr), "msi": str(msi), "lr_shape": list(lr_data.shape),
                            "msi_shape": list(msi_data.shape)}, "method": method}
        if pair is not None:
            extra["estimate"] = pair.describe()
        if output is not None:
            save_estimate(output, est, lr_wavelengths=wl, msi_band_names=names, extra=extra)
        if plot is not None:
            plot_estimate(plot, est, wl, names)
        doc = {**est.describe(), **extra, "output": None if output is None else str(output),
               "plot": None if plot is None else str(plot), "srf": np.asarray(est.srf).tolist()}
        if json_out:
            emit_json(doc)
        elif not quiet:
            d = est.describe()
            out.print(f"PSF: {d['kernel_size']}x{d['kernel_size']} kernel (pad {d['pad']}), Gaussian fit sigma = "
                      f"{d['sigma']:.3f} HR px (FWHM {d['fwhm']:.3f}), centre offset "
                      f"({d['centre_offset_hr'][0]:+.2f}, {d['centre_offset_hr'][1]:+.2f}) px", markup=False)
            gains = "" if est.gain is None else ", gains " + " ".join(f"{g:.4g}" for g in est.gain)
            out.print(f"SRF: {est.srf.shape[0]} x {est.srf.shape[1]}{gains}", markup=False)
            if pair is not None:
                out.print(pair.summary(), markup=False)
            else:
                out.print(f"relative residual {est.residual:.4g} after {est.iterations} iteration(s)", markup=False)
            if output is not None:
                out.print(f"wrote {output}", markup=False)
