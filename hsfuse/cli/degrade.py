"""`hsfuse degrade`: simulate an LR-HSI / HR-MSI pair from a high-resolution cube.

The library does the work (``hsfuse.forward.degrade``, ``hsfuse.forward.srf``,
``hsfuse.forward.protocols``); this module parses options, reads, writes and reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import UsageError
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
    import math

    from ..forward.simulate import DegradeSpec, simulate_pair

    # what only the command line can say: which flag is at fault
    scale = parse_scale(scale_s)
    for name, v in (("--snr-hsi", snr_hsi), ("--snr-msi", snr_msi)):
        if v is not None and not math.isfinite(v):
            raise UsageError(f"{name} must be a finite number of dB")
    if msi_path is None and snr_msi is not None:
        raise UsageError("--snr-msi needs --msi")
    if output == msi_path:
        raise UsageError("-o and --msi must be different files")
    spec = DegradeSpec(protocol, scale, psf_kind, sigma, form, pad, border, srf_spec, srf_file, snr_hsi, snr_msi, seed)
    proto = None
    if protocol is not None:
        from ..forward.protocols import get_protocol

        proto = get_protocol(protocol)
        fixed = [k for k in spec.given() if k not in proto.open_options]
        if fixed:
            opts = ", ".join("--" + k.replace("_", "-") for k in fixed)
            raise UsageError(f"protocol {proto.name} fixes {opts}; drop them or describe the model with options instead")
    elif scale is None:
        raise UsageError("give --scale (or a --protocol)")
    elif srf_file is not None:
        raise UsageError("--srf-file goes with a cave-* --protocol; use --srf FILE otherwise")
    if msi_path is not None and srf_spec is None and (proto is None or proto.srf != "mhf-R"):
        raise UsageError("--msi needs an SRF: --srf NAME|FILE (see --list)")

    result = simulate_pair(hr, output, msi_path, spec, var=var, in_format=in_format, overwrite=overwrite,
                           notify=lambda m: _note(quiet, m))
    if json_out:
        emit_json(result)
    elif not quiet:
        lr, msi, psf = result["lr"], result.get("msi"), result["psf"]
        msg = "wrote LR {} ({})".format(lr["path"], "×".join(map(str, lr["shape"])))
        if msi is not None:
            msg += " and MSI {} ({}: {})".format(msi["path"], "×".join(map(str, msi["shape"])),
                                                ", ".join(result["srf"]["bands"]))
        err.print(f"hsfuse degrade: {msg}; PSF {psf['name']}, pad {psf['pad']}, border {psf['border']}", soft_wrap=True,
                  markup=False)
