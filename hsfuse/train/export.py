"""Export a trained network as ``weights/NAME.safetensors`` + ``NAME.json`` (the full training record).

    $ hsfuse train --protocol cave-gauss-x8 --steps 2000 --export weights/csakd-s-cave-gauss-x8
    $ hsfuse train --model mftn --protocol cave-gauss-x8 --export weights/mftn-cave-gauss-x8

The record (hsfuse/weights.py) carries what ``fuse`` checks (bands, wavelengths,
MSI bands, SRF, scales, protocol) and what a user needs to judge the weights
(training scenes, held-out validation scenes and metrics *with the GSA and
bicubic baselines on the same scenes*, steps, device, CPU/GPU seconds, notes).
By default nothing is exported when the network does not beat its GSA prior on
validation PSNR: shipping a model that is worse than the classical method it
refines would mislead users.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..forward.srf import srf_summary

from .config import TrainConfig


def build_record(cfg: TrainConfig, net, fm, result, train_scenes: Sequence, val_scenes: Sequence, name: str) -> dict[str, Any]:
    from .objectives import record_kwargs, spec

    model = spec(cfg.model)
    kw = record_kwargs(cfg.model, net)
    bands = int(kw["bands"])
    wl = fm.wavelengths if fm.wavelengths is not None and len(fm.wavelengths) == bands else None
    if wl is None and bands == 31:
        wl = np.arange(400, 701, 10, dtype=np.float64)
    gpu = str(result.device).startswith("cuda")
    val = result.validation or {}
    budget = (f"{result.steps} steps of batch {cfg.batch} x {cfg.patch}x{cfg.patch} HR patches on "
              f"{'GPU' if gpu else 'CPU'} ({result.world} process(es), {os.cpu_count()} cores visible), "
              f"{result.wall_seconds / 60:.1f} min wall-clock")
    notes = [
        f"Training budget: {budget}. A small budget, far below the paper's (hundreds of GPU epochs); "
        "the network is a learned residual on top of the GSA detail-injection estimate (prior=True) "
        "so that it cannot stray far from it on unseen spectra." if cfg.prior else f"Training budget: {budget}.",
        "Validation scenes were never trained on; metrics are on whole 512x512 scenes, no border crop.",
    ]
    if cfg.distill:
        notes.append("Trained with online knowledge distillation from a co-trained teacher (same step).")
    if cfg.model == "hsr-diff":
        notes.append(f"Validation metrics are deterministic DDIM sampling with {cfg.val_steps} steps (seed {cfg.seed}).")
    if cfg.init_weights:
        notes.append(f"Fine-tuned from {Path(cfg.init_weights).name} (see previous_training); the steps and seconds "
                     "above are this fine-tuning run only.")
    if val.get("selected_step") is not None:
        notes.append(f"Weights of step {val['selected_step']} of {result.steps}: the validation with the best PSNR "
                     "(keep_best, early stopping on the validation scenes); validation_metrics are that step's.")
    if cfg.notes:
        notes.append(cfg.notes)
    previous = None
    if cfg.init_weights:
        from ..weights import read_record

        prev = read_record(cfg.init_weights)
        previous = {k: prev.get(k) for k in ("name", "steps", "device", "cpu_seconds", "gpu_seconds", "wall_seconds",
                                             "protocol", "created", "git_commit", "sha256")}
        previous["validation_metrics_mean"] = {k: v.get("mean") for k, v in (prev.get("validation_metrics") or {}).items()
                                               if isinstance(v, dict) and "mean" in v}
        previous["previous_training"] = prev.get("previous_training")  # the whole chain, nested
    extra: dict[str, Any] = {}
    if cfg.model == "hsr-diff":
        from ..models.diffusion import NoiseSchedule

        extra = {"diffusion": NoiseSchedule().to_dict(), "validation_sampler": {"sampler": "ddim", "steps": cfg.val_steps,
                                                                              "seed": cfg.seed}}
    return {
        "name": name,
        "architecture": model.name,
        "registry_model": model.registry,
        "kwargs": kw,
        "paper": model.paper,
        "bands": bands,
        "wavelengths": None if wl is None else [float(x) for x in wl],
        "msi_bands": int(kw["msi_bands"]),
        # the SRF itself may be third-party data (the MHF-Net R): record what identifies and
        # describes it, not the matrix
        "srf": None,
        "srf_summary": srf_summary(fm.srf, wl),
        "srf_name": fm.srf_source,
        "scales": sorted({int(fm.scale)} | ({int(cfg.joint_scale)} if getattr(cfg, "joint_scale", 0) else set())),
        "protocol": fm.name,
        "psf": {"name": fm.psf.name, "kernel_size": int(fm.psf.size), "scale": int(fm.psf.scale), "pad": int(fm.psf.pad)},
        "prior": "gsa (regression detail injection, fitted per scene)" if cfg.prior else None,
        # trained through the exact LR projection: fuse must apply it (models/consistency.py)
        "lr_consistency": "project" if getattr(cfg, "lr_projection", False) else None,
        "value_range": [0.0, 1.0],
        "training_data": {"dataset": "CAVE (Yasuma et al., 2010)" if "cave" in fm.name else "user data",
                          "scenes": [s.name for s in train_scenes], "patch": cfg.patch, "batch": cfg.batch,
                          "augment": "scale-aligned random crops, flips, 90-degree rotations",
                          "noise_snr_db": cfg.noise_snr or None,
                          "srf_augmentation": ({"cameras": list(cfg.srf_augment_cameras), "random_perturbations": cfg.srf_augment,
                                                "how": "hsfuse.train.data.srf_variants (each scene's MSI and GSA prior "
                                                       "recomputed per curve; one drawn per patch)"}
                                               if cfg.srf_augment or cfg.srf_augment_cameras else None),
                          "spectral_augmentation": ({"copies_per_scene": int(cfg.spectral_augment),
                                                     "how": "hsfuse.train.data.spectral_variants (HR spectra times a smooth "
                                                            "random gain; LR, MSI and GSA prior made again)"}
                                                    if getattr(cfg, "spectral_augment", 0) else None),
                          "joint_scale": ({"scale": int(cfg.joint_scale), "psf": _joint_psf_name(fm, cfg.joint_scale),
                                           "how": "every step one batch at each scale, same HR patches' scenes; "
                                                  "the PSF binned to the smaller footprint (Psf.rescaled)"}
                                          if getattr(cfg, "joint_scale", 0) else None)},
        "srf_tolerance_nm": float(cfg.srf_tolerance_nm),
        "validation_scenes": [s.name for s in val_scenes],
        "steps": int(result.steps),
        "device": str(result.device) + (f" x{result.world}" if result.world > 1 else ""),
        "host": platform.machine(),
        "gpu_seconds" if gpu else "cpu_seconds": round(float(result.cpu_seconds if not gpu else result.wall_seconds), 1),
        "wall_seconds": round(float(result.wall_seconds), 1),
        "validation_metrics": val,
        "previous_training": previous,
        "training_config": cfg.to_dict(),
        "loss_weights": cfg.weights,
        "notes": " ".join(notes),
        **extra,
    }


def _joint_psf_name(fm, scale: int) -> str:
    from .data import at_scale

    return at_scale(fm, int(scale)).psf.name


def export_run(cfg: TrainConfig, net, fm, result, train_scenes: Sequence, val_scenes: Sequence,
               stem: str | Path | None = None) -> tuple[list[str], str | None]:
    """Write the weights unless the model loses to its GSA prior (``export_if_better``); returns (paths, reason skipped)."""
    from ..weights import save_weights

    stem = Path(stem or cfg.export)
    val = result.validation or {}
    why = None
    if cfg.export_if_better and "gsa" in val and "model" in val:
        m, g = val["model"]["mean"]["psnr"], val["gsa"]["mean"]["psnr"]
        if not m > g:
            # kept in the run folder (never in weights/) so the benchmark can still report the model
            why = f"not exported: validation PSNR {m:.3f} dB does not beat the GSA prior ({g:.3f} dB)"
            stem = Path(cfg.out_dir) / f"candidate-{stem.name}"
    rec = build_record(cfg, net, fm, result, train_scenes, val_scenes, stem.name)
    if why:
        rec["notes"] += " NOT SHIPPED: " + why + "."
    state = {k: v.detach().float().cpu() for k, v in net.state_dict().items()}
    paths = save_weights(stem, state, rec)
    if why:
        return [], f"{why}; saved as {stem} for benchmarking"
    return [str(p) for p in paths], None

