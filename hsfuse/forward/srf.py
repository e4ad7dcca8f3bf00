"""Spectral response functions (SRF): how an MSI band integrates the spectrum.

An SRF for a cube with C bands is an (m, C) matrix ``R``; the MSI is
``MSI[m] = Σ_c R[m, c] · Z[c]``. ``load_srf`` builds ``R`` from

* a **built-in** name (``builtin_srfs()``; list them with ``hsfuse degrade --list``):
  RGB camera curves shipped by colour-science, the CIE 1931 2° observer, and
  Gaussian approximations of satellite bands from published centre/FWHM specs;
  ``NAME:B2,B3,B4`` keeps only some bands of a built-in;
* a **curve table** file: CSV (wavelength column + one column per band, optional
  header row with band names, ``#`` comments; comma, semicolon, tab or blank
  separated), or a ``.npy`` / ``.mat[:VAR]`` 2-D array whose first column is
  strictly increasing wavelengths in nm;
* a **matrix** file: ``.npy`` or ``.mat[:VAR]`` holding (m, C) or (C, m) for the
  cube's C bands (no wavelengths needed). The MHF-Net
  ``response_coefficient.mat`` (``R``, 31×3, columns R, G, B) is this case.

Rules (docs/protocols.md):

1. Curves are resampled onto the cube wavelengths by linear interpolation,
   zero outside the curve's tabulated range (``np.interp(..., left=0, right=0)``),
   negative values (measurement noise in some tables) clipped to 0.
2. Every MSI band's weights are normalised to sum 1 over the cube bands, so a
   flat spectrum of value v gives v in every MSI band. (Matrices too.)
3. A band with no weight on the cube's wavelengths, or with less than
   ``MIN_COVERAGE`` (5 %) of its curve's area inside the cube's wavelength
   range, is an error naming the band (its support misses the cube's range);
   ``Srf.coverage`` (that fraction) lets callers warn about partial coverage.
4. A cube without wavelengths needs a matrix of matching size.

>>> srf = load_srf("nikon-5100", wavelengths=np.arange(400, 701, 10), n_bands=31)
>>> srf.matrix.shape, srf.band_names
((3, 31), ['R', 'G', 'B'])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError, UsageError

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: Gaussian bands are evaluated out to ±GAUSS_TRUNC_FWHM · FWHM of the centre (≈ ±3.4σ), zero beyond
GAUSS_TRUNC_FWHM = 1.5
#: a band with less than this fraction of its curve's area inside the cube's range is an error
#: (renormalising a far tail to sum 1 would make a meaningless band)
MIN_COVERAGE = 0.05


@dataclass
class Srf:
    """A spectral response resolved for one cube: ``matrix`` (m, C), rows summing to 1."""

    matrix: np.ndarray
    band_names: list[str]
    centres: np.ndarray | None  # nm, (m,); nominal centres, or weight centroids; None without wavelengths
    source: str  # where the numbers come from (citation, file path)
    description: str = ""
    coverage: np.ndarray | None = None  # (m,) fraction of each curve's area inside the cube's range
    fwhm: np.ndarray | None = None  # nm, nominal (Gaussian bands) when known

    @property
    def n_bands(self) -> int:
        return int(self.matrix.shape[0])

    def describe(self) -> dict:
        return {
            "bands": self.band_names,
            "centres_nm": None if self.centres is None else [round(float(c), 3) for c in self.centres],
            "source": self.source,
            "description": self.description,
            "coverage": None if self.coverage is None else [round(float(c), 4) for c in self.coverage],
        }


@dataclass(frozen=True)
class BuiltinSrf:
    """A registered SRF: ``curves()`` -> (wavelengths nm (L,), curves (m, L), band names, nominal centres|None, fwhm|None)."""

    name: str
    description: str
    source: str
    curves: Callable[[], tuple]
    aliases: tuple[str, ...] = field(default=())


# -- Gaussian band specs -------------------------------------------------------
# (band name, centre nm, FWHM nm)

#: Sentinel-2A MSI, central wavelength and bandwidth of the 10 m and 20 m bands.
#: Source: ESA Sentinel-2 User Handbook (ESA, 2015), Table "Sentinel-2 bands", and
#: the S2 SRF document COPE-GSEG-EOPG-TN-15-0007 (S2A column).
SENTINEL2_10M = (("B2", 492.4, 66.0), ("B3", 559.8, 36.0), ("B4", 664.6, 31.0), ("B8", 832.8, 106.0))
SENTINEL2_20M = (("B5", 704.1, 15.0), ("B6", 740.5, 15.0), ("B7", 782.8, 20.0), ("B8A", 864.7, 21.0),
                 ("B11", 1613.7, 91.0), ("B12", 2202.4, 175.0))

#: Landsat-8 OLI centre wavelength and FWHM from the measured RSRs: J. A. Barsi et al., "The Spectral
#: Response of the Landsat-8 Operational Land Imager", Remote Sensing 6(10):10232-10251, 2014, Table 3.
#: Landsat-9 OLI-2 was built to the same specification (its measured centres differ by < 2 nm).
LANDSAT_OLI = (("B1", 442.96, 15.98), ("B2", 482.04, 60.04), ("B3", 561.41, 57.33), ("B4", 654.59, 37.47),
               ("B5", 864.67, 28.25), ("B6", 1608.86, 84.72), ("B7", 2200.73, 186.66))

#: WorldView-3 8 VNIR multispectral bands; band edges from the DigitalGlobe WorldView-3 data sheet
#: (2014): Coastal 400-450, Blue 450-510, Green 510-580, Yellow 585-625, Red 630-690, Red Edge
#: 705-745, NIR1 770-895, NIR2 860-1040 nm. Approximated as Gaussians with centre = mid-point and
#: FWHM = edge-to-edge width ("WorldView-3 style", not the measured curves).
WORLDVIEW3_VNIR = tuple((n, (a + b) / 2.0, float(b - a)) for n, a, b in (
    ("Coastal", 400, 450), ("Blue", 450, 510), ("Green", 510, 580), ("Yellow", 585, 625),
    ("Red", 630, 690), ("RedEdge", 705, 745), ("NIR1", 770, 895), ("NIR2", 860, 1040)))


def _gaussian_curves(spec) -> Callable[[], tuple]:
    def build():
        lo = min(c - GAUSS_TRUNC_FWHM * f for _, c, f in spec)
        hi = max(c + GAUSS_TRUNC_FWHM * f for _, c, f in spec)
        wl = np.arange(math.floor(lo), math.ceil(hi) + 0.5, 0.5)
        curves = []
        for _, c, f in spec:
            sig = f / FWHM_PER_SIGMA
            g = np.exp(-0.5 * ((wl - c) / sig) ** 2)
            g[np.abs(wl - c) > GAUSS_TRUNC_FWHM * f] = 0.0
            curves.append(g)
        return (wl, np.array(curves), [n for n, _, _ in spec], np.array([c for _, c, _ in spec]),
                np.array([f for _, _, f in spec]))

    return build


DATA = Path(__file__).resolve().parents[1] / "data"  # hsfuse/data/: small published tables shipped as package data


def _table(file: str, names: dict[str, str]) -> Callable[[], tuple]:
    """A shipped CSV table (wavelength_nm, then one column per band; hsfuse/data/README.md gives sources)."""
    def build():
        path = DATA / file
        if not path.is_file():
            raise InputError("built-in SRF table missing from this installation (reinstall hsfuse)", path)
        head = path.read_text().splitlines()[0].split(",")
        arr = np.loadtxt(path, delimiter=",", skiprows=1)
        return arr[:, 0], arr[:, 1:].T, [names.get(lbl, lbl) for lbl in head[1:]], None, None

    return build


_RGB = {"red": "R", "green": "G", "blue": "B"}
_XYZ = {"x_bar": "X", "y_bar": "Y", "z_bar": "Z"}


_REGISTRY: dict[str, BuiltinSrf] = {}


def _register(b: BuiltinSrf) -> None:
    _REGISTRY[b.name] = b


_register(BuiltinSrf(
    "nikon-5100", "Nikon D5100 RGB camera sensitivities (R, G, B), 380-780 nm at 5 nm",
    "hsfuse/data/nikon-5100.csv, from colour-science MSDS_CAMERA_SENSITIVITIES['Nikon 5100 (NPL)'] (measured at NPL; Darrodi et al., "
    "'Reference data set for camera spectral sensitivity estimation', JOSA A 32(3), 2015)",
    _table("nikon-5100.csv", _RGB), aliases=("nikon 5100 (npl)",)))
_register(BuiltinSrf(
    "sigma-sdmerrill", "Sigma SD Merrill (Foveon) RGB sensitivities (R, G, B), 400-680 nm at 10 nm",
    "colour-science colour.MSDS_CAMERA_SENSITIVITIES['Sigma SDMerill (NPL)'] (NPL; Darrodi et al., JOSA A 2015)",
    _table("sigma-sdmerrill.csv", _RGB), aliases=("sigma sdmerill (npl)", "sigma-sdmerill")))
_register(BuiltinSrf(
    "cie1931", "CIE 1931 2° standard observer colour matching functions x̄, ȳ, z̄ as X, Y, Z bands, 360-830 nm",
    "colour-science colour.MSDS_CMFS['CIE 1931 2 Degree Standard Observer'] (CIE 015:2004 tables)",
    _table("cie1931.csv", _XYZ), aliases=("cie1931-xyz", "xyz")))
_register(BuiltinSrf(
    "sentinel2-10m", "Sentinel-2 MSI 10 m bands B2, B3, B4, B8 as Gaussians (centre/FWHM spec)",
    "ESA Sentinel-2 User Handbook (2015) / S2 SRF doc COPE-GSEG-EOPG-TN-15-0007, S2A centres and bandwidths",
    _gaussian_curves(SENTINEL2_10M)))
_register(BuiltinSrf(
    "sentinel2-20m", "Sentinel-2 MSI 20 m bands B5, B6, B7, B8A, B11, B12 as Gaussians (centre/FWHM spec)",
    "ESA Sentinel-2 User Handbook (2015) / S2 SRF doc COPE-GSEG-EOPG-TN-15-0007, S2A centres and bandwidths",
    _gaussian_curves(SENTINEL2_20M)))
_register(BuiltinSrf(
    "sentinel2", "Sentinel-2 MSI 10 m + 20 m bands (B2-B8A, B11, B12) as Gaussians",
    "ESA Sentinel-2 User Handbook (2015) / S2 SRF doc COPE-GSEG-EOPG-TN-15-0007, S2A centres and bandwidths",
    _gaussian_curves(tuple(sorted(SENTINEL2_10M + SENTINEL2_20M, key=lambda b: b[1])))))
_register(BuiltinSrf(
    "landsat-oli", "Landsat-8/9 OLI multispectral bands B1-B7 as Gaussians (centre/FWHM of measured RSRs)",
    "Barsi et al., 'The Spectral Response of the Landsat-8 Operational Land Imager', Remote Sens. 6, 2014",
    _gaussian_curves(LANDSAT_OLI), aliases=("landsat8-oli", "landsat9-oli2", "landsat8", "landsat9")))
_register(BuiltinSrf(
    "worldview3-vnir", "WorldView-3 style 8 VNIR bands (Coastal..NIR2) as Gaussians over the data-sheet band edges",
    "DigitalGlobe WorldView-3 data sheet (2014) band edges; Gaussian approximation (not measured curves)",
    _gaussian_curves(WORLDVIEW3_VNIR), aliases=("wv3", "worldview3")))


def builtin_srfs() -> dict[str, BuiltinSrf]:
    """Registered built-in SRFs by canonical name (aliases resolve in ``load_srf``)."""
    return dict(_REGISTRY)


def _lookup_builtin(name: str) -> BuiltinSrf | None:
    key = name.strip().lower()
    for b in _REGISTRY.values():
        if key == b.name or key in b.aliases:
            return b
    return None


# -- files ---------------------------------------------------------------------

def load_mat_vars(path: Path) -> dict[str, np.ndarray]:
    """Non-private variables of a MAT file (v5 via scipy, v7.3 via h5py with axes back in MATLAB order)."""
    import scipy.io

    with open(path, "rb") as f:
        head = f.read(128)
    if b"MATLAB 7.3" in head:
        import h5py

        out = {}
        with h5py.File(path, "r") as h:
            for k, v in h.items():
                if isinstance(v, h5py.Dataset) and not k.startswith("#"):
                    out[k] = np.asarray(v[()]).T  # h5py gives reversed axes
        return out
    return {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}


def _split_mat_spec(spec: str) -> tuple[str, str | None]:
    low = spec.lower()
    if ".mat:" in low:
        i = low.rindex(".mat:") + 4
        return spec[:i], spec[i + 1:]
    return spec, None


def _read_csv_table(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """CSV curve table -> (wavelengths (L,), curves (m, L), names)."""
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise InputError("empty SRF table", path)
    sample = lines[-1]
    delim = next((d for d in (",", ";", "\t") if d in sample), None)

    def split(ln: str) -> list[str]:
        return [t.strip().strip('"') for t in (ln.split(delim) if delim else ln.split())]

    header = None
    try:
        [float(t) for t in split(lines[0])]
    except ValueError:
        header, lines = split(lines[0]), lines[1:]
    try:
        rows = [[float(t) if t not in ("", "nan", "NaN") else np.nan for t in split(ln)] for ln in lines]
        table = np.array(rows, dtype=np.float64)
    except ValueError as e:
        raise InputError(f"SRF table is not numeric: {e}", path) from None
    if table.ndim != 2 or table.shape[1] < 2:
        raise InputError("SRF table needs a wavelength column and at least one band column", path)
    m = table.shape[1] - 1
    names = header[1:] if header is not None and len(header) == table.shape[1] else [f"band{i + 1}" for i in range(m)]
    return table[:, 0], np.nan_to_num(table[:, 1:].T), names


def _looks_like_table(arr: np.ndarray) -> bool:
    if arr.ndim != 2 or arr.shape[1] < 2 or arr.shape[0] < 2:
        return False
    wl = arr[:, 0]
    return bool(np.all(np.diff(wl) > 0) and wl[0] >= 100 and wl[-1] <= 30000)


def _resample(wl_src: np.ndarray, curves: np.ndarray, wl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation onto ``wl``, zero outside; returns (matrix (m, C), coverage (m,))."""
    order = np.argsort(wl_src)
    wl_src, curves = wl_src[order], np.clip(curves[:, order], 0.0, None)
    mat = np.stack([np.interp(wl, wl_src, c, left=0.0, right=0.0) for c in curves])
    lo, hi = float(np.min(wl)), float(np.max(wl))
    total = np.trapezoid(curves, wl_src, axis=1) if hasattr(np, "trapezoid") else np.trapz(curves, wl_src, axis=1)
    inside = (wl_src >= lo) & (wl_src <= hi)
    part = np.array([(np.trapezoid if hasattr(np, "trapezoid") else np.trapz)(c[inside], wl_src[inside])
                     if inside.sum() > 1 else 0.0 for c in curves])
    coverage = np.where(total > 0, part / np.where(total > 0, total, 1), 0.0)
    return mat, coverage


def _normalise(mat: np.ndarray, names: list[str], what: str, path=None) -> np.ndarray:
    sums = mat.sum(axis=1)
    bad = [names[i] for i in np.flatnonzero(~(sums > 0))]
    if bad:
        raise InputError(f"{what}: band(s) {', '.join(bad)} have no positive weight on the cube's wavelengths "
                         f"(the SRF's support misses the cube's spectral range)", path)
    return mat / sums[:, None]


def _centroids(mat: np.ndarray, wl: np.ndarray | None) -> np.ndarray | None:
    if wl is None:
        return None
    return (mat * wl[None, :]).sum(1) / mat.sum(1)


def _from_curves(wl_src, curves, names, wl, n_bands, what, source, description, path=None,
                 nominal=None, fwhm=None) -> Srf:
    if wl is None:
        raise InputError(f"{what} is a wavelength table but the cube has no wavelengths; "
                         f"give an SRF matrix of size m×{n_bands} (.npy or .mat) instead", path)
    wl = np.asarray(wl, dtype=np.float64)
    if len(wl) != n_bands:
        raise InputError(f"cube has {n_bands} bands but {len(wl)} wavelengths", path)
    mat, coverage = _resample(np.asarray(wl_src, float), np.asarray(curves, float), wl)
    outside = [f"{names[i]} ({coverage[i]:.1%} inside)" for i in np.flatnonzero(coverage < MIN_COVERAGE)
               if mat[i].sum() > 0]
    if outside:
        raise InputError(f"{what}: band(s) {', '.join(outside)} lie essentially outside the cube's range "
                         f"{wl.min():g}-{wl.max():g} nm (drop those bands; for a built-in: NAME:B1,B2,...)", path)
    mat = _normalise(mat, names, what, path)
    centres = nominal if nominal is not None else _centroids(mat, wl)
    return Srf(mat, list(names), None if centres is None else np.asarray(centres, float), source, description,
               coverage, fwhm)


def _from_array(arr: np.ndarray, wl, n_bands: int, path: Path, what: str, names: list[str] | None = None) -> Srf:
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InputError(f"SRF must be a 2-D array, got shape {arr.shape}", path)
    if arr.shape[1] == n_bands and not _looks_like_table(arr):
        mat = arr
    elif arr.shape[0] == n_bands and not _looks_like_table(arr):
        mat = arr.T
    elif _looks_like_table(arr):
        return _from_curves(arr[:, 0], arr[:, 1:].T, names or [f"band{i + 1}" for i in range(arr.shape[1] - 1)],
                            wl, n_bands, what, f"file {path}", "wavelength table", path)
    else:
        raise InputError(f"SRF matrix has shape {arr.shape[0]}×{arr.shape[1]}, which matches neither m×{n_bands} "
                         f"nor {n_bands}×m for this {n_bands}-band cube (nor is it a wavelength table)", path)
    if not np.isfinite(mat).all():
        raise InputError("SRF matrix has non-finite values", path)
    names = names if names is not None and len(names) == mat.shape[0] else [f"band{i + 1}" for i in range(mat.shape[0])]
    mat = _normalise(mat, names, what, path)
    wlf = None if wl is None else np.asarray(wl, float)
    if wlf is not None and len(wlf) != n_bands:
        wlf = None
    return Srf(mat, names, _centroids(mat, wlf), f"file {path}", "matrix over the cube bands",
               np.ones(mat.shape[0]), None)


def _load_file(spec: str, wl, n_bands: int) -> Srf:
    path_s, var = _split_mat_spec(spec)
    path = Path(path_s)
    if not path.is_file():
        raise InputError("SRF file not found", path)
    suffix = path.suffix.lower()
    what = f"SRF {path.name}"
    try:
        if suffix in (".csv", ".txt", ".tsv"):
            wl_src, curves, names = _read_csv_table(path)
            return _from_curves(wl_src, curves, names, wl, n_bands, what, f"file {path}", "wavelength table", path)
        if suffix == ".npy":
            return _from_array(np.load(path, allow_pickle=False), wl, n_bands, path, what)
        if suffix == ".mat":
            mats = load_mat_vars(path)
            two_d = {k: v for k, v in mats.items() if np.ndim(v) == 2 and np.size(v) > 1}
            if var is None:
                if "R" in two_d:
                    var = "R"
                elif len(two_d) == 1:
                    var = next(iter(two_d))
                else:
                    raise UsageError(f"{path}: several variables ({', '.join(sorted(two_d))}); name one as FILE.mat:VAR")
            if var not in mats:
                raise InputError(f"no variable '{var}' (has: {', '.join(sorted(mats)) or 'none'})", path)
            arr = np.asarray(mats[var], dtype=np.float64)
            names = None
            if path.stem.replace(" ", "_") == "response_coefficient" and var == "R" and arr.shape == (31, 3):
                names = ["R", "G", "B"]  # MHF-Net convention: columns R, G, B
            srf = _from_array(arr, wl, n_bands, path, what, names)
            srf.source = f"file {path}:{var}"
            if names:
                srf.description = "MHF-Net response_coefficient.mat R (31×3, columns R, G, B), used as R^T"
            return srf
    except (InputError, UsageError):
        raise
    except Exception as e:  # noqa: BLE001
        raise InputError(f"cannot read SRF: {type(e).__name__}: {e}", path) from e
    raise InputError(f"unknown SRF file type '{path.suffix}' (known: .csv, .npy, .mat[:VAR], or a built-in name: "
                     f"{', '.join(_REGISTRY)})", path)


def load_srf(spec: str, wavelengths: np.ndarray | None, n_bands: int) -> Srf:
    """Resolve an SRF spec (built-in name, ``NAME:B1,B2``, or file) for a cube; see the module docstring."""
    spec = str(spec).strip()
    if wavelengths is not None:
        wavelengths = np.asarray(wavelengths, dtype=np.float64)
        if len(wavelengths) != n_bands:
            raise InputError(f"the cube has {n_bands} bands but {len(wavelengths)} wavelengths")
        if not np.isfinite(wavelengths).all():
            wavelengths = None
    name, _, sel = spec.partition(":")
    b = _lookup_builtin(name) if not Path(spec).exists() else None
    if b is not None:
        wl_src, curves, names, nominal, fwhm = b.curves()
        if sel:
            want = [s.strip() for s in sel.split(",") if s.strip()]
            lower = [n.lower() for n in names]
            missing = [w for w in want if w.lower() not in lower]
            if missing:
                raise UsageError(f"SRF '{b.name}' has no band(s) {', '.join(missing)} (has: {', '.join(names)})")
            idx = [lower.index(w.lower()) for w in want]
            curves, names = curves[idx], [names[i] for i in idx]
            nominal = None if nominal is None else nominal[idx]
            fwhm = None if fwhm is None else fwhm[idx]
        return _from_curves(wl_src, curves, names, wavelengths, n_bands, f"SRF '{b.name}'", b.source,
                            b.description, None, nominal, fwhm)
    looks_like_file = any(spec.lower().endswith(e) or f"{e}:" in spec.lower() for e in (".csv", ".txt", ".tsv", ".npy", ".mat"))
    if looks_like_file or Path(spec).exists():
        return _load_file(spec, wavelengths, n_bands)
    raise UsageError(f"unknown SRF '{spec}' (built-in: {', '.join(_REGISTRY)}; or a .csv/.npy/.mat[:VAR] file)")


def srf_from_matrix(matrix: np.ndarray, wavelengths: np.ndarray | None = None, band_names: list[str] | None = None,
                    source: str = "matrix", normalise: bool = True) -> Srf:
    """Wrap an (m, C) matrix (e.g. from a protocol or ``estimate_srf``) as an ``Srf``."""
    mat = np.asarray(matrix, dtype=np.float64)
    names = band_names or [f"band{i + 1}" for i in range(mat.shape[0])]
    if normalise:
        mat = _normalise(mat, names, source)
    wl = None if wavelengths is None else np.asarray(wavelengths, float)
    if wl is not None and len(wl) != mat.shape[1]:
        wl = None
    return Srf(mat, list(names), _centroids(mat, wl), source, "", np.ones(mat.shape[0]), None)


__all__ = ["Srf", "BuiltinSrf", "builtin_srfs", "load_srf", "srf_from_matrix", "load_mat_vars", "srf_summary"]


def srf_summary(srf, wavelengths) -> dict:
    """Per-MSI-band centroid and RMS width (nm) of an SRF matrix, plus a digest to recognise it.

    Weights records keep this instead of the matrix (which may be third-party data); `fuse`
    compares it with the SRF of the inputs before choosing a pretrained model.
    """
    import hashlib

    m = np.asarray(srf, dtype=np.float64)
    out = {"shape": list(m.shape), "sha256": hashlib.sha256(np.ascontiguousarray(m).tobytes()).hexdigest()}
    if wavelengths is not None:
        wl = np.asarray(wavelengths, dtype=np.float64)
        w = m / m.sum(1, keepdims=True)
        c = w @ wl
        out["centroid_nm"] = [round(float(v), 2) for v in c]
        out["rms_width_nm"] = [round(float(v), 2) for v in np.sqrt(np.maximum(w @ wl**2 - c**2, 0))]
    return out
