"""Simulating a fusion pair from a high-resolution cube file: what ``hsfuse degrade`` does, as one library call.

``DegradeSpec`` says which forward model (a preset, or PSF + SRF described piece by piece);
``simulate_pair`` resolves it before reading anything big, reads the cube (the preset's input scaling),
crops it to a multiple of the scale, degrades, adds noise, and writes the LR-HSI (and the MSI) with the
input's metadata: georeferencing scaled to the LR grid (shifted by the PSF's sampling phase), wavelengths of
the SRF's bands for the MSI, NaN declared as nodata where there is any. Errors name the thing at fault,
not a command-line flag (the CLI adds those).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError, UsageError


@dataclass
class DegradeSpec:
    """The forward model to simulate; with ``protocol`` only its open options may be given besides."""

    protocol: str | None = None
    scale: int | None = None
    psf: str = "gaussian"  # gaussian | box | a kernel file
    sigma: float | None = None
    form: str = "conv"  # block | conv
    pad: int | None = None
    border: str = "reflect"
    srf: str | None = None  # a built-in name (NAME:B1,B2) or a file
    srf_file: str | Path | None = None  # MHF-Net response_coefficient.mat of the cave-* presets
    snr_hsi: float | None = None
    snr_msi: float | None = None
    seed: int | None = None

    def given(self) -> list[str]:
        """Fields set away from their defaults (what a preset may refuse)."""
        defaults = DegradeSpec()
        return [k for k in self.__dataclass_fields__ if k != "protocol" and getattr(self, k) != getattr(defaults, k)]


def _psf_for(spec: DegradeSpec):
    from .protocols import get_protocol
    from .psf import make_psf

    if spec.protocol is not None:
        proto = get_protocol(spec.protocol)
        fixed = [k for k in spec.given() if k not in proto.open_options]
        if fixed:
            raise UsageError(f"protocol {proto.name} fixes {', '.join(fixed)}; leave them out or describe the model "
                             "piece by piece instead of the preset")
        border = spec.border if "border" in proto.open_options else None
        return proto, proto.build_psf(spec.scale, spec.srf_file, border)
    if spec.scale is None:
        raise UsageError("a scale (or a protocol) is needed")
    if spec.srf_file is not None:
        raise UsageError("the MHF-Net response file goes with a cave-* protocol; give it as the SRF otherwise")
    return None, make_psf(spec.psf, spec.scale, sigma=spec.sigma, form=spec.form, pad=spec.pad, border=spec.border)


def _lr_georef(meta, psf):
    from .psf import lr_phase_offset

    if meta.georef is None:
        return None
    georef = meta.georef.scaled(psf.scale)
    delta = lr_phase_offset(psf)
    if delta and georef.transform is not None:
        a, b, c, d, e, f = meta.georef.transform
        t = georef.transform
        georef = type(georef)(georef.crs_wkt, (t[0], t[1], c + (a + b) * delta, t[3], t[4], f + (d + e) * delta))
    return georef


def simulate_pair(hr: str | Path, output: str | Path, msi_path: str | Path | None, spec: DegradeSpec, *,
                  var: str | None = None, in_format: str | None = None, overwrite: bool = False,
                  notify: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write LR-HSI (and MSI) files simulated from ``hr``; returns the record printed by ``degrade --json``."""
    from .. import io as hio
    from .degrade import add_noise, apply_srf, crop_to_multiple, spatial_degrade
    from .protocols import read_protocol_input
    from .psf import describe_psf
    from .srf import load_srf, srf_from_matrix

    say = notify or (lambda _m: None)
    for name, v in (("HSI", spec.snr_hsi), ("MSI", spec.snr_msi)):
        if v is not None and not np.isfinite(v):
            raise UsageError(f"the {name} SNR must be a finite number of dB")
    if msi_path is None and spec.snr_msi is not None:
        raise UsageError("an MSI SNR needs an MSI output")
    if msi_path is not None and Path(output) == Path(msi_path):
        raise UsageError("the LR-HSI and the MSI outputs must be different files")

    # -- the forward model, before reading anything big
    proto, psf = _psf_for(spec)
    s = psf.scale
    fmt_lr = hio.check_writable(output, overwrite=overwrite, inputs=(hr,))
    if msi_path is not None:
        hio.check_writable(msi_path, overwrite=overwrite, inputs=(hr, output))

    # -- read
    with hio.open_cube(hr, in_format, **({"var": var} if var else {})) as src:
        meta, stored_dtype = src.meta, src.dtype
        z, how = read_protocol_input(src, proto.input_scaling if proto is not None else "none")
    c, h, w = z.shape
    say(f"read {hr} ({c}×{h}×{w}, stored {stored_dtype}); input: {how}")
    z, (dh, dw) = crop_to_multiple(z, s)
    if dh or dw:
        say(f"cropped {h}×{w} to {z.shape[1]}×{z.shape[2]} (dropped {dh} bottom rows, {dw} right columns) "
            f"to a multiple of the scale {s}")
    if min(z.shape[1:]) == 0:
        raise InputError(f"image {h}×{w} is smaller than one {s}×{s} LR pixel", hr)

    srf = None
    if msi_path is not None:
        if proto is not None and proto.srf == "mhf-R":
            _, rt = proto.build(s, spec.srf_file)
            if c != rt.shape[1]:
                raise InputError(f"protocol {proto.name} needs a 31-band cube (MHF-Net R is 31×3); this one has {c} bands", hr)
            srf = srf_from_matrix(rt, meta.wavelengths, ["R", "G", "B"], source=f"MHF-Net R ({proto.name})",
                                  normalise=False)
        else:
            if spec.srf is None:
                raise UsageError("an MSI output needs an SRF (a built-in name or a file)")
            srf = load_srf(spec.srf, meta.wavelengths, c)
            low = [f"{n} ({cv:.0%})" for n, cv in zip(srf.band_names, srf.coverage if srf.coverage is not None else [])
                   if cv < 0.9]
            if low:
                say(f"SRF bands only partly inside the cube's wavelength range: {', '.join(low)} "
                    "of their area (weights renormalised over what is inside)")

    # -- degrade
    lr = spatial_degrade(z, psf)
    msi = apply_srf(z, srf) if srf is not None else None
    snr_hsi = spec.snr_hsi if spec.snr_hsi is not None else (proto.snr_hsi if proto else None)
    snr_msi = spec.snr_msi if spec.snr_msi is not None else (proto.snr_msi if proto else None)
    if snr_hsi is not None or snr_msi is not None:
        rng = np.random.default_rng(spec.seed)
        lr = add_noise(lr, snr_hsi, rng)
        if msi is not None:
            msi = add_noise(msi, snr_msi, rng)

    # -- metadata + write
    record = {
        "protocol": proto.name if proto else None,
        "scale": s,
        "psf": describe_psf(psf),
        "srf": srf.describe() if srf is not None else None,
        "snr_hsi_db": snr_hsi,
        "snr_msi_db": snr_msi,
        "seed": spec.seed,
        "noise": ("sigma_b^2 = mean(x_b^2)/10^(snr/10), white Gaussian"
                  if (snr_hsi is not None or snr_msi is not None) else None),
        "input_scaling": how,
        "crop": {"rows_dropped": dh, "cols_dropped": dw, "hr_used": [int(z.shape[1]), int(z.shape[2])]},
    }
    desc = (f"hsfuse degrade of {Path(hr).name}: protocol={record['protocol']} scale={s} psf={psf.name} "
            f"pad={psf.pad} border={psf.border} snr_hsi={snr_hsi} snr_msi={snr_msi} seed={spec.seed}"
            + (f" cropped_to={z.shape[1]}x{z.shape[2]}" if dh or dw else ""))
    has_nan = bool(np.isnan(lr).any() or (msi is not None and np.isnan(msi).any()))
    # NaN marks nodata in hsfuse's float outputs: declared when there is any, so GDAL and ENVI see it too
    base = meta.copy(scale=1.0, offset=0.0, nodata=float("nan") if has_nan else None, source={}, description=desc)
    hio.write_cube(output, lr.astype(np.float32), base.copy(georef=_lr_georef(meta, psf)), "float32", overwrite=overwrite)
    result = {"lr": {"path": str(output), "shape": list(lr.shape), "format": fmt_lr}, **record}
    if msi is not None:
        msi_meta = base.copy(wavelengths=srf.centres, fwhm=srf.fwhm, band_names=list(srf.band_names), bad_bands=None,
                             georef=meta.georef, description=desc + f" srf={srf.source}")
        hio.write_cube(msi_path, msi.astype(np.float32), msi_meta, "float32", overwrite=overwrite)
        result["msi"] = {"path": str(msi_path), "shape": list(msi.shape)}
    return result
