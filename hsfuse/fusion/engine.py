"""Plan and run a fusion: resolve inputs, scale, model and device, then stream tiles.

    from hsfuse.fusion.engine import FuseConfig, fuse_files, fuse_arrays
    result = fuse_files("lr.hdr", "msi.tif", "out.hdr", FuseConfig(model="gsa"))
    hr = fuse_arrays(lr, msi, FuseConfig(model="gsa"))      # numpy in, numpy out

Two passes over the MSI, both tile by tile with bounded memory:
1. degrade the MSI onto the LR grid (``msi_lr``) with the PSF, so methods can
   estimate their global parameters once from the whole (small) LR scene;
2. fuse tile by tile (see tiling.py) and write each finished region straight
   into the output writer, which renames its temporary file into place only
   when every tile is done.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..cube import CubeMeta, GeoRef, Window
from ..forward.psf import Psf, sampling_phase
from ..forward.degrade import spatial_degrade
from ..errors import HsfuseError, InputError, ModelError, UsageError
from ..io import create_writer, open_cube
from ..io.base import CubeSource
from ..io.memory import ArraySink, ArraySource
from ..models.registry import ModelEntry, get_model, list_models
from ..weights import WeightsRecord
from .base import FusionProblem, Fuser
from .tiling import Span, mirror_index, ramp, read_mirrored, spans

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class FuseConfig:
    """Everything that decides how a pair is fused (defaults < config file < flags)."""

    model: str | None = None  # None: choose by what fits the inputs
    tile: int = 512  # HR pixels per tile side (rounded to a multiple of the scale)
    overlap: int | None = None  # HR pixels blended between tiles; None: the model's default
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 | fp16 (GPU only; CPU always runs fp32)
    psf: Psf | str | None = None  # a Psf, or a spec for degrade.make_psf ("gaussian", "box", a kernel file)
    sigma: float | None = None  # with psf="gaussian"
    psf_form: str = "conv"  # with a psf spec: block | conv
    srf: np.ndarray | str | None = None  # (msi_bands, lr_bands) matrix, or a spec for srf.load_srf
    protocol: str | None = None  # a degradation preset giving both PSF and SRF (overridden by psf/srf)
    options: dict[str, Any] = field(default_factory=dict)
    #: what is not given of PSF/SRF: "auto" estimates it from the pair, "off" assumes (old behaviour);
    #: a hsfuse.forward.PairEstimate is reused as it is (batches of one sensor pair)
    estimate: Any = "auto"
    force: bool = False  # fuse even when the estimate says the MSI does not match the LR
    denoise: str = "auto"  # auto: denoise an input whose estimated SNR is low (hsfuse.denoise); on | off
    clip: str = "auto"  # auto: negative output values become 0 when the LR-HSI has none (radiance, reflectance)


@dataclass
class FusePlan:
    scale: int
    lr_shape: tuple[int, int, int]
    msi_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    model: ModelEntry
    model_reason: str
    weights: Path | None
    device: str
    precision: str
    tile_lr: int
    half_overlap_lr: int
    row_spans: list[Span]
    col_spans: list[Span]
    psf: Psf
    psf_source: str
    srf: np.ndarray | None
    srf_source: str
    forward: Any = None  # hsfuse.forward.ForwardModel: the one resolved forward model
    clip: dict = field(default_factory=dict)  # {"min": value or None, "clipped": pixels changed}

    @property
    def n_tiles(self) -> int:
        return len(self.row_spans) * len(self.col_spans)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale, "lr_shape": list(self.lr_shape), "msi_shape": list(self.msi_shape),
            "out_shape": list(self.out_shape), "model": self.model.name, "model_kind": self.model.kind,
            "model_reason": self.model_reason, "weights": str(self.weights) if self.weights else None,
            "device": self.device, "precision": self.precision,
            "tile_hr": self.tile_lr * self.scale, "overlap_hr": 2 * self.half_overlap_lr * self.scale,
            "tiles": self.n_tiles, "tile_grid": [len(self.row_spans), len(self.col_spans)],
            "psf": {"name": self.psf.name, "size": self.psf.size, "pad": self.psf.pad, "border": self.psf.border,
                    "source": self.psf_source},
            "srf": {"source": self.srf_source, "shape": None if self.srf is None else list(self.srf.shape)},
            "forward_model": None if self.forward is None else self.forward.describe(),
            "clip": dict(self.clip),
        }


def _nvidia_driver_present() -> bool:
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def resolve_device(device: str) -> str:
    device = (device or "auto").lower()
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise UsageError(f"{{device}} must be auto, cpu or cuda, got '{device}'", options=("device",))
    if device == "cpu":
        return "cpu"
    if device == "auto" and "torch" not in sys.modules and not _nvidia_driver_present():
        return "cpu"  # no NVIDIA driver: no CUDA, and planning need not import torch (a second per call)
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise UsageError("{device} cuda requested but no CUDA device is available (torch.cuda.is_available() is False)",
                         options=("device",))
    return device


def infer_scale(lr: CubeSource, msi: CubeSource) -> int:
    """The integer ratio between the MSI and LR grids (same in both axes), else a clear error."""
    (_, h, w), (_, H, W) = lr.shape, msi.shape
    if H < h or W < w:
        raise InputError(f"the MSI ({H}x{W}) is smaller than the LR cube ({h}x{w}) {lr.path}: are the inputs swapped?", msi.path)
    if H % h or W % w:
        raise InputError(f"grids are not in an integer ratio: MSI {H}x{W} vs LR {h}x{w} ({H / h:.4g} x {W / w:.4g})", msi.path)
    if H // h != W // w:
        raise InputError(f"scale differs between axes: MSI {H}x{W} vs LR {h}x{w} gives {H // h} and {W // w}", msi.path)
    if H == h:
        raise InputError(f"MSI and LR have the same size ({H}x{W}): nothing to super-resolve", msi.path)
    return H // h


def _same_crs(a: str, b: str) -> bool:
    if " ".join(a.split()) == " ".join(b.split()):
        return True
    try:
        from rasterio.crs import CRS

        return CRS.from_wkt(a) == CRS.from_wkt(b)
    except Exception:  # noqa: BLE001 - unparseable WKT: compare as text (already unequal)
        return False


def check_grids(lr: CubeSource, msi: CubeSource, scale: int) -> list[str]:
    """Problems between two georeferenced grids (empty when either has none, or when they agree).

    Why: a pair from different zones, places or resolutions fuses without error but is nonsense;
    the grids say so before any pixel is read.
    """
    gl, gm = lr.meta.georef, msi.meta.georef
    if gl is None or gm is None or gl.transform is None or gm.transform is None:
        return []
    problems = []
    if gl.crs_wkt and gm.crs_wkt and not _same_crs(gl.crs_wkt, gm.crs_wkt):
        def short(w: str) -> str:
            import re

            m = re.search(r'(?:PROJCS|PROJCRS|GEOGCS|GEOGCRS)\["([^"]+)"', w)
            return m.group(1) if m else w[:40]
        problems.append(f"the grids are in different coordinate systems ({short(gl.crs_wkt)} vs {short(gm.crs_wkt)})")
        return problems
    la, lb, lc, ld, le, lf = gl.transform
    ma, mb, mc, md, me, mf = gm.transform
    if lb or ld or mb or md:
        return problems  # rotated grids: not checked
    for name, lv, mv in (("x", la, ma), ("y", le, me)):
        if mv == 0 or abs(lv / mv / scale - 1.0) > 0.01:
            problems.append(f"the pixel sizes do not match the scale: LR {abs(lv):g} vs MSI {abs(mv):g} in {name} "
                            f"(ratio {abs(lv / mv) if mv else float('inf'):.4g}, the grids are x{scale})")
            return problems
    def extent(c, a, f, e, w, h):
        xs, ys = sorted((c, c + a * w)), sorted((f, f + e * h))
        return xs, ys
    (lx, ly), (mx, my) = extent(lc, la, lf, le, lr.width, lr.height), extent(mc, ma, mf, me, msi.width, msi.height)
    ox = min(lx[1], mx[1]) - max(lx[0], mx[0])
    oy = min(ly[1], my[1]) - max(ly[0], my[0])
    if ox <= 0 or oy <= 0:
        problems.append(f"the grids do not overlap (LR x {lx[0]:.6g}..{lx[1]:.6g}, y {ly[0]:.6g}..{ly[1]:.6g}; "
                        f"MSI x {mx[0]:.6g}..{mx[1]:.6g}, y {my[0]:.6g}..{my[1]:.6g})")
        return problems
    cover = (ox * oy) / ((lx[1] - lx[0]) * (ly[1] - ly[0]))
    if cover < 0.98:
        problems.append(f"the grids cover different areas (they share {cover:.0%} of the LR footprint)")
    return problems


def _record_fits(rec: WeightsRecord, lr: CubeSource, msi: CubeSource, scale: int) -> str | None:
    """None if a weights record fits the inputs, else the reason it does not."""
    if scale not in rec.scales:
        return f"trained for scale(s) {rec.get('scales')}, inputs are x{scale}"
    if rec.bands != lr.bands:
        return f"trained for {rec.get('bands')} LR bands, input has {lr.bands}"
    if rec.msi_bands is not None and rec.msi_bands != msi.bands:
        return f"trained for {rec.msi_bands} MSI bands, input has {msi.bands}"
    wl, ref = lr.meta.wavelengths, rec.wavelengths
    if wl is not None and ref is not None:
        if ref.shape != wl.shape or np.max(np.abs(ref - wl)) > 5.0:
            return "LR wavelengths differ from the training wavelengths by more than 5 nm"
    return None


def select_weights(entry: ModelEntry, lr: CubeSource, msi: CubeSource, scale: int, psf: Psf | None = None,
                   protocol: str | None = None, srf: np.ndarray | None = None) -> tuple[Path | None, str]:
    """Pick the installed weights of ``entry`` that fit; (None, reasons) if none does. Among several that fit the
    bands and scale, the first trained under the pair's PSF and SRF (e.g. refine's Dian-protocol weights for a
    Dian-protocol pair), else the first."""
    from ..weights import read_record

    fits, reasons = fitting_weights(entry, lr, msi, scale)
    if fits:
        for path in fits:
            rec = read_record(path)
            if not (_psf_mismatch(rec, psf, protocol) or _srf_mismatch(rec, srf, protocol, lr.meta.wavelengths)):
                return path, f"weights {path.name} fit the inputs and their forward model"
        return fits[0], f"weights {fits[0].name} fit the inputs"
    if not entry.weights or not reasons and not entry.installed_weights():
        return None, f"no trained weights for '{entry.name}' are installed in {entry.installed_weights() and '' or 'weights/'}"
    return None, "; ".join(reasons)


def fitting_weights(entry: ModelEntry, lr: CubeSource, msi: CubeSource, scale: int) -> tuple[list[Path], list[str]]:
    """All installed weights of ``entry`` that fit the band counts/scale (in registry order), and why others do not."""
    from ..weights import read_record

    fits, reasons = [], []
    for path in entry.installed_weights():
        why = _record_fits(read_record(path), lr, msi, scale)
        if why is None:
            fits.append(path)
        else:
            reasons.append(f"{path.name}: {why}")
    return fits, reasons


def _srf_mismatch(rec: WeightsRecord, srf: np.ndarray | None, protocol: str | None,
                  wavelengths: np.ndarray | None, tol_nm: float | None = None) -> str | None:
    """None if the inputs' SRF is the training one (or within the record's ``srf_tolerance_nm``), else why not.

    A network is trained for one camera response; on another (or an unknown one) the
    classical regression, which adapts to each scene, is the safer default. A network
    trained with SRF augmentation records the wider tolerance it was validated for.
    """
    from ..forward.srf import srf_summary

    if tol_nm is None:
        tol_nm = rec.srf_tolerance_nm

    if protocol is not None and protocol.lower() == rec.protocol.lower():
        return None
    measured = rec.protocol_validation(protocol)
    if measured_better(measured) and not measured["srf"]:  # measured with that preset's own SRF too
        return None
    trained = rec.srf_summary
    if srf is None:
        return f"the MSI's SRF is unknown (give --protocol {rec.protocol} or --srf to use it)"
    gains = np.asarray(srf, dtype=np.float64).sum(1)
    if np.any(np.abs(gains - 1.0) > 0.1):  # trained on MSI = R·Z with rows of R summing to 1 (unit gain)
        return (f"the MSI's gain relative to the LR is {', '.join(f'{g:.3g}' for g in gains[:6])} (the network "
                "was trained on an MSI in the LR's units, gain 1)")
    wl = wavelengths if wavelengths is not None else rec.wavelengths
    given = srf_summary(srf, wl)
    if given["sha256"] == trained.get("sha256"):
        return None
    if "centroid_nm" in given and "centroid_nm" in trained and len(given["centroid_nm"]) == len(trained["centroid_nm"]):
        dc = np.abs(np.subtract(given["centroid_nm"], trained["centroid_nm"])).max()
        dw = np.abs(np.subtract(given["rms_width_nm"], trained["rms_width_nm"])).max()
        if dc <= tol_nm and dw <= tol_nm:
            return None
        return f"the MSI's SRF differs from the training SRF (band centroids/widths off by up to {max(dc, dw):.0f} nm)"
    return "the MSI's SRF cannot be compared with the training SRF"


#: a network measured under another preset than its own is taken there when its mean gain over gsa on the
#: held-out scenes is positive and no scene lost more than this (dB): the own-preset choice ranks by the mean
#: gain too, and a network that breaks a scene by more is not taken however much it gains elsewhere
MAX_SCENE_LOSS_DB = 0.5


def measured_better(measured: dict[str, Any] | None) -> bool:
    """Whether weights measured under a preset (``WeightsRecord.protocol_validation``) earn their place there."""
    return measured is not None and measured["gain"] > 0 and measured["worst"] >= -MAX_SCENE_LOSS_DB


def _psf_mismatch(rec: WeightsRecord, psf: Psf | None, protocol: str | None, tol: float = 0.15) -> str | None:
    """None if the pair's PSF is the one the weights were trained under, else why not.

    A network learns the inverse of one blur and sampling phase: on another it may inject detail at the
    wrong places, which the per-scene regression of ``gsa`` does not (measured: issue 19, docs/fusion.md).
    ``protocol`` is the preset the pair's PSF follows: where the weights were measured under it, the
    measurement decides, not the kernel distance.
    """
    trained = rec.protocol
    if protocol is not None and protocol.lower() == trained.lower():
        return None
    measured = rec.protocol_validation(protocol, None if psf is None else psf.scale)
    if measured is not None:  # measured under the pair's preset: that decides, not the kernel distance
        if measured_better(measured):
            return None
        return (f"measured under {protocol}: {measured['gain']:+.2f} dB over gsa on the held-out scenes, "
                f"{measured['worst']:+.2f} on the worst (trained under {trained})")
    if psf is None or not trained:
        return None if psf is None else "its training PSF is not recorded"
    from ..forward.psf import psf_distance
    from ..forward.protocols import get_protocol

    try:
        ref = get_protocol(trained).build_psf(psf.scale if get_protocol(trained).scale is None else None)
    except HsfuseError:
        return f"its training PSF ({trained}) cannot be built here to compare"
    if ref.scale != psf.scale:
        try:
            ref = ref.rescaled(psf.scale) if psf.scale in rec.scales else ref
        except ValueError:
            pass
    d = psf_distance(psf, ref)
    if d <= tol:
        return None
    return f"the PSF differs from its training PSF ({trained}; kernel distance {d:.0%})"


#: on a CPU, the default skips weights whose measured whole-run CPU cost is above this many times gsa's
#: (a batch user's budget; the guide: "a few times gsa, not tens"); --model NAME still runs them.
#: 4 since gsa runs in numpy on a CPU (2026-12-07: 1.8x cheaper than the torch gsa the earlier limit of 3 was
#: set against, so 4 is still the stricter budget in CPU-seconds): refine costs 3.1-3.7x the numpy gsa, csakd-s
#: 10x; ratios recorded before that date are against the torch gsa and all above 4 either way
MAX_CPU_COST_VS_GSA = 4.0


def _measured_preset_like(rec: WeightsRecord, psf: Psf | None, tol: float = 0.15) -> str | None:
    """The preset the weights were measured under whose PSF at this scale is within ``tol`` (kernel distance) of
    the pair's, for a PSF the estimate did not name (a wide kernel it fitted as a Gaussian, say)."""
    if psf is None:
        return None
    from ..forward.protocols import get_protocol
    from ..forward.psf import psf_distance

    best = None
    for name in (rec.get("validation_protocols") or {}) if isinstance(rec.get("validation_protocols"), dict) else ():
        if rec.protocol_validation(name, psf.scale) is None:
            continue
        try:
            proto = get_protocol(name)
            ref = proto.build_psf(None if proto.scale is not None else psf.scale)
        except (HsfuseError, ValueError):
            continue
        if ref.scale == psf.scale:
            d = psf_distance(psf, ref)
            if d <= tol and (best is None or d < best[0]):
                best = (d, name)
    return None if best is None else best[1]


def _too_slow(rec: WeightsRecord, scale: int, device: str | None) -> str | None:
    if device != "cpu":
        return None
    ratio = rec.cpu_cost_vs_gsa(scale)
    if ratio is None or ratio <= MAX_CPU_COST_VS_GSA:
        return None
    return f"on a CPU it costs {ratio:.1f}x gsa (default limit {MAX_CPU_COST_VS_GSA:g}x; ask for it with --model)"


def _gain(rec: WeightsRecord, scale: int, protocol: str | None) -> float | None:
    """The gain over gsa that ranks fitting weights: measured under the pair's preset when it was, else the
    record's own validation."""
    measured = rec.protocol_validation(protocol, scale)
    return measured["gain"] if measured is not None else rec.validation_gain(scale)


def choose_model(lr: CubeSource, msi: CubeSource, scale: int, srf: np.ndarray | None = None,
                 protocol: str | None = None, psf: Psf | None = None,
                 device: str | None = None, psf_preset: str | None = None) -> tuple[ModelEntry, Path | None, str]:
    """The pretrained weights with the largest recorded validation gain over ``gsa`` among those that fit
    the bands, wavelengths, scale, PSF and SRF (and, on a CPU, cost at most MAX_CPU_COST_VS_GSA times gsa);
    detail injection ``gsa`` when none fits. ``protocol``: the preset the pair follows in PSF and SRF;
    ``psf_preset``: the preset its PSF follows (the same, or one whose SRF is left open)."""
    from ..weights import read_record

    where = protocol or psf_preset
    reasons, fits, slow = [], [], []
    for entry in list_models():
        if entry.kind == "supervised" and entry.available:
            for path in fitting_weights(entry, lr, msi, scale)[0]:  # e.g. an exact-camera model, then an any-RGB one
                rec = read_record(path)
                near = where or _measured_preset_like(rec, psf)  # a PSF like one it was measured under
                mismatch = _psf_mismatch(rec, psf, near) or _srf_mismatch(rec, srf, protocol, lr.meta.wavelengths)
                too_slow = None if mismatch else _too_slow(rec, scale, device)
                if too_slow:
                    slow.append((_gain(rec, scale, near), entry.name, too_slow))
                    mismatch = too_slow
                if mismatch is None:
                    fits.append((_gain(rec, scale, near), entry, path, rec, near))
                else:
                    reasons.append(f"'{entry.name}' ({path.name}) not used: {mismatch}")
    if fits:
        # best recorded gain first; weights without one after all that have one; ties keep registry order
        gain, entry, path, rec, near = min(fits, key=lambda f: (f[0] is None, -(f[0] or 0.0)))  # min() keeps the first of ties
        measured, tol = rec.protocol_validation(near, scale), rec.srf_tolerance_nm
        if measured is not None:
            with_srf = f" with the {measured['srf']} SRF" if measured["srf"] else ""
            like = "" if near == where else " (the pair's PSF is within 15% of that preset's)"
            why = (f"pretrained '{entry.name}' chosen: weights {path.name} (trained under {rec.protocol}) were measured "
                   f"under {near}{with_srf}{like}: {measured['gain']:+.2f} dB over gsa on the held-out scenes "
                   f"({measured['worst']:+.2f} on the worst)")
        else:
            why = (f"pretrained '{entry.name}' chosen: weights {path.name} fit the inputs and the SRF matches its "
                   f"training SRF{'s' if tol > 10 else ''} (within {tol:g} nm)")
        if len(fits) > 1:
            shown = "not recorded" if gain is None else f"{gain:+.2f} dB"
            why += f"; the largest validation gain over gsa at x{scale} ({shown}) of {len(fits)} fitting weights"
        better = [(g, name, w) for g, name, w in slow if g is not None and (gain is None or g > gain)]
        if better:  # say what a slower network would give, so the choice is the user's
            g, name, w = max(better)
            mine = "" if gain is None else f" ('{entry.name}' {gain:+.2f} dB)"
            why += f"; '{name}' would gain {g:+.2f} dB over gsa{mine} but {w}"
        return entry, path, why
    grouped: dict[str, list[str]] = {}  # one line per distinct reason, naming every model it applies to
    for r in reasons:
        who, _, why = r.partition(" not used: ")
        grouped.setdefault(why, []).append(who)
    reasons = [f"{', '.join(who)} not used: {why}" for why, who in grouped.items()]
    tail = f" ({'; '.join(reasons)})" if reasons else ""
    return get_model("gsa"), None, f"no pretrained model fits these inputs{tail}; using classical detail injection 'gsa'"


def tile_grid(h: int, w: int, tile_lr: int, overlap_hr: int, scale: int) -> tuple[int, list[Span], list[Span]]:
    """(half-overlap in LR pixels, row spans, column spans) of an h×w LR grid in tiles of ``tile_lr``."""
    half = math.ceil(overlap_hr / (2 * scale)) if overlap_hr else 0
    # one half-overlap for both axes, at most half the smallest core (bands must not meet)
    for n in (h, w):
        cores = [sp.c1 - sp.c0 for sp in spans(n, tile_lr, 0)]
        if len(cores) > 1:
            half = min(half, min(cores) // 2)
    return half, spans(h, tile_lr, half), spans(w, tile_lr, half)


def make_plan(lr: CubeSource, msi: CubeSource, cfg: FuseConfig, notify: Callable[[str], None] | None = None) -> FusePlan:
    from ..forward.model import resolve_forward_model

    named = get_model(cfg.model) if cfg.model is not None else None  # a typo is a usage error, found first
    scale = infer_scale(lr, msi)
    grid_problems = check_grids(lr, msi, scale)
    if grid_problems and not cfg.force:
        raise InputError("; ".join(grid_problems) + " ({force} fuses anyway, on the MSI's grid)", msi.path, options=("force",))
    for prob in grid_problems:
        if notify:
            notify(f"warning: {prob} (fusing anyway: --force)")
    fm = resolve_forward_model(cfg, scale, lr, msi, notify=notify)
    psf, psf_source, srf, srf_source = fm.psf, fm.psf_source, fm.srf, fm.srf_source
    device = resolve_device(cfg.device)
    if named is None:
        entry, weights, reason = choose_model(lr, msi, scale, srf, fm.protocol, psf, device, fm.psf_preset)
    else:
        entry = named
        weights, reason = None, "chosen with --model"
        if entry.needs_weights and cfg.options.get("weights"):  # -O weights=STEM: those, checked when loaded
            weights = Path(str(cfg.options["weights"]))
            weights = weights.with_suffix("") if weights.suffix in (".json", ".safetensors") else weights
            if not weights.with_suffix(".json").exists():
                raise ModelError("weights record not found (give the stem of NAME.json + NAME.safetensors)",
                                 weights.with_suffix(".json"))
            reason = f"chosen with --model, weights given with -O weights={cfg.options['weights']}"
        elif entry.needs_weights:
            weights, why = select_weights(entry, lr, msi, scale, psf, fm.protocol, srf)
            if weights is None:
                raise ModelError(f"model '{entry.name}' cannot take these inputs: {why}", lr.path)
        if weights is not None and notify:  # asked for by name: allowed, but not silently off its training
            from ..weights import read_record

            try:
                rec = read_record(weights)
                off = _psf_mismatch(rec, psf, fm.protocol) or _srf_mismatch(rec, srf, fm.protocol, lr.meta.wavelengths)
            except HsfuseError:
                off = None
            if off:
                notify(f"warning: '{entry.name}' runs outside what it was trained on: {off}")
    if srf is None and entry.needs_srf:
        srf_source = "estimated from the inputs by least squares"
    if cfg.tile < 1:
        raise UsageError(f"{{tile}} must be positive, got {cfg.tile}", options=("tile",))
    tile_lr = max(1, cfg.tile // scale)
    overlap_hr = entry.default_overlap if cfg.overlap is None else cfg.overlap
    if overlap_hr < 0:
        raise UsageError(f"{{overlap}} must be >= 0, got {overlap_hr}", options=("overlap",))
    half, rows, cols = tile_grid(lr.height, lr.width, tile_lr, overlap_hr, scale)
    precision = cfg.precision.lower()
    if precision not in ("fp32", "bf16", "fp16"):
        raise UsageError(f"{{precision}} must be fp32, bf16 or fp16, got '{cfg.precision}'", options=("precision",))
    return FusePlan(
        scale=scale, lr_shape=lr.shape, msi_shape=msi.shape, out_shape=(lr.bands, msi.height, msi.width),
        model=entry, model_reason=reason, weights=weights, device=device,
        precision=precision if device != "cpu" else "fp32",
        tile_lr=tile_lr, half_overlap_lr=half, row_spans=rows, col_spans=cols,
        psf=psf, psf_source=psf_source, srf=srf, srf_source=srf_source, forward=fm,
    )


def output_meta(lr: CubeSource, msi: CubeSource, plan: FusePlan) -> CubeMeta:
    """LR spectral metadata on the MSI's grid (georeferencing from the MSI, never the LR)."""
    m = lr.meta
    return CubeMeta(
        wavelengths=None if m.wavelengths is None else np.array(m.wavelengths),
        fwhm=None if m.fwhm is None else np.array(m.fwhm),
        band_names=None if m.band_names is None else list(m.band_names),
        nodata=float("nan"),
        georef=None if msi.meta.georef is None else GeoRef(msi.meta.georef.crs_wkt, msi.meta.georef.transform),
        bad_bands=None if m.bad_bands is None else np.array(m.bad_bands),
        description=(f"hsfuse {plan.model.name} x{plan.scale} fusion of {lr.path.name} and {msi.path.name}; "
                     f"PSF {plan.psf_source}; SRF {plan.srf_source}"),
        source=_carried_source(m, lr.bands),
    )


#: LR header fields that describe the LR's raw encoding or its grid: not true of the fused output
_NOT_CARRIED = {"data gain values", "data offset values", "x start", "y start", "pixel size", "geo points",
                "rpc info", "default stretch", "header offset"}


def _carried_source(m: CubeMeta, bands: int) -> dict:
    """What of the LR file's own metadata the fused file keeps: an ENVI header's other fields (sensor type,
    acquisition time, solar irradiance, ...) and its interleave."""
    if m.source.get("format") != "envi":
        return {}
    header = {k: v for k, v in (m.source.get("header") or {}).items() if k.lower() not in _NOT_CARRIED}
    return {"format": "envi", "interleave": m.source.get("interleave", "bsq"), "bands": bands, "header": header}


def output_encoding(lr: CubeSource, meta: CubeMeta, out_dtype: str) -> tuple[CubeMeta, np.dtype]:
    """(meta, dtype) of the output for ``--dtype``: float32/float64 as physical values; 'same' or an integer
    type: the LR's own encoding (scale factor, offset, nodata), so a uint16 ×10000 input stays that size."""
    name = str(out_dtype or "float32").lower()
    dtype = np.dtype(lr.dtype) if name == "same" else None
    if dtype is None:
        try:
            dtype = np.dtype(name)
        except TypeError:
            raise UsageError(f"{{dtype}} must be float32, float64, same or an integer type, got '{out_dtype}'",
                             options=("dtype",)) from None
    if dtype.kind == "f":
        return meta, dtype
    if dtype.kind not in "iu":
        raise UsageError(f"{{dtype}} {dtype.name} is not a numeric type a cube file can hold", options=("dtype",))
    if np.dtype(lr.dtype).kind not in "iu":
        raise UsageError(f"{{dtype}} {dtype.name} reuses the LR's integer encoding, but {lr.path.name} is stored as "
                         f"{np.dtype(lr.dtype).name}: use float32", options=("dtype",))
    info = np.iinfo(dtype)
    nodata = lr.meta.nodata if lr.meta.nodata is not None and np.isfinite(lr.meta.nodata) else \
        float(info.max if dtype.kind == "u" else info.min)
    return meta.copy(scale=lr.meta.scale, offset=lr.meta.offset, nodata=nodata), dtype


class _Prepared:
    """Scene-wide state from pass 1: the filled LR, msi_lr, fill values and validity."""

    def __init__(self, lr: np.ndarray, lr_fill: np.ndarray, msi_fill: np.ndarray, lr_valid: np.ndarray):
        self.lr, self.lr_fill, self.msi_fill, self.lr_valid = lr, lr_fill, msi_fill, lr_valid


def _degrade_msi(msi: CubeSource, plan: FusePlan, progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
    """Pass 1: MSI degraded onto the LR grid tile by tile, and where it touched nodata."""
    s, psf = plan.scale, plan.psf
    halo = psf.halo_lr
    h, w = plan.lr_shape[1:]
    out = np.empty((msi.bands, h, w), dtype=np.float32)
    bad = np.zeros((h, w), dtype=bool)
    rows, cols = spans(h, plan.tile_lr, 0), spans(w, plan.tile_lr, 0)
    total, done = len(rows) * len(cols), 0
    for r in rows:
        for c in cols:
            block = read_mirrored(msi, r.c0 - halo, r.c1 + halo, c.c0 - halo, c.c1 + halo, s)
            nan = ~np.isfinite(block)
            if nan.any():
                block = np.where(nan, 0.0, block).astype(np.float32)
                touched = spatial_degrade(nan.any(0, keepdims=True).astype(np.float32), psf)[0] > 0
                bad[r.c0:r.c1, c.c0:c.c1] = touched[halo:halo + r.c1 - r.c0, halo:halo + c.c1 - c.c0]
            low = spatial_degrade(block, psf)
            out[:, r.c0:r.c1, c.c0:c.c1] = low[:, halo:halo + r.c1 - r.c0, halo:halo + c.c1 - c.c0]
            done += 1
            if progress:
                progress("degrade MSI", done, total)
    return out, bad


def _band_means(x: np.ndarray, valid: np.ndarray, path: Path) -> np.ndarray:
    if not valid.any():
        raise InputError("no valid pixels (everything is nodata/NaN)", path)
    return np.array([float(b[valid].mean()) for b in x], dtype=np.float32)


def prepare(lr_src: CubeSource, msi_src: CubeSource, fuser: Fuser, plan: FusePlan, progress: Progress | None) -> _Prepared:
    lr = lr_src.read()
    msi_lr, msi_bad = _degrade_msi(msi_src, plan, progress)
    lr_valid = np.isfinite(lr).all(0)
    if not (~msi_bad & np.isfinite(msi_lr).all(0)).any():
        raise InputError("no valid pixels (everything is nodata/NaN)", msi_src.path)
    fit_valid = lr_valid & ~msi_bad & np.isfinite(msi_lr).all(0)
    lr_fill = _band_means(lr, fit_valid, lr_src.path)
    msi_fill = _band_means(msi_lr, fit_valid, msi_src.path)
    lr_fit = np.where(fit_valid[None], lr, np.nan).astype(np.float32)
    msi_fit = np.where(fit_valid[None], msi_lr, np.nan).astype(np.float32)
    fuser.fit(lr_fit, msi_fit)
    lr_filled = np.where(np.isfinite(lr), lr, lr_fill[:, None, None]).astype(np.float32)
    return _Prepared(lr_filled, lr_fill, msi_fill, lr_valid)


class UsedOptions(dict):
    """Model options that remember which keys the model read: one it never reads was a typo or belongs to
    another model, and the user is told (``run``)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)

    def copy(self):
        self.read.update(self.keys())  # handed on whole (e.g. to an inner fuser): not judged here
        return dict(self)

    def items(self):
        self.read.update(self.keys())
        return super().items()


def build_fuser(plan: FusePlan, cfg: FuseConfig, lr: CubeSource, msi: CubeSource) -> Fuser:
    options = UsedOptions(cfg.options)
    if plan.weights is not None:
        options["weights"] = plan.weights
    problem = FusionProblem(
        scale=plan.scale, lr_bands=lr.bands, msi_bands=msi.bands, psf=plan.psf, srf=plan.srf,
        psf_exact=bool(plan.forward.exact) if plan.forward is not None else False,
        lr_wavelengths=lr.meta.wavelengths, msi_wavelengths=msi.meta.wavelengths, options=options,
    )
    try:
        cls = plan.model.load_class()
    except (ImportError, AttributeError) as e:
        raise ModelError(f"model '{plan.model.name}' is not available in this installation: {e}") from None
    return cls(problem, device=plan.device, precision=plan.precision)


def stream_tiles(plan: FusePlan, fuser: Fuser, prep: _Prepared, msi: CubeSource, sink, progress: Progress | None) -> None:
    """Pass 2: fuse every tile, blend overlaps, write finished regions in row-major order."""
    s, o, halo = plan.scale, plan.half_overlap_lr, max(int(fuser.halo_lr), 0)
    C, H, W = plan.out_shape
    lr_src = ArraySource(prep.lr)
    # LR samples off the block centres (a kernel centred on the first pixel of each block, Dian-group ×8):
    # mirroring whole LR pixels at the scene border pairs them with MSI that is several HR pixels away
    # (the mirror image of an LR centre falls between two LR centres, or past the last one), and the
    # fuser's regression sees pairs that disagree (measured −4.8 dB on a whole CAVE scene, all of it in
    # the outer LR rows and columns). Such tiles stop at the scene border instead and the fuser's own
    # border rule applies, as in one untiled call; tiled = untiled still holds.
    # A fuser may also ask for it (refine: trained on crops, so its network and its gsa prior handle a border
    # themselves; the mirrored halo only cost time, 1.3-2x on a 512² scene, for the same PSNR to 0.02 dB).
    in_scene = any(sampling_phase(plan.psf)) or fuser.tiles_stop_at_border
    h_lr, w_lr = plan.lr_shape[1:]
    lr_valid = prep.lr_valid
    clip_min = plan.clip.get("min")
    vcarry = None
    total, done = plan.n_tiles, 0
    for R in plan.row_spans:
        next_vcarry = None if R.last else np.zeros((C, 2 * o * s, W), dtype=np.float32)
        hcarry = None
        for Cs in plan.col_spans:
            eh, ew = (R.e1 - R.e0) * s, (Cs.e1 - Cs.e0) * s
            # ---- inputs with halo, mirrored at the scene border (or stopping there, above)
            top, left = (min(halo, R.e0), min(halo, Cs.e0)) if in_scene else (halo, halo)
            bottom, right = (min(halo, h_lr - R.e1), min(halo, w_lr - Cs.e1)) if in_scene else (halo, halo)
            lr_in = read_mirrored(lr_src, R.e0 - top, R.e1 + bottom, Cs.e0 - left, Cs.e1 + right)
            msi_in = read_mirrored(msi, R.e0 - top, R.e1 + bottom, Cs.e0 - left, Cs.e1 + right, s)
            msi_nan = ~np.isfinite(msi_in)
            if msi_nan.any():
                msi_in = np.where(msi_nan, prep.msi_fill[:, None, None], msi_in).astype(np.float32)
            hs = slice(top * s, top * s + eh), slice(left * s, left * s + ew)
            invalid = msi_nan.any(0)[hs]
            lv = lr_valid[mirror_index(np.arange(R.e0, R.e1), lr_valid.shape[0])][:, mirror_index(np.arange(Cs.e0, Cs.e1), lr_valid.shape[1])]
            invalid |= ~np.repeat(np.repeat(lv, s, 0), s, 1)
            # ---- predict
            if invalid.all():
                pred = np.zeros((C, eh, ew), dtype=np.float32)
            else:
                # where the tile input starts in the (mirror-extended) HR scene: methods with
                # position-keyed state (e.g. diffusion noise) use it to stay tile-invariant
                fuser.tile_origin = ((R.e0 - top) * s, (Cs.e0 - left) * s)
                fuser.tile_halo = (top, bottom, left, right)
                pred = np.asarray(fuser.fuse_tile(lr_in, msi_in), dtype=np.float32)
                expect = (C, (R.e1 - R.e0 + top + bottom) * s, (Cs.e1 - Cs.e0 + left + right) * s)
                if pred.shape != expect:
                    raise ModelError(f"model '{fuser.name}' returned a tile of shape {pred.shape}, expected {expect}")
                pred = pred[:, hs[0], hs[1]]
            if o:
                pred = pred * (ramp(R, o, s)[:, None] * ramp(Cs, o, s)[None, :])[None]
            # ---- blend with what neighbours left, write what is final
            fr1 = R.e1 if R.last else R.e1 - 2 * o
            fc1 = Cs.e1 if Cs.last else Cs.e1 - 2 * o
            lc0, lc1 = 0, (fc1 - Cs.e0) * s
            if vcarry is not None and o:
                pred[:, : 2 * o * s, lc0:lc1] += vcarry[:, :, Cs.e0 * s: fc1 * s]
            if hcarry is not None:
                pred[:, :, : hcarry.shape[2]] += hcarry
            region = pred[:, : (fr1 - R.e0) * s, lc0:lc1]
            bad = invalid[: (fr1 - R.e0) * s, lc0:lc1]
            if bad.any():
                region = region.copy()
                region[:, bad] = np.nan
            if clip_min is not None:
                low = region < clip_min
                if low.any():
                    region = np.where(low, np.float32(clip_min), region)
                    plan.clip["clipped"] = plan.clip.get("clipped", 0) + int(low.sum())
            sink.write(region, Window(R.e0 * s, Cs.e0 * s, region.shape[1], region.shape[2]))
            if next_vcarry is not None:
                next_vcarry[:, :, Cs.e0 * s: fc1 * s] += pred[:, (fr1 - R.e0) * s:, lc0:lc1]
            hcarry = None if Cs.last else pred[:, :, lc1:].copy()
            done += 1
            if progress:
                progress("fuse", done, total)
        vcarry = next_vcarry


def _is_cuda_oom(e: BaseException) -> bool:
    try:
        import torch

        return isinstance(e, torch.cuda.OutOfMemoryError)
    except Exception:
        return False


def denoised_sources(plan: FusePlan, lr: CubeSource, msi: CubeSource) -> tuple[CubeSource, CubeSource]:
    """The inputs as fusion sees them: denoised where the plan says so (hsfuse.denoise)."""
    fm = plan.forward
    if fm is None or fm.noise is None or not any(fm.denoise):
        return lr, msi
    from ..denoise import WienerSource, subspace_denoise

    if fm.denoise[0]:
        data, _ = subspace_denoise(lr.read(), fm.noise.lr_sigma)
        lr = ArraySource(data, lr.meta.copy(nodata=None), str(lr.path))
    if fm.denoise[1]:
        msi = WienerSource(msi, fm.noise.msi_sigma)
    return lr, msi


def run(lr: CubeSource, msi: CubeSource, cfg: FuseConfig, sink_factory: Callable[[FusePlan], Any],
        progress: Progress | None = None, notify: Callable[[str], None] | None = None) -> tuple[FusePlan, Fuser, Any]:
    """Plan, fit and stream; on CUDA out-of-memory, halve the tile and start again."""
    plan = make_plan(lr, msi, cfg, notify)
    lr, msi = denoised_sources(plan, lr, msi)
    while True:
        fuser = build_fuser(plan, cfg, lr, msi)
        if progress is not None and hasattr(fuser, "progress"):
            fuser.progress = progress  # per-scene optimisation (umsft) reports its iterations
        sink = sink_factory(plan)
        try:
            with sink:
                prep = prepare(lr, msi, fuser, plan, progress)
                mode = str(cfg.clip).lower()
                if mode not in ("auto", "off"):
                    raise UsageError(f"clip must be auto or off, got {cfg.clip!r}")
                nonneg = mode == "auto" and bool(np.all(prep.lr[:, prep.lr_valid] >= 0))
                plan.clip = {"min": 0.0 if nonneg else None, "clipped": 0}
                stream_tiles(plan, fuser, prep, msi, sink, progress)
            opts = getattr(fuser.problem, "options", None)
            if isinstance(opts, UsedOptions) and notify:
                unused = sorted(set(cfg.options) - opts.read)
                if unused:
                    notify(f"warning: option(s) {', '.join(unused)} were not used by '{plan.model.name}' (a typo, or "
                           "an option of another model?)")
            if plan.clip.get("clipped") and notify:
                n = plan.clip["clipped"]
                notify(f"{n} output values below 0 set to 0 ({n / max(1, np.prod(plan.out_shape)):.2%}; the LR-HSI "
                       "has no negative values; --clip off keeps them)")
            return plan, fuser, sink
        except BaseException as e:
            if plan.device != "cpu" and _is_cuda_oom(e) and plan.tile_lr > 1:
                import torch

                torch.cuda.empty_cache()
                cfg = FuseConfig(**{**cfg.__dict__, "tile": (plan.tile_lr // 2) * plan.scale,
                                    "estimate": plan.forward.estimate or cfg.estimate})
                if notify:
                    notify(f"GPU out of memory with {plan.tile_lr * plan.scale}-pixel tiles; retrying with {cfg.tile}")
                plan = make_plan(lr, msi, cfg)
                continue
            raise


def fuse_arrays(lr: np.ndarray, msi: np.ndarray, cfg: FuseConfig | None = None,
                lr_meta: CubeMeta | None = None, msi_meta: CubeMeta | None = None) -> np.ndarray:
    """Fuse numpy arrays (C, h, w) + (m, H, W) -> (C, H, W) float32 with the streaming engine."""
    cfg = cfg or FuseConfig()
    lr_src, msi_src = ArraySource(lr, lr_meta, "<lr>"), ArraySource(msi, msi_meta, "<msi>")
    _, _, sink = run(lr_src, msi_src, cfg, lambda plan: ArraySink(plan.out_shape))
    return sink.data


def fuse_with(fuser: Fuser, lr: np.ndarray, msi: np.ndarray, psf: Psf, tile: int, overlap: int = 0) -> np.ndarray:
    """A fuser already built, over numpy arrays, through the engine's tiling (fit, halo, mirrored borders,
    blending); no planning, estimation or clipping. Training validates its networks with it, so the numbers
    it reports come from the tiler ``hsfuse fuse`` runs."""
    s = psf.scale
    lr_src, msi_src = ArraySource(lr, None, "<lr>"), ArraySource(msi, None, "<msi>")
    tile_lr = max(1, int(tile) // s)
    half, rows, cols = tile_grid(lr.shape[1], lr.shape[2], tile_lr, overlap, s)
    plan = FusePlan(scale=s, lr_shape=lr.shape, msi_shape=msi.shape, out_shape=(lr.shape[0], *msi.shape[1:]),
                    model=None, model_reason="given", weights=None, device=fuser.device, precision=fuser.precision,
                    tile_lr=tile_lr, half_overlap_lr=half, row_spans=rows, col_spans=cols, psf=psf,
                    psf_source="given", srf=fuser.problem.srf, srf_source="given", clip={"min": None})
    sink = ArraySink(plan.out_shape)
    with sink:
        stream_tiles(plan, fuser, prepare(lr_src, msi_src, fuser, plan, None), msi_src, sink, None)
    return sink.data


@dataclass
class FuseResult:
    output: str
    plan: dict[str, Any]
    seconds: float
    megapixels_per_second: float
    model_info: dict[str, Any]
    forward: Any = None  # the hsfuse.forward.ForwardModel used (with its estimate, if any)


def fuse_files(lr_path: str | Path, msi_path: str | Path, out_path: str | Path, cfg: FuseConfig | None = None, *,
               overwrite: bool = False, out_format: str | None = None, lr_format: str | None = None,
               msi_format: str | None = None, lr_opts: dict | None = None, msi_opts: dict | None = None,
               out_dtype: str = "float32", writer_opts: dict | None = None, progress: Progress | None = None,
               notify: Callable[[str], None] | None = None) -> FuseResult:
    """Fuse two files into ``out_path`` (atomic; refuses to overwrite unless asked)."""
    from ..io import check_writable

    cfg = cfg or FuseConfig()
    check_writable(out_path, out_format, overwrite, inputs=(lr_path, msi_path))  # fail before any computation
    t0 = time.perf_counter()
    with open_cube(lr_path, lr_format, **(lr_opts or {})) as lr, open_cube(msi_path, msi_format, **(msi_opts or {})) as msi:
        def sink_factory(plan: FusePlan):
            meta, dtype = output_encoding(lr, output_meta(lr, msi, plan), out_dtype)
            return create_writer(out_path, plan.out_shape, meta, dtype, out_format, overwrite, **(writer_opts or {}))

        plan, fuser, _ = run(lr, msi, cfg, sink_factory, progress, notify)
    dt = time.perf_counter() - t0
    mp = plan.out_shape[1] * plan.out_shape[2] / 1e6
    return FuseResult(str(out_path), plan.to_dict(), dt, mp / dt if dt > 0 else float("inf"), fuser.describe(),
                      plan.forward)
