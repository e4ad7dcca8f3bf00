"""`hsfuse train`: train a fusion network on HR cubes (the LR/MSI pairs are simulated on the fly)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import options
from .common import emit_json, err, guard, show_progress


def train(
    data: Optional[List[Path]] = typer.Argument(None, help="Folders of scenes (CAVE band folders, cube files) or cube files. Default: ../shared/data/cave."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file with TrainConfig fields (top level or \\[train]); flags override it."),
    protocol: Optional[str] = typer.Option(None, help="Forward model: cave-gauss-x8, cave-mhf-x32, or custom (with --scale, --srf-file)."),
    scale: Optional[int] = typer.Option(None, help="Scale of a custom protocol."),
    psf_sigma: Optional[float] = typer.Option(None, help="Gaussian PSF sigma of a custom protocol (HR pixels; default FWHM = scale)."),
    srf_file: Optional[str] = typer.Option(None, help="SRF of a custom protocol: .npy/.csv (m x C) or .mat with R (C x m)."),
    validation_scenes: Optional[str] = typer.Option(None, "--val-scenes", help="Comma-separated held-out scene names."),
    train_scenes: Optional[str] = typer.Option(None, "--train-scenes", help="Comma-separated training scenes (default: all others)."),
    noise_snr: Optional[float] = typer.Option(None, help="Add Gaussian noise of this SNR (dB) to LR and MSI patches."),
    srf_augment: Optional[int] = typer.Option(None, help="SRF augmentation: this many random smooth perturbations of the response curves."),
    srf_augment_cameras: Optional[str] = typer.Option(None, help="SRF augmentation: comma-separated shipped curves (e.g. nikon-5100)."),
    joint_scale: Optional[int] = typer.Option(None, help="MulSR: also train at this second (smaller) scale factor, e.g. 4 for an x8 protocol."),
    spectral_augment: Optional[int] = typer.Option(None, help="Spectral augmentation: this many re-coloured copies (smooth random spectral gain) of each training scene."),
    srf_tolerance: Optional[float] = typer.Option(None, help="Record: how far (nm) an input SRF may be from the training one for `fuse` to pick the model."),
    model: Optional[str] = typer.Option(None, help="student | teacher (CSAKD) | mftn | hyfusion | mulsr | hsr-diff."),
    model_kwargs: Optional[str] = typer.Option(None, "--model-kwargs", help='Extra network constructor keywords as JSON, e.g. \'{"nf": 24}\'.'),
    val_steps: Optional[int] = typer.Option(None, help="hsr-diff: DDIM sampling steps used for validation (default 8)."),
    prior: Optional[bool] = typer.Option(None, "--prior/--no-prior", help="Refine the GSA detail-injection estimate (default on)."),
    distill: Optional[bool] = typer.Option(None, "--distill/--no-distill", help="Co-train a teacher and distil it into the student."),
    nf: Optional[int] = typer.Option(None, help="Feature width (default: scaled with the band count)."),
    heads: Optional[int] = typer.Option(None, help="Attention heads (default: width / 4 for the student, / 8 for the teacher)."),
    init_weights: Optional[str] = typer.Option(None, help="Start from these exported weights (fine-tuning; fresh optimiser)."),
    steps: Optional[int] = typer.Option(None, help="Optimiser steps."),
    batch: Optional[int] = typer.Option(None, help="Patches per step (per process)."),
    patch: Optional[int] = typer.Option(None, help="HR patch side (a multiple of the scale)."),
    patch_schedule: Optional[str] = typer.Option(None, help="Progressive patch sizes STEP:PATCH,... (e.g. 0:64,1000:96); overrides --patch."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (AdamW)."),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay."),
    warmup: Optional[int] = typer.Option(None, help="Linear warmup steps before the cosine decay."),
    clip: Optional[float] = typer.Option(None, help="Gradient-norm clipping (0: off)."),
    seed: Optional[int] = typer.Option(None, help="Random seed (weights init and patch sampling)."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N."),
    threads: Optional[int] = typer.Option(None, help="Torch CPU threads (0: default)."),
    out_dir: Optional[str] = typer.Option(None, "--out-dir", help="Run folder: checkpoint.pt, log.csv, log.json."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Steps between checkpoints."),
    val_every: Optional[int] = typer.Option(None, help="Steps between validations."),
    val_tile: Optional[int] = typer.Option(None, help="Validate in HR tiles of this side (0: whole scenes)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out-dir from its checkpoint."),
    stop_after: Optional[int] = typer.Option(None, help="Stop (with a checkpoint) after this many steps in this invocation; --resume continues."),
    time_limit: Optional[float] = typer.Option(None, help="Stop (with a checkpoint) after this many minutes in this invocation."),
    export: Optional[str] = typer.Option(None, "--export", help="Write weights/NAME.safetensors + .json after training."),
    export_always: bool = typer.Option(False, "--export-always", help="Export even if the model does not beat its GSA prior."),
    keep_best: bool = typer.Option(False, "--keep-best", help="Export the weights of the best validation (early stopping), not the last step's."),
    notes: Optional[str] = typer.Option(None, help="Free text added to the record's notes."),
    json_out: bool = options.json_flag(help="Print one JSON object with the result on stdout."),
    quiet: bool = options.quiet_flag(help="No progress bar or log lines."),
) -> None:
    """Train a fusion network (CSAKD student by default, refining the GSA estimate) and optionally export it.

    Validation scenes are held out and evaluated against the GSA prior and
    bicubic on the same scenes; by default the export is skipped unless the
    network beats GSA on validation PSNR.

    Example:

        $ hsfuse train --protocol cave-gauss-x8 --steps 2000 --out-dir runs/s-x8 --export weights/csakd-s-cave-gauss-x8

        $ hsfuse train --model hsr-diff --protocol cave-mhf-x32 --model-kwargs '{"width": 32, "depth": 2}'

        $ torchrun --nproc-per-node 2 $(which hsfuse) train --config run.toml
    """
    with guard():
        from ..train.config import TrainConfig
        from ..train.loop import train as run_train

        split = lambda s: None if s is None else tuple(x.strip() for x in s.split(",") if x.strip())
        over = dict(
            data=None if not data else tuple(str(p) for p in data), protocol=protocol, scale=scale, psf_sigma=psf_sigma,
            srf_file=srf_file, validation_scenes=split(validation_scenes), train_scenes=split(train_scenes),
            noise_snr=noise_snr, srf_augment=srf_augment, srf_augment_cameras=split(srf_augment_cameras),
            spectral_augment=spectral_augment, joint_scale=joint_scale, srf_tolerance_nm=srf_tolerance, model=model, model_kwargs=_json_dict(model_kwargs), val_steps=val_steps, prior=prior, distill=distill, nf=nf, heads=heads, init_weights=init_weights, steps=steps,
            batch=batch, patch=patch, patch_schedule=_schedule(patch_schedule), lr=lr, weight_decay=weight_decay, warmup=warmup, clip=clip, seed=seed,
            device=device, threads=threads, out_dir=out_dir, checkpoint_every=checkpoint_every, val_every=val_every,
            val_tile=val_tile, resume=resume or None, stop_after=stop_after, time_limit_min=time_limit, export=export, export_if_better=False if export_always else None,
            keep_best=keep_best or None, notes=notes,
        )
        cfg = TrainConfig.resolve(config, over)
        log = None if quiet else (lambda m: err.print(m, soft_wrap=True))
        result = run_train(cfg, progress=show_progress(quiet, json_out), log=log)
        if result.export_skipped and not quiet:
            err.print(f"hsfuse train: {result.export_skipped}", soft_wrap=True)
        if json_out:
            emit_json({"config": cfg.to_dict(), **result.to_dict()})
        elif not quiet:
            v = result.validation
            if v:
                for k in ("model", "gsa", "bicubic"):
                    if k in v:
                        m = v[k]["mean"]
                        err.print(f"{k:8s} PSNR {m['psnr']:.3f} dB  SAM {m['sam']:.3f}  ERGAS {m['ergas']:.3f}")
            for p in result.exported:
                err.print(f"wrote {p}")


def _json_dict(text: Optional[str]):
    """--model-kwargs: a JSON object, or a one-line usage error."""
    if text is None:
        return None
    import json

    from ..errors import UsageError

    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--model-kwargs is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise UsageError("--model-kwargs must be a JSON object, e.g. '{\"nf\": 24}'")
    return d


def _schedule(text: Optional[str]):
    """--patch-schedule 0:64,1000:96 -> ((0, 64), (1000, 96)), or a one-line usage error."""
    if text is None:
        return None
    from ..errors import UsageError

    try:
        return tuple((int(a), int(b)) for a, b in (item.split(":") for item in text.split(",") if item.strip()))
    except ValueError:
        raise UsageError(f"--patch-schedule must look like 0:64,1000:96, got {text!r}") from None
