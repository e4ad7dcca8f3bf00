"""The model registry: an explicit table, no import-time scanning.

Each entry says what the method is, what inputs it accepts, whether it needs
trained weights (and which files), and how to build its ``Fuser``. Builders
are ``"module:attr"`` strings imported only when the model is used, so a broken
or heavy model module never slows down or breaks ``hsfuse --help``.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError, UsageError

KINDS = ("classical", "supervised", "zero-shot")


def weights_dir() -> Path:
    """Where the trained weights are: ``$HSFUSE_WEIGHTS``, else the checkout's ``weights/`` (a source or
    editable install), else the ``hsfuse._weights`` data package a wheel installs."""
    env = os.environ.get(ENV_WEIGHTS)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2] / "weights"
    if repo.is_dir() and any(repo.glob("*.json")):
        return repo
    pkg = Path(__file__).resolve().parents[1] / "_weights"  # where a wheel puts them
    return pkg if pkg.is_dir() else repo


#: environment variable naming another weights folder (documented in docs/training.md and README)
ENV_WEIGHTS = "HSFUSE_WEIGHTS"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: str  # classical | supervised | zero-shot
    summary: str
    builder: str  # "module:attr" -> Fuser subclass
    accepts: str  # human description of acceptable inputs
    paper: str = ""
    needs_srf: bool = False  # uses the SRF (given with --srf/--protocol, else estimated)
    needs_psf: bool = False  # uses the PSF (given with --psf/--protocol, else Gaussian FWHM = scale)
    weights: tuple[str, ...] = ()  # weights stems under weights_dir()
    default_overlap: int = 0  # HR pixels of blended overlap between tiles
    aliases: tuple[str, ...] = ()
    notes: str = ""

    @property
    def needs_weights(self) -> bool:
        return self.kind == "supervised"

    def installed_weights(self) -> list[Path]:
        d = weights_dir()
        return [d / f"{w}.safetensors" for w in self.weights if (d / f"{w}.safetensors").exists() and (d / f"{w}.json").exists()]

    @property
    def available(self) -> bool:
        return not self.needs_weights or bool(self.installed_weights())

    def load_class(self) -> type:
        mod, attr = self.builder.split(":")
        return getattr(importlib.import_module(mod), attr)


_ENTRIES: list[ModelEntry] = [
    ModelEntry(
        "bicubic", "classical", "Bicubic upsampling of the LR cube (ignores the MSI): the floor every method must beat.",
        "hsfuse.models.classical:Bicubic", "any band counts, any integer scale",
    ),
    ModelEntry(
        "gsa", "classical",
        "Regression detail injection (GSA-style): each HSI band regressed on the degraded MSI bands, HR detail injected.",
        "hsfuse.models.classical:DetailInjection", "any band counts, any integer scale",
        paper="Aiazzi et al., IEEE TGRS 45(10) 2007 (GSA); Vivone et al., IEEE GRSM 2021 (HS sharpening review)",
        needs_psf=True, aliases=("detail-injection",),
    ),
    ModelEntry(
        "glp-hs", "classical", "Generalised Laplacian pyramid hypersharpening with regression-synthesised MSI and MTF-matched lowpass.",
        "hsfuse.models.classical:GLPHS", "any band counts, any integer scale",
        paper="Selva et al., IEEE JSTSP 9(6) 2015", needs_psf=True,
    ),
    ModelEntry(
        "cnmf", "classical", "Coupled non-negative matrix factorisation unmixing (endmembers from the LR, abundances from the MSI).",
        "hsfuse.models.classical:CNMF", "any band counts, any integer scale; uses the SRF (estimated if not given)",
        paper="Yokoya, Yairi, Iwasaki, IEEE TGRS 50(2) 2012", needs_srf=True, needs_psf=True,
    ),
    ModelEntry(
        "umsft", "zero-shot",
        "Zero-shot multi-level spatio-spectral fusion transformer, optimised on the scene itself at reduced "
        "resolution, correcting the gsa estimate.",
        "hsfuse.models.umsft:UMSFT",
        "any band counts (MSI bands <= LR bands), any integer scale; uses PSF and SRF (estimated if not given; "
        "best with `hsfuse estimate`)",
        paper="Cao et al., Unsupervised Multi-level Spatio-spectral Fusion Transformer for Hyperspectral Image "
              "Super-resolution", needs_srf=True, needs_psf=True,
    ),
    ModelEntry(
        "csakd-s", "supervised",
        "CSAKD student network refining the detail-injection estimate (trained on CAVE, 31 bands + Nikon D700 RGB).",
        "hsfuse.models.csakd_fuser:CSAKDFuser", "31 bands (400-700 nm) + 3-band RGB at the trained scales",
        paper="CSAKD, arXiv 2406.19666 (S3RNet describes the same network)", needs_psf=True,
        weights=("csakd-s-cave-gauss-x8", "csakd-s-cave-mhf-x32", "csakd-s-cave-gauss-x8-anyrgb"), default_overlap=32,
        aliases=("s3rnet-s",),
    ),
    # Reimplemented from their papers and trained with `hsfuse train` (docs/training.md). A model is
    # available only while its weights are installed; `fuse` prefers csakd-s (listed first) when several fit.
    ModelEntry(
        "mftn", "supervised", "MFTN: multi-scale IMatchFormer feature transfer + deformable spectral-aware aggregation.",
        "hsfuse.models.zoo_fuser:MFTNFuser", "band counts and scale of the trained weights",
        paper="Huang et al., ICML 2024 (MFTN)", needs_psf=True, weights=("mftn-cave-gauss-x8", "mftn-cave-mhf-x32"), default_overlap=32,
    ),
    ModelEntry(
        "hyfusion", "supervised", "HyFusion: enhanced-reception-field (shifted-window) transformer with a dual-coupled network.",
        "hsfuse.models.zoo_fuser:HyFusionFuser", "band counts and scale of the trained weights",
        paper="Hsu, Lee, Kang et al., HyFusion (arXiv 2501.04665)", needs_psf=True, weights=("hyfusion-cave-gauss-x8",),
        default_overlap=64,
    ),
    ModelEntry(
        "mulsr", "supervised", "MulSR: one network for two scale factors, direction-aware interaction + feedback correction.",
        "hsfuse.models.zoo_fuser:MulSRFuser", "band counts and the two scales of the trained weights",
        paper="MulSR, Multi-Scale Factor Joint Learning for HSI SR (IEEE TGRS)", needs_psf=True,
        weights=("mulsr-cave-gauss-x8", "mulsr-cave-mhf-x32"), default_overlap=32,
    ),
    ModelEntry(
        "refine", "supervised",
        "Small CNN correcting the gsa estimate, its body on a half-resolution grid: 3-4x the CPU of gsa (numpy), under 1 GiB.",
        "hsfuse.models.zoo_fuser:RefineFuser", "band counts and scale of the trained weights",
        paper="ours (docs/models/refine.md)", needs_psf=True,
        weights=("refine-cave-gauss-x8", "refine-dian-gauss-x8", "refine-cave-mhf-x32", "refine-cave-gauss-x4"), default_overlap=16,
    ),
    ModelEntry(
        "hsr-diff", "supervised",
        "HSR-Diff conditional diffusion (CDFormer denoiser); few-step DDIM (default 8) or 100-step ancestral sampling.",
        "hsfuse.models.hsrdiff:HSRDiffFuser", "the trained band counts and scale (planned: 31 bands + RGB, x32)",
        paper="Wu et al., HSR-Diff, ICCV 2023 (arXiv 2306.12085)", weights=("hsr-diff-cave-mhf-x32",),
        default_overlap=32, aliases=("hsrdiff",),
    ),
]

REGISTRY: dict[str, ModelEntry] = {e.name: e for e in _ENTRIES}
_ALIASES: dict[str, str] = {a: e.name for e in _ENTRIES for a in e.aliases}


def list_models(include_unavailable: bool = True) -> list[ModelEntry]:
    return [e for e in _ENTRIES if include_unavailable or e.available]


def classical_fusers() -> dict[str, type]:
    """name -> Fuser class of every classical entry (benchmarks and tests loop over them)."""
    return {e.name: e.load_class() for e in _ENTRIES if e.kind == "classical"}


def get_model(name: str) -> ModelEntry:
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in REGISTRY:
        raise UsageError(f"unknown model '{name}' (valid: {', '.join(REGISTRY)})")
    return REGISTRY[key]


def describe_entry(e: ModelEntry) -> dict[str, Any]:
    """The JSON form of an entry for `hsfuse models --json`."""
    from ..weights import read_record

    installed = []
    for p in e.installed_weights():
        try:
            rec = read_record(p)
        except ModelError as err:
            installed.append({"file": p.name, "error": err.oneline()})
            continue
        installed.append({
            "file": p.name, "scales": rec.scales, "protocol": rec.protocol, "bands": rec.bands,
            "msi_bands": rec.msi_bands, "steps": rec.get("steps"), "validation_metrics": rec.get("validation_metrics"),
            "cpu_cost_vs_gsa": rec.cpu_cost_ratios,
        })
    return {
        "name": e.name, "kind": e.kind, "summary": e.summary, "accepts": e.accepts, "paper": e.paper,
        "needs_weights": e.needs_weights, "weights": list(e.weights), "installed": installed,
        "available": e.available, "aliases": list(e.aliases), "needs_srf": e.needs_srf, "needs_psf": e.needs_psf,
    }
