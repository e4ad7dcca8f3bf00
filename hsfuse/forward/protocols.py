"""Named degradation protocols: one preset = PSF + sampling form + SRF + noise + input scaling.

A protocol is what a paper means by "we simulate the LR-HSI and HR-MSI from
CAVE as follows"; ``docs/protocols.md`` writes each one out exactly. The
registry is a plain dict (``PROTOCOLS``), no scanning.

The CAVE presets reproduce the MHF-Net / HSR-Diff protocol. Its kernel ``C``
(32×32) and RGB response ``R`` (31×3, columns R, G, B) live in the third-party
file ``response_coefficient.mat``, which hsfuse never ships: its path comes at
run time from ``srf_path`` (``--srf-file``), the environment variable
``HSFUSE_MHF_RESPONSE``, or ``../shared/data/srf/nikon_d700_mhfnet/response_coefficient.mat``
relative to the current directory and to the repository (``find_mhf_response``).

>>> psf, srf = PROTOCOLS["cave-gauss-x8"].build()
>>> lr, msi = degrade_cube(hr_chw / 65535.0, psf, srf)      # hsfuse.forward.degrade.degrade_cube

    $ hsfuse degrade beads_ms/ --protocol cave-gauss-x8 -o lr.tif --msi msi.tif
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, UsageError
from .psf import Psf, box_kernel, gaussian_kernel, make_psf, resize_kernel

ENV_MHF = "HSFUSE_MHF_RESPONSE"
MHF_RELPATH = Path("..") / "shared" / "data" / "srf" / "nikon_d700_mhfnet" / "response_coefficient.mat"
REPO = Path(__file__).resolve().parents[2]  # the checkout (hsfuse/forward/ -> repo root)


def find_mhf_response(srf_path: str | Path | None = None) -> Path:
    """Locate ``response_coefficient.mat``: explicit path > $HSFUSE_MHF_RESPONSE > ../shared/... (cwd, repo)."""
    if srf_path is not None:
        p = Path(srf_path)
        if not p.is_file():
            raise InputError("MHF-Net response file not found", p)
        return p
    env = os.environ.get(ENV_MHF)
    if env:
        p = Path(env)
        if not p.is_file():
            raise InputError(f"${ENV_MHF} points to a missing file", p)
        return p
    tried = []
    for base in (Path.cwd(), REPO):
        p = (base / MHF_RELPATH).resolve()
        tried.append(str(p))
        if p.is_file():
            return p
    raise InputError("cannot find the MHF-Net response_coefficient.mat (variables C and R): give it with "
                     f"${ENV_MHF} (or {{srf_file}}); looked in {', '.join(tried)}", options=("srf_file",))


def load_mhf_response(srf_path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, Path]:
    """(C 32×32 kernel, R^T (3, 31) with rows R, G, B, path) from the MHF-Net file, as stored."""
    from .srf import load_mat_vars

    p = find_mhf_response(srf_path)
    try:
        mats = load_mat_vars(p)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"cannot read: {type(e).__name__}: {e}", p) from e
    if "C" not in mats or "R" not in mats:
        raise InputError(f"expected variables C and R, found {', '.join(sorted(mats)) or 'none'}", p)
    c = np.asarray(mats["C"], dtype=np.float64)
    r = np.asarray(mats["R"], dtype=np.float64)
    if c.shape != (32, 32) or r.shape != (31, 3):
        raise InputError(f"expected C 32×32 and R 31×3, got C {c.shape} and R {r.shape}", p)
    return c, r.T.copy(), p


@dataclass(frozen=True)
class Protocol:
    """One preset. ``build()`` turns it into (Psf, SRF matrix)."""

    name: str
    summary: str
    form: str  # "block" (non-overlapping s×s blocks) or "conv" (convolution + decimation)
    kernel: str  # "mhf-C" (the file's C), "gaussian"
    scale: int | None  # None: given at run time (--scale)
    sigma_rule: str  # how σ follows from s (documentation) ; "" when not Gaussian
    srf: str | None  # "mhf-R" (the file's R, as R^T) or None (given at run time: --srf)
    input_scaling: str  # "uint16": stored uint16 is divided by 65535; "none": physical values as read
    border: str = "reflect"
    snr_hsi: float | None = None
    snr_msi: float | None = None
    #: CLI options the user may still set with this protocol (everything else is fixed)
    open_options: tuple[str, ...] = ()
    reference: str = ""
    notes: tuple[str, ...] = field(default=())
    #: conv form: kernel side (None: ±3σ) and pad (None: centred on the block; 0-based tap at sample s·i)
    kernel_size: int | None = None
    pad: int | None = None

    def sigma(self, scale: int) -> float | None:
        if self.kernel != "gaussian":
            return None
        if self.sigma_rule == "s/4":
            return scale / 4.0
        if self.sigma_rule == "fwhm=s":
            return scale / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        if self.sigma_rule.startswith("="):
            return float(self.sigma_rule[1:])
        raise ValueError(self.sigma_rule)

    def resolve_scale(self, scale: int | None) -> int:
        if self.scale is not None:
            if scale is not None and int(scale) != self.scale:
                raise UsageError(f"protocol {self.name} fixes the scale at {self.scale}; drop {{scale}} {scale}", options=("scale",))
            return self.scale
        if scale is None:
            raise UsageError(f"protocol {self.name} needs {{scale}}", options=("scale",))
        return int(scale)

    def build_psf(self, scale: int | None = None, srf_path: str | Path | None = None, border: str | None = None) -> Psf:
        s = self.resolve_scale(scale)
        if self.kernel == "mhf-C":
            try:
                c, _, p = load_mhf_response(srf_path)
                return Psf(c, s, pad=0, border=self.border, name=f"{self.name}: C from {p.name} (block {s}×{s})")
            except InputError:
                if srf_path is not None or os.environ.get(ENV_MHF):
                    raise  # a file the user named must be there
                # the file's C is a normalised Gaussian, sigma 10, centred at (15.5, 15.5) (equal to 3e-18,
                # checked in tests/forward/test_degrade.py): an installed hsfuse builds it without the file
                return Psf(gaussian_kernel(32, 10.0), s, pad=0, border=self.border,
                           name=f"{self.name}: C as the Gaussian sigma 10 it equals (block {s}×{s})")
        if self.kernel == "hiftool":
            return Psf(hiftool_kernel(s), s, pad=0, border=self.border,
                       name=f"{self.name}: HIFtool Gaussian size {s}, sigma {s // 1.5:g} (block {s}×{s})")
        if self.kernel in ("box", "triangle", "cubic"):
            kern = box_kernel(s) if self.kernel == "box" else resize_kernel(self.kernel, s)
            return Psf(kern, s, pad=(kern.shape[0] - s) // 2, border=border or self.border,
                       name=f"{self.name}: {self.kernel} ×{s}")
        sig = self.sigma(s)
        psf = make_psf("gaussian", s, sigma=sig, form=self.form, border=border or self.border,
                       size=self.kernel_size, pad=self.pad)
        psf.name = f"{self.name}: " + psf.name
        return psf

    def build(self, scale: int | None = None, srf_path: str | Path | None = None) -> tuple[Psf, np.ndarray | None]:
        """(Psf, SRF matrix (m, C) or None when the protocol leaves the SRF to the caller)."""
        psf = self.build_psf(scale, srf_path)
        srf = None
        if self.srf == "mhf-R":
            _, rt, _ = load_mhf_response(srf_path)
            srf = rt
        return psf, srf

    def describe(self) -> dict:
        return {
            "name": self.name, "summary": self.summary, "form": self.form, "kernel": self.kernel,
            "scale": self.scale, "sigma_rule": self.sigma_rule or None, "srf": self.srf,
            "input_scaling": self.input_scaling, "border": self.border if self.form == "conv" else None,
            "snr_hsi": self.snr_hsi, "snr_msi": self.snr_msi, "reference": self.reference,
        }


def hiftool_kernel(s: int) -> np.ndarray:
    """HIFtool's ×s kernel: taps at x = −((s−1))//2 … (s−1)//2 (Python floor division, so −16 … 15 at
    ×32: the peak sits half a pixel after the block centre), weight exp(−x²/2σ²) with σ = s // 1.5
    (floor: 21 at ×32), normalised; the 2-D kernel is the outer product, applied in s×s blocks
    (``nn.Conv2d(kernel_size=s, stride=s)``, no padding)."""
    x = np.arange(-(s - 1) // 2, (s - 1) // 2 + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / (s // 1.5)) ** 2)
    k /= k.sum()
    return np.outer(k, k)


_HIFTOOL_REF = ("X. Cao et al., HIFtool (github.com/Caoxuheng/HIFtool), Dataloader_tool/loader_L.py: "
                "getGaussiankernel(sf, sf // 1.5), kernel @= kernel.T, Conv2d(kernel_size=sf, stride=sf); "
                "CAVE .mat scenes 1-32: test [1,2,7,8,9,10,11,14,15,20,26,27], validation [16,18,28], the rest "
                "train; HR·R with their NikonD700.npy (hsfuse uses the MHF-Net D700 R: their table is not "
                "shipped).")

_MHF_REF = ("Xie et al., MHF-Net (CVPR 2019 / TPAMI 2020), CAVE simulation; also HSR-Diff. "
            "Kernel C and response R from MHF-net rowData/CAVEdata/'response coefficient.mat'.")

PROTOCOLS: dict[str, Protocol] = {}


def _register(p: Protocol) -> None:
    PROTOCOLS[p.name] = p


_register(Protocol(
    "cave-mhf-x32", "CAVE ×32: 32×32 blocks weighted by MHF-Net C; MSI = HR·R (MHF-Net R); no noise",
    form="block", kernel="mhf-C", scale=32, sigma_rule="", srf="mhf-R", input_scaling="uint16",
    open_options=("srf_file",), reference=_MHF_REF))
for _s in (4, 8, 16):
    _register(Protocol(
        f"cave-gauss-x{_s}",
        f"CAVE ×{_s}: {_s}×{_s} blocks weighted by a normalised Gaussian σ={_s / 4:g} centred at "
        f"({(_s - 1) / 2:g}, {(_s - 1) / 2:g}); MSI = HR·R (MHF-Net R); no noise",
        form="block", kernel="gaussian", scale=_s, sigma_rule="s/4", srf="mhf-R", input_scaling="uint16",
        open_options=("srf_file",),
        reference=("×8: the common CAVE Gaussian-blur protocol (8×8 Gaussian σ=2, non-overlapping); "
                   "×4/×16 keep σ = s/4 (hsfuse choice). R from MHF-Net response_coefficient.mat.")))
_register(Protocol(
    "hiftool-gauss-x32", "CAVE ×32 as in HIFtool: 32×32 blocks weighted by a Gaussian σ 21 sampled at −16…15 "
    "(peak half a pixel after the block centre); MSI = HR·R (MHF-Net R); no noise",
    form="block", kernel="hiftool", scale=32, sigma_rule="", srf="mhf-R", input_scaling="uint16",
    open_options=("srf_file",), reference=_HIFTOOL_REF))
_register(Protocol(
    "wald-gauss", "Wald protocol: Gaussian PSF with FWHM = s, convolution + decimation (kernel centred on the "
    "s×s block, reflect border); SRF given with --srf; optional noise",
    form="conv", kernel="gaussian", scale=None, sigma_rule="fwhm=s", srf=None, input_scaling="none",
    border="reflect", open_options=("scale", "srf", "srf_file", "snr_hsi", "snr_msi", "seed", "border"),
    reference="L. Wald, T. Ranchin, M. Mangolini, 'Fusion of satellite images of different spatial resolutions: "
              "assessing the quality of resulting images', PE&RS 63(6), 1997 (consistency/synthesis protocol)."))
_register(Protocol(
    "dian-gauss-x8", "CAVE ×8 as in the Dian-group papers: fspecial('gaussian', 7, 3) convolved with symmetric "
    "borders, LR = blurred[0::8, 0::8] (the kernel centred on the first pixel of each block); MSI = HR·R; no noise",
    form="conv", kernel="gaussian", scale=8, sigma_rule="=3", srf="mhf-R", input_scaling="uint16",
    border="reflect", kernel_size=7, pad=3, open_options=("srf_file",),
    reference=("R. Dian, S. Li et al. (e.g. CNN-FUS, ZSL, SRLF-Net CVPR 2025 tables): "
               "scipy.signal.convolve2d(Z, fspecial('gaussian', 7, 3), boundary='symm', mode='same')[0::8, 0::8]; "
               "R: the Nikon D700 response as in MHF-Net's response_coefficient.mat (hsfuse choice where a paper "
               "does not ship its R).")))


_RESIZE_REF = ("MATLAB imresize(Z, 1/s) (antialiased; symmetric padding), PIL Image.resize, torch "
               "interpolate(scale_factor=1/s, antialias=True): the common 'downsample the HR cube' simulation")
_register(Protocol(
    "imresize-bicubic", "antialiased bicubic shrink by s (Keys a=-0.5 kernel stretched by s, 4s taps centred on the "
    "block; MATLAB imresize default); SRF given with --srf",
    form="conv", kernel="cubic", scale=None, sigma_rule="", srf=None, input_scaling="none", border="reflect",
    open_options=("scale", "srf", "srf_file", "snr_hsi", "snr_msi", "seed", "border"), reference=_RESIZE_REF))
_register(Protocol(
    "imresize-bilinear", "antialiased bilinear shrink by s (triangle kernel stretched by s, 2s taps centred on the "
    "block); SRF given with --srf",
    form="conv", kernel="triangle", scale=None, sigma_rule="", srf=None, input_scaling="none", border="reflect",
    open_options=("scale", "srf", "srf_file", "snr_hsi", "snr_msi", "seed", "border"), reference=_RESIZE_REF))
_register(Protocol(
    "block-mean", "the mean of each s×s block (average pooling, imresize 'box'); SRF given with --srf",
    form="block", kernel="box", scale=None, sigma_rule="", srf=None, input_scaling="none",
    open_options=("scale", "srf", "srf_file", "snr_hsi", "snr_msi", "seed"),
    reference="average pooling / MATLAB imresize(Z, 1/s, 'box'); also the CAVE ×s 'mean' protocols"))


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name.strip().lower()]
    except KeyError:
        raise UsageError(f"unknown protocol '{name}' (known: {', '.join(PROTOCOLS)})") from None


def read_protocol_input(src, rule: str) -> tuple[np.ndarray, str]:
    """Read a whole opened cube (``hsfuse.io`` source) under a protocol's input scaling.

    ``"uint16"``: a file stored as uint16 gives ``raw / 65535`` (float32, the
    CAVE convention; nodata -> NaN), whatever scale the file declares; any other
    stored type is read as physical values (already scaled). ``"none"``:
    physical values as read. Returns (cube (C, H, W) float32, what was done).
    """
    if rule == "uint16" and np.dtype(src.dtype) == np.uint16:
        raw = src.read(raw=True)
        z = raw.astype(np.float32) / np.float32(65535.0)
        if src.meta.nodata is not None and np.isfinite(src.meta.nodata):
            z[raw == src.meta.nodata] = np.nan
        return z, "stored uint16 / 65535"
    z = src.read()
    if rule == "uint16":
        return z, f"stored {np.dtype(src.dtype)} (not uint16): physical values as read (file scale {src.meta.scale:g})"
    return z, "physical values as read"


__all__ = ["Protocol", "PROTOCOLS", "get_protocol", "find_mhf_response", "load_mhf_response", "ENV_MHF", "read_protocol_input"]
