"""Training data: HR cubes -> (LR, MSI, GSA prior, HR) by the same forward model as ``hsfuse degrade``.

Each scene is read once (``hsfuse.io.read_cube``; CAVE band folders included),
degraded once on the whole scene with the protocol's PSF and SRF, and, for
``prior=True`` models, fused once with the detail-injection (GSA) method whose
global regression is fitted on the whole scene exactly as at inference. The
batches are then random crops of these arrays aligned to the scale (HR offset
a multiple of s, so the crop of the LR is the LR of the crop), with flips,
90-degree rotations and optional noise applied identically to all four.

>>> scenes = load_scenes(find_scenes(["../shared/data/cave"]), forward_model("cave-gauss-x8"), prior=True)
>>> sampler = PatchSampler([s for s in scenes if s.name not in VALIDATION_SCENES], patch=64, batch=8, seed=0)
>>> lr, msi, prior, hr = sampler.next()     # numpy (B, C, 8, 8), (B, 3, 64, 64), (B, C, 64, 64) x2
"""

from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..forward.psf import Psf
from ..errors import InputError, UsageError
from ..forward.model import ForwardModel

CUBE_SUFFIXES = (".hdr", ".tif", ".tiff", ".mat", ".npy")


def preset_forward_model(name: str) -> ForwardModel:
    """A named preset of ``hsfuse.forward.protocols`` as the (exact) forward model training simulates."""
    from ..forward.protocols import get_protocol

    proto = get_protocol(name)
    psf, srf = proto.build()
    if srf is None:
        raise UsageError(f"protocol {name} leaves the SRF to the caller: train with protocol 'custom' and an SRF file")
    wl = np.arange(400, 701, 10, dtype=np.float64) if srf.shape[1] == 31 else None  # the CAVE presets' bands
    return ForwardModel(psf=psf, psf_source=psf.name, srf=np.asarray(srf, np.float64),
                        srf_source="nikon_d700_mhfnet" if proto.srf == "mhf-R" else str(proto.srf),
                        exact=True, protocol=name, wavelengths=wl)


def _load_srf_file(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise InputError("SRF file not found", path)
    if path.suffix == ".npy":
        srf = np.load(path)
    elif path.suffix == ".csv":
        srf = np.loadtxt(path, delimiter=",")
    elif path.suffix == ".mat":
        from scipy.io import loadmat

        m = loadmat(str(path))
        if "R" not in m:
            raise InputError("MAT file has no 'R' variable", path)
        srf = np.asarray(m["R"])
        srf = srf.T if srf.shape[0] > srf.shape[1] else srf
    else:
        raise InputError("SRF file must be .npy, .csv or .mat", path)
    srf = np.asarray(srf, dtype=np.float64)
    if srf.ndim != 2:
        raise InputError(f"SRF must be a 2-D (m x C) matrix, got shape {srf.shape}", path)
    return srf


def forward_model(protocol: str, scale: int = 0, psf_sigma: float = 0.0, srf_file: str = "") -> ForwardModel:
    """The protocol preset, or ``custom``: Gaussian PSF (``psf_sigma``, default FWHM = scale) and an SRF file."""
    if protocol != "custom":
        return preset_forward_model(protocol)
    if scale < 1 or not srf_file:
        raise UsageError("protocol 'custom' needs {scale} and {srf_file}", options=("scale", "srf_file"))
    psf = Psf.gaussian(scale, psf_sigma or None)
    return ForwardModel(psf=psf, psf_source="custom", srf=_load_srf_file(srf_file), srf_source=Path(srf_file).name,
                        exact=True)


# ----------------------------------------------------------------------------- reading scenes

def read_hr(path: str | Path) -> np.ndarray:
    """A float32 (C, H, W) cube in [0, 1] as ``hsfuse.io.read_cube`` reads it (band folders included)."""
    from ..io import read_cube

    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path).astype(np.float32)
    return np.asarray(read_cube(path).data, dtype=np.float32)


def scene_name(path: Path) -> str:
    name = path.stem if path.is_file() else path.name
    return name[:-3] if name.endswith("_ms") else name


def find_scenes(paths: Iterable[str | Path]) -> dict[str, Path]:
    """name -> path for every scene under ``paths`` (a scene folder, a folder of scenes, or cube files)."""
    out: dict[str, Path] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise InputError("training data not found", p)
        if p.is_file():
            out[scene_name(p)] = p
            continue
        subdirs = sorted(d for d in p.iterdir() if d.is_dir())
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in CUBE_SUFFIXES)
        if subdirs or files:
            for d in subdirs:
                inner = d / d.name if (d / d.name).is_dir() else d  # CAVE zips nest <scene>_ms/<scene>_ms/
                out[scene_name(d)] = inner
            for f in files:
                out[scene_name(f)] = f
        else:
            out[scene_name(p)] = p  # a band folder itself
    if not out:
        raise InputError("no scenes found", ", ".join(map(str, paths)))
    return dict(sorted(out.items()))


def split_scenes(found: dict[str, Path], validation: Sequence[str], train: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(training names, validation names); validation scenes are never trained on."""
    missing = [v for v in list(validation) + list(train) if v not in found]
    if missing:
        raise InputError(f"scenes not found: {', '.join(missing)} (found: {', '.join(found)})")
    val = list(validation)
    tr = [t for t in (train or found) if t not in val]
    if not tr:
        raise UsageError("no training scenes left after removing the validation scenes")
    return tr, val


# ----------------------------------------------------------------------------- forward model, prior

def degrade(z: np.ndarray, fm: ForwardModel) -> tuple[np.ndarray, np.ndarray]:
    """(LR, MSI) of a (C, H, W) cube, noise-free."""
    from ..forward.degrade import degrade_cube

    lr, msi = degrade_cube(z, fm.psf, fm.srf, None, None, 0)
    return np.asarray(lr, np.float32), np.asarray(msi, np.float32)


def make_prior_fuser(fm: ForwardModel, bands: int):
    """The detail-injection ("gsa") Fuser for this forward model."""
    from ..fusion.base import FusionProblem
    from ..models.classical import DetailInjection

    problem = FusionProblem(scale=fm.scale, lr_bands=bands, msi_bands=fm.srf.shape[0], psf=fm.psf, srf=fm.srf)
    return DetailInjection(problem)


def gsa_prior(lr: np.ndarray, msi: np.ndarray, fm: ForwardModel) -> np.ndarray:
    """The GSA estimate of a whole scene, fitted on the whole scene as at inference."""
    from ..fusion.base import FusionProblem
    from ..models.classical import DetailInjection, fuse_arrays

    problem = FusionProblem(scale=fm.scale, lr_bands=lr.shape[0], msi_bands=msi.shape[0], psf=fm.psf, srf=fm.srf)
    return np.asarray(fuse_arrays(DetailInjection, lr, msi, problem), dtype=np.float32)


def bicubic(lr: np.ndarray, scale: int) -> np.ndarray:
    import torch

    from ..models.common import upsample

    return upsample(torch.from_numpy(np.ascontiguousarray(lr, np.float32)), scale).numpy()


@dataclass
class Scene:
    name: str
    hr: np.ndarray  # (C, H, W)
    lr: np.ndarray  # (C, H/s, W/s)
    msi: np.ndarray  # (m, H, W)
    prior: np.ndarray | None  # (C, H, W)
    # SRF augmentation: (msi, prior) made with other camera responses (same LR); the sampler draws one
    variants: list[tuple[np.ndarray, np.ndarray | None]] = field(default_factory=list)


def perturbed_srf(srf: np.ndarray, wavelengths: np.ndarray, rng: np.random.Generator, shift_nm: float = 20.0,
                  gain: float = 0.3, crosstalk: float = 0.15) -> np.ndarray:
    """A random smooth variation of ``srf`` (m x C) that looks like another camera.

    Per MSI band: the curve shifted by U(-shift_nm, shift_nm), multiplied by exp(a smooth random
    curve of amplitude ``gain``), then mixed with the other bands by up to ``crosstalk``; each row
    keeps its original sum (the MSI's gain convention).
    """
    srf = np.asarray(srf, np.float64)
    wl = np.asarray(wavelengths, np.float64)
    span = max(float(wl[-1] - wl[0]), 1.0)
    t = (wl - wl[0]) / span
    rows = []
    for r in srf:
        d = rng.uniform(-shift_nm, shift_nm)
        shifted = np.interp(wl - d, wl, r, left=0.0, right=0.0)
        wiggle = sum(rng.normal(0, gain / 2) * np.cos(np.pi * k * t + rng.uniform(0, 2 * np.pi)) for k in (1, 2))
        rows.append(np.maximum(shifted * np.exp(wiggle), 0.0))
    out = np.stack(rows)
    m = out.shape[0]
    mix = np.eye(m) * (1 - crosstalk) + rng.uniform(0, 1, (m, m)) * crosstalk * (1 - np.eye(m)) / max(m - 1, 1) * 2
    out = mix @ out
    sums = srf.sum(1, keepdims=True)
    return out / np.maximum(out.sum(1, keepdims=True), 1e-12) * sums


def srf_variants(fm: "ForwardModel", bands: int, cameras: Sequence[str], n_random: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """(name, m x C SRF) for SRF augmentation: shipped camera curves plus ``n_random`` perturbations.

    The random ones perturb the protocol's SRF and each camera curve in turn; rows are scaled to the
    protocol SRF's row sums so only the spectral shape changes, not the MSI's gain.
    """
    from ..forward.srf import load_srf

    wl = fm.wavelengths if fm.wavelengths is not None else np.linspace(400, 700, bands)
    sums = fm.srf.sum(1, keepdims=True)
    bases = [("protocol", np.asarray(fm.srf, np.float64))]
    out = []
    for cam in cameras:
        mat = np.asarray(load_srf(cam, wl, bands).matrix, np.float64)
        if mat.shape != fm.srf.shape:
            raise UsageError(f"SRF '{cam}' has shape {mat.shape}, the protocol's is {fm.srf.shape}")
        mat = mat / np.maximum(mat.sum(1, keepdims=True), 1e-12) * sums
        out.append((cam, mat))
        bases.append((cam, mat))
    rng = np.random.default_rng(seed)
    for k in range(n_random):
        name, base = bases[k % len(bases)]
        out.append((f"perturbed-{name}-{k}", perturbed_srf(base, wl, rng)))
    return out


def add_srf_variants(scenes: Sequence[Scene], fm: "ForwardModel", srfs: Sequence[tuple[str, np.ndarray]],
                     prior: bool) -> None:
    """Give every scene its (MSI, GSA prior) under each extra SRF (the LR does not depend on the SRF)."""
    for sc in scenes:
        for _, srf in srfs:
            msi = np.einsum("mc,chw->mhw", srf.astype(np.float32), sc.hr).astype(np.float32)
            fm_v = dataclasses.replace(fm, srf=srf, srf_source="augmented")
            sc.variants.append((msi, gsa_prior(sc.lr, msi, fm_v) if prior else None))


def spectral_gain(wavelengths: np.ndarray, rng: np.random.Generator, amplitude: float = 0.4) -> np.ndarray:
    """A smooth random positive curve over the bands: exp(three random cosines of amplitude ~``amplitude``)."""
    wl = np.asarray(wavelengths, np.float64)
    t = (wl - wl[0]) / max(float(wl[-1] - wl[0]), 1.0)
    log_g = sum(rng.normal(0, amplitude / 2) * np.cos(np.pi * k * t + rng.uniform(0, 2 * np.pi)) for k in (1, 2, 3))
    return np.exp(log_g).astype(np.float32)


def spectral_variants(scenes: Sequence[Scene], fm: ForwardModel, n: int, seed: int, prior: bool) -> list[Scene]:
    """``n`` re-coloured copies of every scene: HR spectra times a smooth random gain curve (rescaled to
    stay in [0, 1]), LR, MSI and GSA prior made again from it.

    Why: CAVE has few materials, so a network learns corrections tied to CAVE's spectra and makes the
    GSA estimate worse on scenes whose spectra no training scene has. New spectral shapes under the
    same cameras force the correction to come from the observations instead.
    """
    rng = np.random.default_rng(seed + 7919)
    bands = scenes[0].hr.shape[0] if scenes else 0
    wl = fm.wavelengths if fm.wavelengths is not None else np.linspace(400, 700, bands)
    out = []
    for k in range(n):
        for sc in scenes:
            hr = sc.hr * spectral_gain(wl, rng)[:, None, None]
            hr = np.ascontiguousarray(hr / max(1.0, float(hr.max())), dtype=np.float32)
            lr, msi = degrade(hr, fm)
            out.append(Scene(f"{sc.name}#spectral{k}", hr, lr, msi, gsa_prior(lr, msi, fm) if prior else None))
    return out


def at_scale(fm: ForwardModel, scale: int) -> ForwardModel:
    """The protocol at another scale factor: same SRF, PSF binned to the smaller footprint (``Psf.rescaled``)."""
    if scale == fm.scale:
        return fm
    try:
        psf = fm.psf.rescaled(scale)
    except ValueError as e:
        raise UsageError(f"protocol {fm.name} cannot be used at x{scale}: {e}") from None
    return dataclasses.replace(fm, psf=psf, psf_source=f"{fm.name}@x{scale}", protocol=None)


def rescaled_scenes(scenes: Sequence[Scene], fm: ForwardModel, prior: bool) -> list[Scene]:
    """The same HR scenes degraded by another forward model (a second scale factor for joint training)."""
    out = []
    for sc in scenes:
        lr, msi = degrade(sc.hr, fm)
        out.append(Scene(sc.name, sc.hr, lr, msi, gsa_prior(lr, msi, fm) if prior else None))
    return out


def load_scene(name: str, path: Path, fm: ForwardModel, prior: bool) -> Scene:
    hr = read_hr(path)
    s = fm.scale
    h, w = (hr.shape[1] // s) * s, (hr.shape[2] // s) * s
    hr = np.ascontiguousarray(hr[:, :h, :w])
    if fm.srf.shape[1] != hr.shape[0]:
        raise InputError(f"SRF has {fm.srf.shape[1]} bands but the cube has {hr.shape[0]}", path)
    lr, msi = degrade(hr, fm)
    pr = gsa_prior(lr, msi, fm) if prior else None
    return Scene(name, hr, lr, msi, pr)


def load_scenes(found: dict[str, Path], names: Sequence[str], fm: ForwardModel, prior: bool) -> list[Scene]:
    return [load_scene(n, found[n], fm, prior) for n in names]


# ----------------------------------------------------------------------------- batches

def _awgn(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    power = float(np.mean(x.astype(np.float64) ** 2))
    sigma = math.sqrt(power / (10 ** (snr_db / 10))) if power > 0 else 0.0
    return (x + rng.normal(0.0, sigma, x.shape)).astype(np.float32)


class PatchSampler:
    """Random scale-aligned crops with flips / 90-degree rotations; state is one numpy Generator.

    ``state()`` / ``set_state()`` make resumed runs draw exactly the same batches.
    """

    def __init__(self, scenes: Sequence[Scene], scale: int, patch: int = 64, batch: int = 8, seed: int = 0,
                 noise_snr: float = 0.0, augment: bool = True):
        if patch % scale:
            raise UsageError(f"patch {patch} must be a multiple of the scale {scale}")
        small = [s.name for s in scenes if min(s.hr.shape[1:]) < patch]
        if small:
            raise UsageError(f"scenes smaller than the patch {patch}: {', '.join(small)}")
        self.scenes, self.scale, self.patch, self.batch = list(scenes), scale, patch, batch
        self.noise_snr, self.augment = noise_snr, augment
        self.rng = np.random.default_rng(seed)
        # sample scenes by area so every pixel is equally likely
        areas = np.array([s.hr.shape[1] * s.hr.shape[2] for s in self.scenes], dtype=np.float64)
        self.p = areas / areas.sum()

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def _one(self, patch: int | None = None) -> tuple[np.ndarray, ...]:
        s, P = self.scale, patch or self.patch
        sc = self.scenes[int(self.rng.choice(len(self.scenes), p=self.p))]
        H, W = sc.hr.shape[1:]
        i = int(self.rng.integers(0, (H - P) // s + 1))
        j = int(self.rng.integers(0, (W - P) // s + 1))
        hs, ws = slice(i * s, i * s + P), slice(j * s, j * s + P)
        ls, lw = slice(i, i + P // s), slice(j, j + P // s)
        msi, prior = sc.msi, sc.prior
        if sc.variants:  # SRF augmentation: the protocol's SRF or one of the variants, equally likely
            v = int(self.rng.integers(0, len(sc.variants) + 1))
            if v:
                msi, prior = sc.variants[v - 1]
        arrs = [sc.lr[:, ls, lw], msi[:, hs, ws], sc.hr[:, hs, ws]]
        arrs.append(prior[:, hs, ws] if prior is not None else np.zeros((0, P, P), np.float32))
        if self.augment:
            k = int(self.rng.integers(0, 4))
            flip = bool(self.rng.integers(0, 2))
            arrs = [np.rot90(a, k, axes=(1, 2)) for a in arrs]
            if flip:
                arrs = [a[:, :, ::-1] for a in arrs]
        arrs = [np.ascontiguousarray(a, dtype=np.float32) for a in arrs]
        if self.noise_snr > 0:
            arrs[0] = _awgn(arrs[0], self.noise_snr, self.rng)
            arrs[1] = _awgn(arrs[1], self.noise_snr, self.rng)
        return tuple(arrs)

    def next(self, patch: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """(lr, msi, prior or None, hr) stacked over the batch; ``patch`` overrides the side (progressive training)."""
        if patch is not None and (patch % self.scale or any(min(sc.hr.shape[1:]) < patch for sc in self.scenes)):
            raise UsageError(f"patch {patch} must be a multiple of the scale {self.scale} and fit every scene")
        items = [self._one(patch) for _ in range(self.batch)]
        lr, msi, hr, pr = (np.stack([it[k] for it in items]) for k in range(4))
        return lr, msi, (pr if pr.shape[1] else None), hr


def synthetic_scenes(n: int = 3, bands: int = 8, size: int = 64, msi_bands: int = 3, scale: int = 4,
                     seed: int = 0, prior: bool = True, texture: float = 1.0) -> tuple[list[Scene], ForwardModel]:
    """Tiny smooth random scenes and a Gaussian forward model (tests, smoke runs)."""
    rng = np.random.default_rng(seed)
    srf = rng.uniform(0.0, 1.0, (msi_bands, bands))
    srf /= srf.sum(1, keepdims=True)
    fm = ForwardModel(psf=Psf.gaussian(scale), psf_source="synthetic", srf=srf, srf_source="random", exact=True,
                      wavelengths=np.linspace(400, 700, bands))
    scenes = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    texture_amp = float(texture)
    k = 6  # more materials than MSI bands + 1: a linear regression cannot explain everything
    for n_ in range(n):
        maps = []
        for _ in range(k):
            smooth = 1.1 + np.sin(2 * np.pi * (rng.uniform(1, 6) * xx + rng.uniform(0, 1))) \
                * np.cos(2 * np.pi * (rng.uniform(1, 6) * yy + rng.uniform(0, 1)))
            texture = rng.uniform(0, 1, (size, size))
            texture = (texture + np.roll(texture, 1, 0) + np.roll(texture, 1, 1)) / 3  # fine detail
            maps.append(smooth * (1.0 + texture_amp * (texture - 0.5)))
        ab = np.stack(maps)
        ab /= ab.sum(0, keepdims=True)
        lam = np.linspace(0, 1, bands)
        spec = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (rng.uniform(0.5, 3) * lam + rng.uniform(0, 1))) for _ in range(k)])
        hr = np.einsum("kc,khw->chw", spec, ab).astype(np.float32)
        lr, msi = degrade(hr, fm)
        pr = gsa_prior(lr, msi, fm) if prior else None
        scenes.append(Scene(f"synthetic_{n_}", hr, lr, msi, pr))
    return scenes, fm
