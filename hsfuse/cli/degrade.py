"""`hsfuse degrade`: simulate an LR-HSI / HR-MSI pair from a high-resolution cube.

The library does the work (``hsfuse.forward.degrade``, ``hsfuse.forward.srf``,
``hsfuse.forward.protocols``); this module parses options, reads, writes and reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError, UsageError
from . import options
from .common import emit_json, err, guard, out


def parse_scale(value: Optional[str], option: str = "--scale") -> Optional[int]:
    """An integer scale from text; '2.5' or 'x' is a usage error (exit 2)."""
    if value is None:
        return None
    try:
        f = float(value)
    except ValueError:
        raise UsageError(f"{option} must be an integer, got '{value}'") from None
    if not f.is_integer() or f < 1:
        raise UsageError(f"{option} must be a positive integer (the LR pixel is s×s HR pixels), got '{value}'")
    return int(f)


def _list_callback(value: bool) -> None:
    if not value:
        return
    from ..forward.protocols import PROTOCOLS
    from ..forward.srf import builtin_srfs

    out.print("[bold]Protocols[/] (docs/protocols.md)")
    for p in PROTOCOLS.values():
        out.print(f"  {p.name:16s} {p.summary}")
    out.print("[bold]Built-in SRFs[/] (--srf NAME or NAME:B1,B2,...)")
    for b in builtin_srfs().values():
        out.print(f"  {b.name:16s} {b.description}\n  {'':16s} [dim]source: {b.source}[/]")
    raise typer.Exit()


def degrade(
    hr: Path = typer.Argument(..., help="High-resolution cube (any hsfuse format, or a folder of band images)."),
    output: Path = typer.Option(..., "-o", "--output", help="LR-HSI output file (.tif, .hdr, ...)."),
    msi: Optional[Path] = typer.Option(None, "--msi", help="HR-MSI output file (needs an SRF: --srf or a protocol)."),
    protocol: Optional[str] = options.protocol_option(
                                           help="Preset: cave-mhf-x32, cave-gauss-x4/x8/x16, wald-gauss (see --list)."),
    scale: Optional[str] = typer.Option(None, "--scale", "-s", help="Integer scale factor s (LR pixel = s×s HR pixels)."),
    psf: str = options.psf_option(default="gaussian", help="gaussian | box | kernel FILE (.npy, .csv, .mat[:VAR])."),
    sigma: Optional[float] = options.sigma_option(help="Gaussian σ in HR pixels (default: FWHM = s, σ = s/2.3548)."),
    form: str = options.form_option(help="block (non-overlapping s×s blocks, kernel of size s) | conv (convolution + decimation)."),
    pad: Optional[int] = typer.Option(None, "--pad", help="conv form: kernel offset p, LR\\[i] uses Z\\[s·i − p + a] (default (k − s)//2: centred)."),
    border: str = typer.Option("reflect", "--border", help="Outside-image rule for conv: reflect | edge | wrap | zero."),
    srf: Optional[str] = options.srf_option(help="Built-in name (see --list) or FILE (.csv table, .npy / .mat[:VAR] matrix)."),
    srf_file: Optional[Path] = typer.Option(None, "--srf-file", help="MHF-Net response_coefficient.mat for the cave-* protocols "
                                            "(default: $HSFUSE_MHF_RESPONSE or ../shared/data/srf/nikon_d700_mhfnet/)."),
    snr_hsi: Optional[float] = typer.Option(None, "--snr-hsi", help="Add Gaussian noise to the LR-HSI at this SNR (dB) per band."),
    snr_msi: Optional[float] = typer.Option(None, "--snr-msi", help="Add Gaussian noise to the MSI at this SNR (dB) per band."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed for the noise."),
    in_format: Optional[str] = typer.Option(None, "--format", help="Input format override (envi, tiff, mat, bands)."),
    var: Optional[str] = typer.Option(None, "--var", help="Variable of a .mat input holding several arrays."),
    overwrite: bool = options.overwrite_flag(help="Replace existing outputs."),
    json_out: bool = options.json_flag(help="Print one JSON summary object on stdout."),
    quiet: bool = options.quiet_flag(help="No notes on stderr."),
    list_: Optional[bool] = typer.Option(None, "--list", callback=_list_callback, is_eager=True,
                                         help="List protocols and built-in SRFs, then exit."),
) -> None:
    """Simulate a fusion pair: LR = decimate_s(HR ⊛ PSF) + noise, MSI = SRF · HR + noise.

    One exact definition covers both sampling forms (docs/protocols.md):
    LR\\[c,i,j] = Σ_ab K\\[a,b]·HR\\[c, s·i+a−p, s·j+b−p]. HR sizes that are not a
    multiple of s are cropped at the bottom/right (noted on stderr and recorded).
    Noise: σ_b² = mean(x_b²)/10^(SNR/10) per band. Outputs are float32.

    Examples:

      $ hsfuse degrade cave/beads_ms --protocol cave-gauss-x8 -o lr.tif --msi msi.tif

      $ hsfuse degrade scene.hdr -s 4 --psf gaussian --srf sentinel2-10m:B2,B3,B4 -o lr.hdr --msi msi.hdr --snr-hsi 35 --seed 0
    """
    with guard():
        _run(hr, output, msi, protocol, scale, psf, sigma, form, pad, border, srf, srf_file, snr_hsi, snr_msi, seed, var,
             in_format, overwrite, json_out, quiet)


def _note(quiet: bool, msg: str) -> None:
    if not quiet:
        err.print(f"hsfuse degrade: {msg}", soft_wrap=True, markup=False)


def _run(hr, output, msi_path, protocol, scale_s, psf_kind, sigma, form, pad, border, srf_spec, srf_file,
         snr_hsi, snr_msi, seed, var, in_format, overwrite, json_out, quiet) -> None:
    import numpy as np

    from .. import io as hio
    from ..forward.degrade import add_noise, apply_srf, crop_to_multiple, spatial_degrade
    from ..forward.psf import describe_psf, lr_phase_offset, make_psf
    from ..forward.protocols import get_protocol, read_protocol_input
    from ..forward.srf import load_srf, srf_from_matrix

    scale = parse_scale(scale_s)
    for name, v in (("--snr-hsi", snr_hsi), ("--snr-msi", snr_msi)):
        if v is not None and not np.isfinite(v):
            raise UsageError(f"{name} must be a finite number of dB")
    if msi_path is None and snr_msi is not None:
        raise UsageError("--snr-msi needs --msi")
    if output == msi_path:
        raise UsageError("-o and --msi must be different files")

    # -- resolve the forward model (before reading anything big) ---------------------------
    proto = None
    if protocol is not None:
        proto = get_protocol(protocol)
        given = {"scale": scale_s is not None, "psf": psf_kind != "gaussian", "sigma": sigma is not None,
                 "form": form != "conv", "pad": pad is not None, "border": border != "reflect",
                 "srf": srf_spec is not None, "srf_file": srf_file is not None, "snr_hsi": snr_hsi is not None,
                 "snr_msi": snr_msi is not None, "seed": seed is not None}
        fixed = [k for k, v in given.items() if v and k not in proto.open_options]
        if fixed:
            opts = ", ".join("--" + k.replace("_", "-") for k in fixed)
            raise UsageError(f"protocol {proto.name} fixes {opts}; drop them or describe the model with options instead")
        psf = proto.build_psf(scale, srf_file, border if "border" in proto.open_options else None)
    else:
        if scale is None:
            raise UsageError("give --scale (or a --protocol)")
        if srf_file is not None:
            raise UsageError("--srf-file goes with a cave-* --protocol; use --srf FILE otherwise")
        psf = make_psf(psf_kind, scale, sigma=sigma, form=form, pad=pad, border=border)
    s = psf.scale

    fmt_lr = hio.check_writable(output, overwrite=overwrite, inputs=(hr,))
    if msi_path is not None:
        hio.check_writable(msi_path, overwrite=overwrite, inputs=(hr, output))

    # -- read -----------------------------------------------------------------------------
    with hio.open_cube(hr, in_format, **({"var": var} if var else {})) as src:
        meta = src.meta
        stored_dtype = src.dtype
        z, how = read_protocol_input(src, proto.input_scaling if proto is not None else "none")
    c, h, w = z.shape
    _note(quiet, f"read {hr} ({c}×{h}×{w}, stored {stored_dtype}); input: {how}")
    z, (dh, dw) = crop_to_multiple(z, s)
    if dh or dw:
        _note(quiet, f"cropped {h}×{w} to {z.shape[1]}×{z.shape[2]} (dropped {dh} bottom rows, {dw} right columns) "
                     f"to a multiple of the scale {s}")
    if min(z.shape[1:]) == 0:
        raise InputError(f"image {h}×{w} is smaller than one {s}×{s} LR pixel", hr)

    srf = None
    if msi_path is not None:
        if proto is not None and proto.srf == "mhf-R":
            _, rt = proto.build(s, srf_file)
            if c != rt.shape[1]:
                raise InputError(f"protocol {proto.name} needs a 31-band cube (MHF-Net R is 31×3); this one has {c} bands", hr)
            srf = srf_from_matrix(rt, meta.wavelengths, ["R", "G", "B"], source=f"MHF-Net R ({proto.name})",
                                  normalise=False)
        else:
            if srf_spec is None:
                raise UsageError("--msi needs an SRF: --srf NAME|FILE (see --list)")
            srf = load_srf(srf_spec, meta.wavelengths, c)
            low = [f"{n} ({cv:.0%})" for n, cv in zip(srf.band_names, srf.coverage if srf.coverage is not None else [])
                   if cv < 0.9]
            if low:
                _note(quiet, f"SRF bands only partly inside the cube's wavelength range: {', '.join(low)} "
                             "of their area (weights renormalised over what is inside)")

    # -- degrade --------------------------------------------------------------------------
    lr = spatial_degrade(z, psf)
    msi = apply_srf(z, srf) if srf is not None else None
    snr_hsi = snr_hsi if snr_hsi is not None else (proto.snr_hsi if proto else None)
    snr_msi = snr_msi if snr_msi is not None else (proto.snr_msi if proto else None)
    if snr_hsi is not None or snr_msi is not None:
        rng = np.random.default_rng(seed)
        lr = add_noise(lr, snr_hsi, rng)
        if msi is not None:
            msi = add_noise(msi, snr_msi, rng)

    # -- metadata + write -----------------------------------------------------------------
    psf_info = describe_psf(psf)
    record = {
        "protocol": proto.name if proto else None,
        "scale": s,
        "psf": psf_info,
        "srf": srf.describe() if srf is not None else None,
        "snr_hsi_db": snr_hsi,
        "snr_msi_db": snr_msi,
        "seed": seed,
        "noise": ("sigma_b^2 = mean(x_b^2)/10^(snr/10), white Gaussian"
                  if (snr_hsi is not None or snr_msi is not None) else None),
        "input_scaling": how,
        "crop": {"rows_dropped": dh, "cols_dropped": dw, "hr_used": [int(z.shape[1]), int(z.shape[2])]},
    }
    desc = (f"hsfuse degrade of {Path(hr).name}: protocol={record['protocol']} scale={s} psf={psf.name} "
            f"pad={psf.pad} border={psf.border} snr_hsi={snr_hsi} snr_msi={snr_msi} seed={seed}"
            + (f" cropped_to={z.shape[1]}x{z.shape[2]}" if dh or dw else ""))
    georef_lr = None
    if meta.georef is not None:
        georef_lr = meta.georef.scaled(s)
        delta = lr_phase_offset(psf)
        if delta and georef_lr.transform is not None:
            a, b, cc, d, e, f = meta.georef.transform
            t = georef_lr.transform
            georef_lr = type(georef_lr)(georef_lr.crs_wkt, (t[0], t[1], cc + (a + b) * delta, t[3], t[4], f + (d + e) * delta))
    has_nan = bool(np.isnan(lr).any() or (msi is not None and np.isnan(msi).any()))
    # NaN marks nodata in hsfuse's float outputs: declared when there is any, so GDAL and ENVI see it too
    base = meta.copy(scale=1.0, offset=0.0, nodata=float("nan") if has_nan else None, source={}, description=desc)
    lr_meta = base.copy(georef=georef_lr)
    hio.write_cube(output, lr.astype(np.float32), lr_meta, "float32", overwrite=overwrite)
    result = {"lr": {"path": str(output), "shape": list(lr.shape), "format": fmt_lr}, **record}
    if msi is not None:
        msi_meta = base.copy(wavelengths=srf.centres, fwhm=srf.fwhm, band_names=list(srf.band_names), bad_bands=None,
                             georef=meta.georef, description=desc + f" srf={srf.source}")
        hio.write_cube(msi_path, msi.astype(np.float32), msi_meta, "float32", overwrite=overwrite)
        result["msi"] = {"path": str(msi_path), "shape": list(msi.shape)}
    if json_out:
        emit_json(result)
    elif not quiet:
        msg = f"wrote LR {output} ({lr.shape[0]}×{lr.shape[1]}×{lr.shape[2]})"
        if msi is not None:
            msg += f" and MSI {msi_path} ({msi.shape[0]}×{msi.shape[1]}×{msi.shape[2]}: {', '.join(srf.band_names)})"
        err.print(f"hsfuse degrade: {msg}; PSF {psf.name}, pad {psf.pad}, border {psf.border}", soft_wrap=True,
                  markup=False)
