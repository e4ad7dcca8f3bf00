"""`hsfuse metrics`: full-reference metrics, or no-reference consistency + QNR.

Library: ``hsfuse.metrics.compute_metrics`` / ``qnr``; formulas in docs/metrics.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import InputError, OutputError, UsageError
from . import options
from .common import emit_json, err, guard, out
from .degrade import parse_scale

SUMMARY_ORDER = ("psnr", "ssim", "sam", "ergas", "rmse", "cc", "uiqi")
UNITS = {"psnr": "dB", "sam": "deg"}


def metrics(
    files: List[Path] = typer.Argument(..., help="REFERENCE ESTIMATE, or just FUSED with --lr and --msi (no-reference mode)."),
    scale: Optional[str] = typer.Option(None, "--scale", "-s", help="Resolution ratio s for ERGAS (no-reference: checked against the sizes)."),
    peak: str = typer.Option("auto", "--peak", help="Data range for PSNR/SSIM: auto | band-max | a number (e.g. 1, 65535)."),
    crop: int = typer.Option(0, "--crop", help="Drop N pixels at every border before computing."),
    per_band: bool = typer.Option(False, "--per-band", help="Also print the per-band table."),
    protocol: Optional[str] = options.protocol_option(
                                           help="Read uint16 inputs as the protocol does (/65535) and take s from it."),
    no_ssim: bool = typer.Option(False, "--no-ssim", help="Skip SSIM and UIQI (the slow metrics)."),
    json_out: bool = options.json_flag(help="Print one JSON object (numbers + conventions) on stdout."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write per-band numbers + summary + conventions as CSV ('-' = stdout)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG report: per-band PSNR/SSIM curves, SAM and error maps."),
    lr: Optional[Path] = typer.Option(None, "--lr", help="No-reference mode: the LR-HSI the fusion started from."),
    msi: Optional[Path] = typer.Option(None, "--msi", help="No-reference mode: the HR-MSI the fusion started from."),
    psf: Optional[str] = options.psf_option(help="No-reference: gaussian | box | FILE (default: estimate a Gaussian σ)."),
    sigma: Optional[float] = options.sigma_option(help="No-reference: Gaussian σ in HR pixels (implies --psf gaussian)."),
    form: str = options.form_option(help="No-reference: block | conv."),
    border: str = typer.Option("reflect", "--border", help="No-reference: reflect | edge | wrap | zero."),
    srf: Optional[str] = options.srf_option(help="No-reference: SRF name or file (default: estimate by NNLS of MSI_lr on LR)."),
    ref_var: Optional[str] = typer.Option(None, "--ref-var", help="Variable of a .mat REFERENCE (or FUSED) input."),
    est_var: Optional[str] = typer.Option(None, "--est-var", help="Variable of a .mat ESTIMATE input."),
    lr_var: Optional[str] = typer.Option(None, "--lr-var", help="No-reference: variable of a .mat --lr input."),
    msi_var: Optional[str] = typer.Option(None, "--msi-var", help="No-reference: variable of a .mat --msi input."),
    overwrite: bool = options.overwrite_flag(help="Replace existing --csv / --plot files."),
    quiet: bool = options.quiet_flag(help="No notes on stderr."),
) -> None:
    """Quality metrics of a fused cube.

    With a reference: PSNR, SSIM, SAM, ERGAS, RMSE, CC, UIQI (per band and mean),
    NaN/nodata pixels masked, every convention recorded (docs/metrics.md).
    Without one (--lr, --msi): re-degrade the fused cube and compare with the
    inputs (consistency), plus QNR-style D_λ, D_s.

    Examples:

      $ hsfuse metrics gt.tif fused.tif --scale 8 --per-band

      $ hsfuse metrics cave/beads_ms fused.tif --protocol cave-gauss-x8 --json

      $ hsfuse metrics --lr lr.tif --msi msi.tif fused.tif --json
    """
    with guard():
        if json_out and csv is not None and str(csv) == "-":
            raise UsageError("--json and --csv - both write to stdout; give --csv a file")
        _VARS.clear()
        _VARS.update({"reference": ref_var, "fused": ref_var, "estimate": est_var, "LR": lr_var, "MSI": msi_var})
        inputs = [*files, lr, msi]
        for target in (csv, plot):  # same rules as every output: never an input, never replaced unasked
            if target is None or str(target) == "-":
                continue
            from ..io import check_not_input

            check_not_input(target, inputs)
            if target.exists() and not overwrite:
                raise OutputError("exists (use --overwrite)", target)
            if not (target.parent if str(target.parent) else Path(".")).is_dir():
                raise OutputError(f"output directory {target.parent} does not exist", target)
        if lr is not None or msi is not None:
            _no_reference(files, lr, msi, scale, peak, psf, sigma, form, border, srf, protocol, json_out, csv, quiet)
        else:
            if len(files) != 2:
                raise UsageError("give REFERENCE and ESTIMATE (or FUSED with --lr and --msi)")
            if any(v is not None for v in (psf, sigma, srf)):
                raise UsageError("--psf/--sigma/--srf belong to the no-reference mode (--lr, --msi)")
            _with_reference(files[0], files[1], scale, peak, crop, per_band, protocol, no_ssim, json_out, csv, plot, quiet)


def _note(quiet: bool, msg: str) -> None:
    if not quiet:
        err.print(f"hsfuse metrics: {msg}", soft_wrap=True, markup=False)


def _parse_peak(peak: str):
    p = peak.strip().lower()
    if p in ("auto", "band-max"):
        return p
    try:
        v = float(p)
    except ValueError:
        raise UsageError(f"--peak must be auto, band-max or a positive number, got '{peak}'") from None
    if not v > 0:
        raise UsageError(f"--peak must be > 0, got {peak}")
    return v


#: --ref-var / --est-var / --lr-var / --msi-var of this command, by the role of the input
_VARS: dict[str, str | None] = {}


def _read(path: Path, rule: str, what: str):
    """(data float32 (C,H,W), meta, stored dtype, how read)."""
    from .. import io as hio
    from ..forward.protocols import read_protocol_input

    var = _VARS.get(what)
    with hio.open_cube(path, **({"var": var} if var else {})) as src:
        data, how = read_protocol_input(src, rule)
        return data, src.meta, src.dtype, how


def _check_reference_nan(data, meta, path) -> None:
    import numpy as np

    if meta.nodata is None:
        n = int(np.isnan(data).sum())
        if n:
            raise InputError(f"reference has {n} NaN values and declares no nodata value; a reference must be "
                             "complete (declare nodata to mask those pixels)", path)


def _with_reference(ref_path, est_path, scale_s, peak_s, crop, per_band, protocol, no_ssim, json_out, csv, plot, quiet):
    import numpy as np

    from ..metrics import auto_peak, compute_metrics
    from ..forward.protocols import get_protocol

    peak = _parse_peak(peak_s)
    scale = parse_scale(scale_s)
    rule = "none"
    if protocol is not None:
        proto = get_protocol(protocol)
        rule = proto.input_scaling
        if scale is None:
            scale = proto.scale
        elif proto.scale is not None and scale != proto.scale:
            raise UsageError(f"--scale {scale} contradicts protocol {proto.name} (s = {proto.scale})")
    if crop < 0:
        raise UsageError("--crop must be >= 0")
    ref, rmeta, rdtype, rhow = _read(ref_path, rule, "reference")
    est, emeta, edtype, ehow = _read(est_path, rule, "estimate")
    if ref.shape[0] != est.shape[0]:
        raise InputError(f"band count mismatch: reference {ref_path} has {ref.shape[0]} bands, "
                         f"estimate {est_path} has {est.shape[0]}")
    if ref.shape != est.shape:
        raise InputError(f"size mismatch: reference {ref_path} is {ref.shape[1]}×{ref.shape[2]}, "
                         f"estimate {est_path} is {est.shape[1]}×{est.shape[2]} (bands×rows×cols {ref.shape} vs {est.shape})")
    _check_reference_nan(ref, rmeta, ref_path)
    if rmeta.wavelengths is not None and emeta.wavelengths is not None and len(rmeta.wavelengths) == len(emeta.wavelengths):
        dw = float(np.nanmax(np.abs(np.asarray(rmeta.wavelengths) - np.asarray(emeta.wavelengths))))
        if dw > 0.5:
            _note(quiet, f"warning: wavelengths differ by up to {dw:g} nm between reference and estimate")
    if peak == "auto":
        if rule == "uint16" and np.dtype(rdtype) == np.uint16:
            peak_v, why = 1.0, "protocol input scaling uint16/65535"
        else:
            peak_v, why = auto_peak(rdtype, rmeta.scale, rmeta.offset, ref)
    else:
        peak_v, why = peak, ("per band reference max" if peak == "band-max" else "given")
    rmax, emax = float(np.nanmax(ref)), float(np.nanmax(est)) if np.isfinite(est).any() else float("nan")
    if rmax > 0 and emax > 0 and (emax / rmax > 20 or rmax / emax > 20):
        _note(quiet, f"warning: reference max {rmax:.4g} vs estimate max {emax:.4g}: different units? "
                     "(e.g. uint16 counts vs reflectance; --protocol applies /65535)")
    names = _band_labels(rmeta)
    rep = compute_metrics(ref, est, scale=scale, peak=peak_v, crop=crop, ssim=not no_ssim, uiqi=not no_ssim,
                          band_names=names, maps=plot is not None)
    conv = rep.conventions
    conv["peak_rule"] = why
    conv["reference_read"] = rhow
    conv["estimate_read"] = ehow
    conv["protocol"] = protocol
    conv["nodata_declared"] = rmeta.nodata is not None
    result = {"mode": "reference", "reference": str(ref_path), "estimate": str(est_path), **rep.to_dict(per_band=True)}
    if csv is not None:
        _write_csv(csv, rep, result)
    if plot is not None:
        _plot(plot, rep, rmeta, f"{Path(est_path).name} vs {Path(ref_path).name}", ref, est, crop)
        _note(quiet, f"wrote {plot}")
    if json_out:
        emit_json(result)
    elif not (csv is not None and str(csv) == "-"):
        _render(rep, per_band, rmeta)


def _band_labels(meta) -> list[str]:
    import numpy as np

    if meta.band_names:
        return list(meta.band_names)
    if meta.wavelengths is not None:
        return [f"{w:g}" for w in np.asarray(meta.wavelengths)]
    return None


def _fmt(v, digits=4) -> str:
    import math

    if v is None:
        return "—"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return f"{v:.{digits}f}"


def _render(rep, per_band: bool, meta) -> None:
    from rich.table import Table

    t = Table(title="hsfuse metrics", show_lines=False)
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("convention", overflow="fold")
    c = rep.conventions
    notes = {
        "psnr": f"mean of per-band PSNR; peak {c['peak_values'] if c['peak'] == 'band-max' else c['peak']} ({c.get('peak_rule', '')})",
        "ssim": "Gaussian σ=1.5 window, data_range=peak" if rep.summary["ssim"] is not None else "skipped",
        "sam": f"degrees; {c['sam_zero_norm_excluded']} zero-spectrum pixels excluded",
        "ergas": f"100/s·sqrt(mean MSE_b/μ_b²), s={c['ergas_scale']:g}" if c["ergas_scale"] else "needs --scale",
        "rmse": "over all bands and valid pixels",
        "cc": "Pearson per band, mean",
        "uiqi": "Wang-Bovik Q, 32×32 sliding windows" if rep.summary["uiqi"] is not None else "skipped",
    }
    for k in SUMMARY_ORDER:
        v = rep.summary.get(k)
        t.add_row(k.upper() + (f" ({UNITS[k]})" if k in UNITS else ""), _fmt(v, 3 if k in ("psnr", "sam", "ergas") else 4),
                  notes[k])
    out.print(t)
    out.print(f"[dim]{c['valid_pixels']} valid pixels, {c['masked_pixels']} masked (NaN/nodata), crop {c['crop']}, "
              f"{c['bands']} bands[/]")
    if per_band:
        pb = Table(title="per band")
        pb.add_column("band")
        for k in ("psnr", "ssim", "rmse", "cc", "uiqi"):
            if k in rep.per_band:
                pb.add_column(k.upper(), justify="right")
        names = rep.band_names or [str(i + 1) for i in range(c["bands"])]
        for i, n in enumerate(names):
            pb.add_row(n, *[_fmt(float(rep.per_band[k][i]), 3 if k == "psnr" else 4)
                            for k in ("psnr", "ssim", "rmse", "cc", "uiqi") if k in rep.per_band])
        out.print(pb)


def _write_csv(path: Path, rep, result: dict) -> None:
    import csv as csvmod
    import io
    import json

    buf = io.StringIO()
    for k, v in result["conventions"].items():
        buf.write(f"# {k}: {json.dumps(v) if not isinstance(v, str) else v}\n")
    for k, v in result["summary"].items():
        buf.write(f"# summary {k}: {v}\n")
    w = csvmod.writer(buf, lineterminator="\n")
    keys = [k for k in ("psnr", "ssim", "rmse", "cc", "uiqi") if k in rep.per_band]
    w.writerow(["band"] + keys)
    names = rep.band_names or [str(i + 1) for i in range(rep.conventions["bands"])]
    for i, n in enumerate(names):
        w.writerow([n] + [repr(float(rep.per_band[k][i])) for k in keys])
    w.writerow(["mean"] + [repr(rep.summary[k]) for k in keys])
    if str(path) == "-":
        import sys

        sys.stdout.write(buf.getvalue())
    else:
        _atomic(Path(path), lambda tmp: tmp.write_text(buf.getvalue()))


def _atomic(path: Path, write) -> None:
    from ..io.base import atomic_write

    atomic_write(path, write)


def _rgb_bands(meta, c: int) -> list[int]:
    """Band indices for a quicklook: nearest 640/550/460 nm when the cube covers them, else spread indices."""
    import numpy as np

    wl = None if meta.wavelengths is None or len(meta.wavelengths) != c else np.asarray(meta.wavelengths, float)
    if wl is not None and wl.min() <= 480 and wl.max() >= 620:
        return [int(np.argmin(np.abs(wl - t))) for t in (640.0, 550.0, 460.0)]
    return [min(c - 1, (3 * c) // 4), c // 2, c // 4]


def _plot(path: Path, rep, meta, title: str, ref=None, est=None, crop: int = 0) -> None:
    """PNG report: per-band PSNR/SSIM, error and SAM maps (SAM scaled to its 99th percentile), RGB quicklooks
    of reference and estimate, and their spectra at the worst and the median SAM pixels."""
    try:
        import matplotlib
    except ImportError:
        from ..errors import UsageError

        raise UsageError("--plot needs matplotlib: pip install 'hsfuse[plot]' (or matplotlib)") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    c = rep.conventions["bands"]
    has_wl = meta.wavelengths is not None and len(meta.wavelengths) == c
    x = np.asarray(meta.wavelengths) if has_wl else np.arange(1, c + 1)
    xl = "wavelength (nm)" if has_wl else "band"
    fig, ax = plt.subplots(3, 3, figsize=(15, 12))
    ax[0, 0].plot(x, rep.per_band["psnr"], "o-", ms=3)
    ax[0, 0].set(title=f"PSNR per band (mean {rep.summary['psnr']:.2f} dB)", xlabel=xl, ylabel="dB")
    k2 = "ssim" if "ssim" in rep.per_band else "cc"
    ax[0, 1].plot(x, rep.per_band[k2], "o-", ms=3, color="C1")
    ax[0, 1].set(title=f"{k2.upper()} per band", xlabel=xl)
    im = ax[0, 2].imshow(rep.error_map, cmap="viridis")
    ax[0, 2].set(title="RMSE over bands per pixel")
    fig.colorbar(im, ax=ax[0, 2])
    sam = np.asarray(rep.sam_map, dtype=np.float64)
    finite = np.isfinite(sam)
    vmax = float(np.percentile(sam[finite], 99)) if finite.any() else 1.0
    im = ax[1, 2].imshow(sam, cmap="magma", vmin=0, vmax=max(vmax, 1e-6))
    ax[1, 2].set(title=f"SAM (mean {rep.summary['sam']:.2f}°; scale to p99 {vmax:.2f}°)")
    fig.colorbar(im, ax=ax[1, 2], label="degrees")
    if ref is not None and est is not None:
        if crop:
            ref, est = ref[:, crop:-crop, crop:-crop], est[:, crop:-crop, crop:-crop]
        bands = _rgb_bands(meta, c)
        scale = float(np.nanpercentile(ref[bands], 99)) or 1.0
        for a, cube, name in ((ax[1, 0], ref, "reference"), (ax[1, 1], est, "estimate")):
            rgb = np.clip(np.nan_to_num(np.moveaxis(cube[bands], 0, -1) / scale), 0, 1) ** (1 / 2.2)
            a.imshow(rgb)
            a.set(title=f"{name} (RGB = bands {', '.join(str(b + 1) for b in bands)})")
        if finite.any() and sam.shape == ref.shape[1:]:
            flat = np.where(finite, sam, np.nan).ravel()
            order = np.argsort(np.where(np.isfinite(flat), flat, -1))
            n = int(np.isfinite(flat).sum())
            picks = {"worst": int(order[-1]), "median": int(order[len(order) - n + n // 2])}
            for a, (label, idx) in zip((ax[2, 0], ax[2, 1]), picks.items()):
                r, q = divmod(idx, sam.shape[1])
                a.plot(x, ref[:, r, q], "k-", label="reference")
                a.plot(x, est[:, r, q], "C3--", label="estimate")
                a.set(title=f"{label} SAM pixel (row {r}, col {q}): {sam[r, q]:.2f}°", xlabel=xl)
                a.legend(fontsize=8)
    for a in (ax[0, 2], ax[1, 0], ax[1, 1], ax[1, 2]):
        a.set_xticks([])
        a.set_yticks([])
    ax[2, 2].axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    _atomic(Path(path), lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)


def _no_reference(files, lr_path, msi_path, scale_s, peak_s, psf_kind, sigma, form, border, srf_spec, protocol,
                  json_out, csv, quiet):

    from ..forward.degrade import crop_to_multiple
    from ..forward.psf import make_psf
    from ..forward.srf import load_srf
    from ..metrics import auto_peak, no_reference_metrics

    if lr_path is None or msi_path is None:
        raise UsageError("the no-reference mode needs both --lr and --msi")
    if len(files) != 1:
        raise UsageError("in the no-reference mode give only the FUSED cube as argument")
    if csv is not None:
        raise UsageError("--csv is for the full-reference mode; use --json")
    fused_path = files[0]
    rule = "none"
    if protocol is not None:
        from ..forward.protocols import get_protocol

        rule = get_protocol(protocol).input_scaling
    peak = _parse_peak(peak_s)
    fused, fmeta, _, _ = _read(fused_path, rule, "fused")
    lr, lmeta, ldtype, _ = _read(lr_path, rule, "LR")
    msi, mmeta, mdtype, _ = _read(msi_path, rule, "MSI")
    c, hh, ww = fused.shape
    if lr.shape[0] != c:
        raise InputError(f"band count mismatch: fused {fused_path} has {c} bands, LR {lr_path} has {lr.shape[0]}")
    if msi.shape[1:] != fused.shape[1:]:
        raise InputError(f"size mismatch: fused {fused_path} is {hh}×{ww}, MSI {msi_path} is {msi.shape[1]}×{msi.shape[2]}")
    h, w = lr.shape[1:]
    if hh // h != ww // w or hh // h < 1 or hh // h != round(hh / h):
        raise InputError(f"fused {hh}×{ww} is not an integer multiple of LR {h}×{w}")
    s = hh // h
    given = parse_scale(scale_s)
    if given is not None and given != s:
        raise UsageError(f"--scale {given} contradicts the sizes (fused {hh}×{ww}, LR {h}×{w}: s = {s})")
    fused, _ = crop_to_multiple(fused, s)
    msi, _ = crop_to_multiple(msi, s)

    srf_mat, srf_rule = None, ""
    if srf_spec is not None:
        srf_mat = load_srf(srf_spec, fmeta.wavelengths if fmeta.wavelengths is not None else lmeta.wavelengths, c).matrix
        if srf_mat.shape[0] != msi.shape[0]:
            raise InputError(f"SRF '{srf_spec}' has {srf_mat.shape[0]} bands, MSI {msi_path} has {msi.shape[0]}")
        srf_rule = f"given: {srf_spec}"
    if psf_kind is None and sigma is not None:
        psf_kind = "gaussian"
    psf, psf_rule = None, ""
    if psf_kind is not None:
        psf = make_psf(psf_kind, s, sigma=sigma, form=form, border=border)
        psf_rule = f"given: {psf.name}"
    if peak == "auto":
        pl, why_l = auto_peak(ldtype, lmeta.scale, lmeta.offset, lr)
        pm, why_m = auto_peak(mdtype, mmeta.scale, mmeta.offset, msi)
    else:
        pl = pm = peak
        why_l = why_m = "given" if peak != "band-max" else "per band max"
    summary, conventions = no_reference_metrics(fused, lr, msi, psf, srf_mat, pl, pm, psf_rule, srf_rule)
    q = summary
    notes = {"psf": conventions["psf_rule"], "srf": conventions["srf_rule"]}
    conventions = {**conventions, "lr_peak_rule": why_l, "msi_peak_rule": why_m}
    result = {"mode": "no-reference", "fused": str(fused_path), "lr": str(lr_path), "msi": str(msi_path),
              "summary": summary, "conventions": conventions}
    if json_out:
        emit_json(result)
        return
    from rich.table import Table

    t = Table(title="hsfuse metrics (no reference)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("meaning", overflow="fold")
    t.add_row("LR PSNR (dB)", _fmt(summary["lr_consistency_psnr"], 3), f"re-degraded fused vs LR (peak {pl})")
    t.add_row("LR SAM (deg)", _fmt(summary["lr_consistency_sam"], 3), "re-degraded fused vs LR")
    t.add_row("MSI PSNR (dB)", _fmt(summary["msi_consistency_psnr"], 3), f"SRF·fused vs MSI (peak {pm})")
    t.add_row("D_lambda", _fmt(q["d_lambda"]), "spectral distortion (0 best)")
    t.add_row("D_s", _fmt(q["d_s"]), "spatial distortion (0 best)")
    t.add_row("QNR", _fmt(q["qnr"]), "(1-D_lambda)(1-D_s), 1 best")
    out.print(t)
    out.print(f"[dim]PSF {notes['psf']}; SRF {notes['srf']}[/]")
