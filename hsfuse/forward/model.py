"""The forward model of one pair, resolved once: from a preset, flags, a file, or the pair itself.

    LR = decimate_s(Z ⊛ PSF)        MSI = diag(gain) · SRF · Z

``ForwardModel`` is what the engine, every fuser and the model choice read.
``resolve_forward_model`` builds it from the user's options; whatever is not
given (PSF, SRF or both) is estimated from the pair with ``estimate_pair``.

Why estimate by default, and how: ``estimate.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError, UsageError
from .estimate import (
    RESIDUAL_FAIL,
    RESIDUAL_NOISY,
    PairEstimate,
    estimate_from_sources,
    noise_from_sources,
    preset_forward_models,
)
from .psf import Psf, describe_psf, psf_distance

__all__ = ["ForwardModel", "resolve_forward_model"]


@dataclass
class ForwardModel:
    """PSF and SRF of a pair, where each came from, and whether they are the true model (``exact``).

    ``exact``: the PSF is the forward model itself (a preset, a ``Psf`` the caller built, or a preset the
    estimate recognised), not a guess: steps that only pay with the exact PSF (LR consistency) use it.
    ``protocol``: the preset whose PSF *and* SRF the pair follows (named, or recognised by the estimate);
    the pretrained-network choice treats it as if it had been named.
    """

    psf: Psf
    psf_source: str
    srf: np.ndarray | None
    srf_source: str
    exact: bool = False
    protocol: str | None = None
    estimate: "PairEstimate | None" = None
    noise: Any = None  # hsfuse.denoise.NoiseEstimate, when estimated
    denoise: tuple[bool, bool] = (False, False)  # (LR-HSI, MSI) are denoised before fusion
    wavelengths: np.ndarray | None = None  # band centres (nm) the SRF columns belong to, when known

    @property
    def scale(self) -> int:
        return self.psf.scale

    @property
    def psf_preset(self) -> str | None:
        """The preset whose PSF the pair follows (named, or recognised by the estimate), whatever its SRF."""
        if self.protocol:
            return self.protocol
        est = self.estimate
        if est is not None and est.preset is not None and str(est.psf_kind) == f"preset {est.preset}" \
                and self.psf is est.psf:
            return est.preset
        return None

    @property
    def name(self) -> str:
        """The preset's name, else where the PSF came from (what a weights record calls its protocol)."""
        return self.protocol or self.psf_source

    def describe(self) -> dict[str, Any]:
        return {
            "psf": {**describe_psf(self.psf), "source": self.psf_source},
            "srf": {"source": self.srf_source, "shape": None if self.srf is None else list(self.srf.shape)},
            "exact": self.exact, "protocol": self.protocol,
            "estimate": None if self.estimate is None else self.estimate.describe(),
            "noise": None if self.noise is None else self.noise.describe(),
            "denoise": {"lr": bool(self.denoise[0]), "msi": bool(self.denoise[1])},
        }


def _json_doc(spec: str) -> dict:
    from .blind import _read_json

    path = spec.rsplit(":", 1)[0] if spec.lower().endswith((":gaussian", ":kernel")) else spec
    try:
        return _read_json(path)
    except InputError:
        return {}


def _json_preset(spec: str, psf: Psf | None, scale: int) -> str | None:
    """The preset a saved estimate recognised, when the PSF read back from it is still exactly that preset."""
    name = ((_json_doc(spec).get("estimate") or {}).get("preset")) if psf is not None else None
    if not name:
        return None
    for n, p, _ in preset_forward_models(scale, 0, 0):
        if n == name and psf_distance(psf, p) < 1e-9:
            return name
    return None


def _json_srf_kind(spec: str) -> str | None:
    return (_json_doc(spec).get("estimate") or {}).get("srf_kind")


def _is_json_spec(spec: str) -> bool:
    """An estimate written by `hsfuse estimate` or `fuse --save-estimate`: FILE.json[:gaussian|:kernel]."""
    return spec.lower().endswith(".json") or ".json:" in spec.lower()


def resolve_forward_model(cfg, scale: int, lr_src, msi_src, notify=None) -> ForwardModel:
    """The pair's ``ForwardModel`` from ``cfg`` (a ``FuseConfig``): preset < --psf/--srf < estimate of the rest.

    ``cfg.estimate``: ``"auto"`` estimates whatever is not given from the pair; ``"off"`` keeps the old
    assumptions (Gaussian PSF with FWHM = scale, SRF fitted by the method); a ``PairEstimate`` is reused
    as it is (one estimate for a batch of pairs from the same two sensors).
    """
    psf = srf = None
    psf_source, srf_source = "", "not given"
    exact, protocol, json_preset = False, None, None
    windows: dict = {}  # the central window, read once for the estimate and the noise
    if cfg.protocol:
        from .protocols import get_protocol

        proto = get_protocol(cfg.protocol)
        if proto.scale is not None and proto.scale != scale:
            raise InputError(f"protocol '{cfg.protocol}' is for x{proto.scale} but the inputs are x{scale}", msi_src.path)
        psf, srf = proto.build(scale=scale)
        psf_source, exact, protocol = f"protocol {proto.name}", True, proto.name
        if srf is not None:
            srf_source = f"protocol {proto.name}"
    if isinstance(cfg.psf, Psf):
        psf, psf_source, exact = cfg.psf, "given", True
    elif isinstance(cfg.psf, str) and _is_json_spec(cfg.psf):
        from .blind import psf_from_json

        psf, psf_source, exact = psf_from_json(cfg.psf, scale), f"--psf {cfg.psf}", False
        json_preset = _json_preset(cfg.psf, psf, scale)  # read once: the SRF below may come from the same file
        if json_preset is not None:  # a saved estimate that had recognised a preset: exact, as it was then
            exact = True
            psf_source += f" (preset {json_preset})"
    elif isinstance(cfg.psf, str):
        from .psf import make_psf

        psf, psf_source, exact = make_psf(cfg.psf, scale, sigma=cfg.sigma, form=cfg.psf_form), f"--psf {cfg.psf}", False
    if cfg.psf is not None:
        protocol = None  # the PSF is no longer the preset's
    if psf is not None and psf.scale != scale:
        raise UsageError(f"the PSF is for scale {psf.scale} but the inputs are x{scale}")
    if isinstance(cfg.srf, str) and _is_json_spec(cfg.srf):
        from .blind import srf_from_json

        srf, srf_source = srf_from_json(cfg.srf), f"--srf {cfg.srf} (estimated, gain applied)"
        if json_preset is not None and _json_srf_kind(cfg.srf) == f"preset {json_preset}":
            protocol = json_preset  # both from a saved estimate that followed a preset
    elif isinstance(cfg.srf, str):
        from .srf import load_srf

        srf, srf_source = load_srf(cfg.srf, lr_src.meta.wavelengths, lr_src.bands).matrix, f"--srf {cfg.srf}"
    elif cfg.srf is not None:
        srf, srf_source = cfg.srf, "given"
    if cfg.srf is not None and cfg.protocol:
        protocol = None
    if srf is not None:
        srf = np.asarray(srf, dtype=np.float64)
        if srf.shape != (msi_src.bands, lr_src.bands):
            raise InputError(f"SRF has shape {srf.shape}, expected (MSI bands, LR bands) = ({msi_src.bands}, "
                             f"{lr_src.bands})", msi_src.path)
    est = None
    mode = cfg.estimate
    estimable = msi_src.bands <= lr_src.bands  # more MSI than LR bands: swapped inputs, the model says so
    if (psf is None or srf is None) and estimable and not (isinstance(mode, str) and mode == "off"):
        if isinstance(mode, PairEstimate):
            est = mode
            if est.psf.scale != scale or est.srf.shape != (msi_src.bands, lr_src.bands):
                raise InputError(f"the reused estimate is for x{est.psf.scale} and SRF {est.srf.shape}; this pair is "
                                 f"x{scale} with ({msi_src.bands}, {lr_src.bands})", msi_src.path)
        elif isinstance(mode, str) and mode == "auto":
            try:
                est = estimate_from_sources(lr_src, msi_src, scale, psf=psf, srf=srf, cache=windows)
            except InputError as e:
                if "too few valid LR pixels" not in e.message:
                    raise
                est = None  # a tiny pair: nothing to estimate from; the old assumptions, said aloud
                if notify:
                    notify(f"warning: {e.message}; assuming a Gaussian PSF with FWHM = scale (give --psf/--srf)")
        else:
            raise UsageError(f"estimate must be auto or off, got {mode!r}")
    if est is not None:
        if est.residual > RESIDUAL_FAIL and not cfg.force:
            raise InputError(f"the MSI does not match the LR cube (relative residual {est.residual:.2f} of the "
                             "forward-model fit, > " f"{RESIDUAL_FAIL:g}): another scene or date, grossly misregistered "
                             "grids, or swapped files; give {psf} and {srf} (or {protocol}) and {force} to fuse anyway",
                             msi_src.path, options=("psf", "srf", "protocol", "force"))
        if notify:
            notify(est.summary())
            for wmsg in est.warnings:
                notify(f"warning: {wmsg}")
        if psf is None:
            psf = est.psf
            exact = est.preset is not None
            psf_source = f"estimated from the pair ({est.psf_kind}, residual {est.residual:.2g})"
        if srf is None:
            srf = np.asarray(est.srf, dtype=np.float64)
            srf_source = f"estimated from the pair ({est.srf_kind})"
            if est.preset is not None and est.srf_kind == f"preset {est.preset}" and est.psf_kind == est.srf_kind:
                protocol = est.preset  # the pair follows this preset: as if --protocol had been given
    if psf is None:
        psf, psf_source = Psf.gaussian(scale), "assumed: Gaussian with FWHM = scale (not estimated)"
    noise, denoise = None, (False, False)
    dmode = str(getattr(cfg, "denoise", "auto")).lower()
    if dmode not in ("auto", "on", "off"):
        raise UsageError(f"denoise must be auto, on or off, got {dmode!r}")
    if dmode != "off":
        noise = noise_from_sources(lr_src, msi_src, scale, cache=windows)
        denoise = (True, True) if dmode == "on" else noise.noisy()
        if dmode == "auto" and any(denoise):
            # noise of the *observations* makes the two inputs disagree through the forward model; "noise"
            # that both inputs share (fine texture, or a simulated pair whose reference is itself noisy) does
            # not, and filtering it would remove scene content: then nothing is denoised
            res = est.residual if est is not None else _model_residual(lr_src, msi_src, scale, psf, srf)
            if res is not None and res < RESIDUAL_NOISY:
                denoise = (False, False)
                if notify:
                    notify(f"the inputs look noisy (estimated SNR: LR {noise.lr_snr_db:.0f} dB, MSI "
                           f"{noise.msi_snr_db:.0f} dB) but agree with each other to {res:.2g}: that is scene "
                           "content, not observation noise; not denoised (--denoise on forces it)")
        if notify and any(denoise):
            what = " and ".join(n for n, d in zip(("LR-HSI", "MSI"), denoise) if d)
            notify(f"noisy inputs (estimated SNR: LR {noise.lr_snr_db:.0f} dB, MSI {noise.msi_snr_db:.0f} dB): "
                   f"denoising the {what} first (--denoise off skips it)")
    return ForwardModel(psf=psf, psf_source=psf_source, srf=srf, srf_source=srf_source, exact=exact,
                        protocol=protocol, estimate=est, noise=noise, denoise=denoise)


def _model_residual(lr_src, msi_src, scale: int, psf: Psf | None, srf: np.ndarray | None) -> float | None:
    """The forward-model residual of a pair under a given PSF and SRF (None when either is unknown)."""
    if psf is None or srf is None:
        return None
    try:
        return estimate_from_sources(lr_src, msi_src, scale, psf=psf, srf=srf).residual
    except (InputError, UsageError):
        return None
