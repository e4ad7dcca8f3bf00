"""What a PSF is: a kernel, an integer scale, a padding and a border rule (``Psf``), the named kernels and
the phase of the LR grid it implies. ``degrade.py`` applies it; ``estimate.py`` finds it from a pair.

    LR[c, i, j] = Σ_{a,b} K[a, b] · Z[c, s·i + a − p, s·j + b − p]

With k = s and p = 0 this is the *block* form of the MHF-Net / HSR-Diff CAVE protocol; with a larger
kernel it is convolution + decimation (docs/protocols.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BORDERS = ("reflect", "edge", "wrap", "zero")


def gaussian_kernel(size: int, sigma: float, center: float | None = None) -> np.ndarray:
    """Normalised 2-D Gaussian on a size×size grid centred at ``center`` (default (size−1)/2)."""
    c = (size - 1) / 2.0 if center is None else float(center)
    ax = np.arange(size, dtype=np.float64) - c
    g = np.exp(-0.5 * (ax / sigma) ** 2)
    k = np.outer(g, g)
    return k / k.sum()


def box_kernel(size: int) -> np.ndarray:
    return np.full((size, size), 1.0 / (size * size))


def resize_kernel(kind: str, scale: int) -> np.ndarray:
    """The 2-D kernel of an antialiased shrink by an integer ``scale`` (MATLAB ``imresize``, PIL, torch
    ``interpolate(antialias=True)``): the 1-D interpolation kernel stretched by s, sampled at the HR pixel
    centres around the block centre, normalised, outer product.

    ``triangle`` (bilinear): 1 − |x|; ``cubic`` (bicubic, Keys a = −0.5): the kernel MATLAB and PIL use,
    negative lobes included. Size 2s / 4s, one more for odd s (zero-weight end taps) so that it centres on
    the s×s block with an integer pad. Equal to torch's antialiased interpolate away from the border
    (tests/forward/test_degrade.py).
    """
    s = int(scale)
    k = {"triangle": 2 * s, "cubic": 4 * s}[kind]
    if (k - s) % 2:
        k += 1
    x = np.abs((np.arange(k) - (k - 1) / 2.0) / s)
    if kind == "triangle":
        w = np.maximum(0.0, 1.0 - x)
    else:
        a = -0.5
        w = np.where(x <= 1, (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1,
                     np.where(x < 2, a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a, 0.0))
    w = w / w.sum()
    return np.outer(w, w)


def default_gaussian_size(scale: int, sigma: float) -> int:
    """Smallest size with the same parity as ``scale`` covering ±3σ (so the kernel centres on the block)."""
    k = max(scale, 2 * math.ceil(3 * sigma) + 1)
    if (k - scale) % 2:
        k += 1
    return k


@dataclass
class Psf:
    """A spatial degradation: kernel, integer scale, padding and border rule."""

    kernel: np.ndarray
    scale: int
    pad: int | None = None
    border: str = "reflect"
    name: str = "custom"

    def __post_init__(self) -> None:
        self.kernel = np.asarray(self.kernel, dtype=np.float64)
        if self.kernel.ndim != 2 or self.kernel.shape[0] != self.kernel.shape[1]:
            raise ValueError(f"PSF kernel must be square 2-D, got shape {self.kernel.shape}")
        if int(self.scale) != self.scale or self.scale < 1:
            raise ValueError(f"scale must be a positive integer, got {self.scale}")
        self.scale = int(self.scale)
        if self.pad is None:
            self.pad = (self.kernel.shape[0] - self.scale) // 2
        if self.border not in BORDERS:
            raise ValueError(f"border must be one of {BORDERS}, got {self.border!r}")

    @property
    def size(self) -> int:
        return self.kernel.shape[0]

    @property
    def halo_lr(self) -> int:
        """LR pixels of context a tile needs so its degraded values equal the whole-image ones."""
        reach = max(self.pad, self.size - self.scale - self.pad, 0)
        return math.ceil(reach / self.scale)

    @classmethod
    def gaussian(cls, scale: int, sigma: float | None = None, size: int | None = None, border: str = "reflect") -> "Psf":
        """Gaussian PSF; default σ gives FWHM = scale (σ = s / 2.3548)."""
        sigma = scale / (2 * math.sqrt(2 * math.log(2))) if sigma is None else float(sigma)
        size = default_gaussian_size(scale, sigma) if size is None else int(size)
        return cls(gaussian_kernel(size, sigma), scale, border=border, name=f"gaussian(sigma={sigma:g},size={size})")

    @classmethod
    def box(cls, scale: int) -> "Psf":
        return cls(box_kernel(scale), scale, pad=0, name="box")

    @classmethod
    def block(cls, kernel: np.ndarray) -> "Psf":
        """Non-overlapping blocks weighted by ``kernel`` (its size is the scale)."""
        kernel = np.asarray(kernel, dtype=np.float64)
        return cls(kernel, kernel.shape[0], pad=0, name="block")

    def rescaled(self, scale: int) -> "Psf":
        """The same PSF shape for a smaller integer scale that divides this one (kernel binned by scale ratio).

        Why: a network serving two scale factors (MulSR) is trained on pairs degraded at both; the
        second PSF must be the first one's footprint shrunk by the ratio, e.g. the 8x8 Gaussian block
        of σ = 2 becomes a 4x4 block of σ ≈ 1.
        """
        scale = int(scale)
        if scale == self.scale:
            return self
        if scale < 1 or self.scale % scale:
            raise ValueError(f"scale x{scale} does not divide this PSF's scale x{self.scale}")
        r = self.scale // scale
        q = (-self.pad) % r  # zeros around the kernel so its offset is a whole number of new pixels
        kern, pad = np.pad(self.kernel, q), self.pad + q
        k = kern.shape[0]
        if k % r:
            raise ValueError(f"a {self.size}x{self.size} kernel with pad {self.pad} cannot be binned by {r}")
        kern = kern.reshape(k // r, r, k // r, r).sum(axis=(1, 3))
        return Psf(kern / kern.sum(), scale, pad=pad // r, border=self.border, name=f"{self.name} binned x{r}")


#: FWHM = FWHM_PER_SIGMA · σ for a Gaussian
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
FORMS = ("block", "conv")


def load_kernel(spec: str) -> np.ndarray:
    """A PSF kernel from a file: ``.npy``, ``.csv`` (comma/whitespace separated) or ``.mat[:VAR]``.

    ``.mat`` without ``:VAR`` takes the file's only 2-D variable (or ``C``, the
    MHF-Net kernel name). The kernel is used as stored (not renormalised).
    """
    from pathlib import Path

    from ..errors import InputError

    path_s, var = spec, None
    low = spec.lower()
    if ".mat:" in low:
        i = low.rindex(".mat:") + 4
        path_s, var = spec[:i], spec[i + 1:]
    path = Path(path_s)
    if not path.is_file():
        raise InputError("PSF file not found", path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            k = np.load(path, allow_pickle=False)
        elif suffix in (".csv", ".txt"):
            text = path.read_text()
            delim = "," if "," in text else None
            k = np.loadtxt(path, delimiter=delim, comments="#", ndmin=2)
        elif suffix == ".mat":
            from .srf import load_mat_vars

            mats = load_mat_vars(path)
            two_d = {n: v for n, v in mats.items() if np.ndim(v) == 2}
            if var is None:
                if "C" in two_d:
                    var = "C"
                elif len(two_d) == 1:
                    var = next(iter(two_d))
                else:
                    raise InputError(f"several variables ({', '.join(sorted(mats))}); name one as FILE.mat:VAR", path)
            if var not in mats:
                raise InputError(f"no variable '{var}' (has: {', '.join(sorted(mats)) or 'none'})", path)
            k = mats[var]
        else:
            raise InputError(f"unknown PSF file type '{path.suffix}' (known: .npy, .csv, .mat[:VAR])", path)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - a library choked on the file
        raise InputError(f"cannot read PSF kernel: {type(e).__name__}: {e}", path) from e
    k = np.asarray(k, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise InputError(f"PSF kernel must be a square 2-D array, got shape {k.shape}", path)
    if not np.isfinite(k).all() or k.sum() <= 0:
        raise InputError("PSF kernel must be finite with a positive sum", path)
    return k


def make_psf(kind: str, scale: int, *, sigma: float | None = None, form: str = "conv", pad: int | None = None,
             border: str = "reflect", size: int | None = None) -> Psf:
    """The PSF that the CLI options ``--psf/--sigma/--form/--pad/--border`` describe.

    * ``gaussian``: σ default gives FWHM = scale. ``form='block'``: the kernel is
      s×s (pad 0, the MHF-Net form); ``form='conv'``: the kernel is
      ``default_gaussian_size`` (±3σ, same parity as s) and ``pad`` defaults to
      ``(k − s) // 2`` (kernel centred on the s×s block).
    * ``box``: the s×s mean (identical in both forms).
    * anything else is a kernel file (see ``load_kernel``); the block form
      requires a kernel of size s.
    """
    from ..errors import UsageError

    if int(scale) != scale or scale < 1:
        raise UsageError(f"{{scale}} must be a positive integer, got {scale}", options=("scale",))
    scale = int(scale)
    if form not in FORMS:
        raise UsageError(f"{{form}} must be one of {', '.join(FORMS)}, got '{form}'", options=("form",))
    if border not in BORDERS:
        raise UsageError(f"{{border}} must be one of {', '.join(BORDERS)}, got '{border}'", options=("border",))
    if sigma is not None and not sigma > 0:
        raise UsageError(f"{{sigma}} must be > 0, got {sigma}", options=("sigma",))
    kind_l = kind.lower()
    if kind_l == "gaussian":
        sig = scale / FWHM_PER_SIGMA if sigma is None else float(sigma)
        if form == "block":
            if pad not in (None, 0):
                raise UsageError("{pad} does not apply to {form} block (blocks start at pixel 0)", options=("pad", "form"))
            psf = Psf(gaussian_kernel(scale, sig), scale, pad=0, border=border,
                      name=f"gaussian-block(sigma={sig:g},size={scale})")
        else:
            k = default_gaussian_size(scale, sig) if size is None else int(size)
            psf = Psf(gaussian_kernel(k, sig), scale, pad=pad, border=border,
                      name=f"gaussian(sigma={sig:g},size={k})")
        psf.sigma = sig  # type: ignore[attr-defined]
        return psf
    if sigma is not None:
        raise UsageError("{sigma} only applies to {psf} gaussian", options=("sigma", "psf"))
    if kind_l == "box":
        if pad not in (None, 0):
            raise UsageError("{pad} does not apply to {psf} box (non-overlapping s×s blocks)", options=("pad", "psf"))
        return Psf(box_kernel(scale), scale, pad=0, border=border, name="box")
    kernel = load_kernel(kind)
    if form == "block":
        if kernel.shape[0] != scale:
            raise UsageError(f"{{form}} block needs a kernel of size scale={scale}, the file has {kernel.shape[0]}",
                             options=("form",))
        if pad not in (None, 0):
            raise UsageError("{pad} does not apply to {form} block", options=("pad", "form"))
        return Psf(kernel, scale, pad=0, border=border, name=f"file-block({kind})")
    return Psf(kernel, scale, pad=pad, border=border, name=f"file({kind})")


def describe_psf(psf: Psf) -> dict:
    """A JSON-able description of a PSF (recorded in outputs and ``--json``)."""
    k = psf.kernel
    return {
        "name": psf.name,
        "scale": psf.scale,
        "kernel_size": psf.size,
        "pad": psf.pad,
        "border": psf.border,
        "form": "block" if (psf.size == psf.scale and psf.pad == 0) else "conv",
        "sigma": getattr(psf, "sigma", None),
        "kernel_sum": float(k.sum()),
        "phase_offset_hr": lr_phase_offset(psf),
    }


def lr_phase_offset(psf: Psf) -> float:
    """Offset δ (HR pixels) of LR pixel centres from the s×s block centres.

    The kernel centre of LR pixel i sits at HR pixel-centre coordinate
    ``s·i − p + (k − 1)/2``; the block centre is ``s·i + (s − 1)/2``, so
    δ = (k − s)/2 − p. δ = 0 for the default pad with k − s even; the LR
    georeferencing is shifted by δ HR pixels otherwise.
    """
    return (psf.size - psf.scale) / 2.0 - float(psf.pad)


def sampling_phase(psf: Psf) -> tuple[float, float]:
    """(rows, cols) offset in HR pixels of where each LR pixel's kernel weight is centred, from the block centre.

    Like ``lr_phase_offset`` but from the kernel's centre of mass, per axis, so that an estimated kernel
    whose Gaussian sits off its grid's centre counts too. LR → HR interpolation (``models.common.upsample``)
    uses it to put LR samples where they were taken. Offsets below 1e-6 px are 0 (a symmetric kernel).
    """
    k = psf.kernel
    tot = k.sum()
    if not np.isfinite(tot) or abs(tot) < 1e-12:
        return 0.0, 0.0
    idx = np.arange(psf.size, dtype=np.float64)
    out = []
    for marg in (k.sum(1), k.sum(0)):
        d = float((marg * idx).sum() / tot) - psf.pad - (psf.scale - 1) / 2.0
        out.append(0.0 if abs(d) < 1e-6 else d)
    return out[0], out[1]


def psf_distance(a: Psf, b: Psf) -> float:
    """Relative L2 distance of two PSFs' kernels placed on the HR grid by their pads (0: the same model)."""
    if a.scale != b.scale:
        return float("inf")
    lo = min(-int(a.pad), -int(b.pad))
    hi = max(a.size - int(a.pad), b.size - int(b.pad))
    grid = []
    for p in (a, b):
        g = np.zeros((hi - lo, hi - lo))
        o = -int(p.pad) - lo
        g[o:o + p.size, o:o + p.size] = p.kernel
        grid.append(g)
    return float(np.linalg.norm(grid[0] - grid[1]) / max(np.linalg.norm(grid[1]), 1e-300))
