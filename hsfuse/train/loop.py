"""The training loop: AdamW + warmup/cosine, checkpoints with exact resume, validation, online KD, DDP.

>>> from hsfuse.train import TrainConfig, train
>>> result = train(TrainConfig(steps=2000, out_dir="runs/s-x8", export="weights/csakd-s-cave-gauss-x8"))

Multi-GPU (or multi-process CPU with gloo): ``torchrun --nproc-per-node 2 -m hsfuse.train.loop run.toml``
or ``torchrun ... $(which hsfuse) train --config run.toml``; each rank draws its own
patches (seed + 1000*rank), DistributedDataParallel averages the gradients, rank 0
validates, writes logs, checkpoints and exports.

Losses (docs/models/csakd.md): the trained network gets
``l1*L1(Z, GT) + beba*BEBA(Z, GT) + sam*SAM(Z, GT)``; with ``distill`` the
student also gets ``kd*L1(Z_s, Z_t) + feat*MSE(A(F_s), F_t)`` (teacher outputs
detached, A a 1x1 adapter), and the teacher is trained with the same GT terms
in the same step (online distillation).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError, UsageError
from .config import TrainConfig
from .losses import gt_losses

# ----------------------------------------------------------------------------- metrics


def quick_metrics(ref: np.ndarray, est: np.ndarray, scale: int) -> dict[str, float]:
    """PSNR / SAM / ERGAS of a whole scene (``hsfuse.metrics.compute_metrics`` when present).

    Fallback conventions: data range 1 (reflectance), PSNR = mean of per-band
    PSNRs, SAM in degrees averaged over pixels with non-zero reference and
    estimate, ERGAS = 100/scale * sqrt(mean_c RMSE_c^2 / mean_c^2), no border crop, no clipping
    (the same conventions as hsfuse.metrics).
    """
    try:
        from ..metrics import compute_metrics
    except ImportError:
        compute_metrics = None
    if compute_metrics is not None:
        rep = compute_metrics(ref, est, scale=scale, peak=1.0, ssim=False, uiqi=False, maps=False)
        return {k: float(rep.summary[k]) for k in ("psnr", "sam", "ergas")}
    ref = ref.astype(np.float64)
    est = est.astype(np.float64)
    mse = ((ref - est) ** 2).reshape(ref.shape[0], -1).mean(1)
    psnr = float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-12))))
    dot = (ref * est).sum(0)
    nr, ne = np.linalg.norm(ref, axis=0), np.linalg.norm(est, axis=0)
    ok = (nr > 0) & (ne > 0)
    sam = float(np.degrees(np.arccos(np.clip(dot[ok] / (nr[ok] * ne[ok]), -1, 1))).mean()) if ok.any() else float("nan")
    mu = ref.reshape(ref.shape[0], -1).mean(1)
    ergas = float(100.0 / scale * np.sqrt(np.mean(mse / np.maximum(mu, 1e-12) ** 2)))
    return {"psnr": psnr, "sam": sam, "ergas": ergas}


# ----------------------------------------------------------------------------- model bundle


def build_models(cfg: TrainConfig, bands: int, msi_bands: int, scale: int = 0):
    """(trained network, teacher or None, adapter or None) for ``cfg`` (``cfg.model``: see ``hsfuse.models.architectures``)."""
    from torch import nn

    from .objectives import build_net

    over = dict(cfg.model_kwargs)
    if cfg.model in ("student", "teacher"):
        over = {"nf": cfg.nf or None, "heads": cfg.heads or None, "attn_window": cfg.attn_window, **over}
    elif cfg.nf:
        over.setdefault("width" if cfg.model == "hsr-diff" else "nf", cfg.nf)
    net = build_net(cfg.model, bands, msi_bands, scale, cfg.prior, over)
    teacher = adapter = None
    if cfg.distill:
        teacher = build_net("teacher", bands, msi_bands, scale, cfg.prior, {"attn_window": cfg.attn_window})
        adapter = nn.Conv2d(net.nf, teacher.nf, 1)
    return net, teacher, adapter


def _bundle_cls():
    import torch.nn.functional as F
    from torch import nn

    class Bundle(nn.Module):
        """Everything trained in one step, losses included, so DistributedDataParallel sees one forward."""

        def __init__(self, net, loss_fn, weights, teacher=None, adapter=None):
            super().__init__()
            self.net, self.teacher, self.adapter = net, teacher, adapter
            self.loss_fn, self.w = loss_fn, dict(weights)

        def forward(self, lr, msi, prior, hr, *joint) -> dict:
            """``joint`` = (lr, msi, prior, hr) of a batch at the second scale factor (joint_scale), if any."""
            if self.teacher is None:
                parts = self.loss_fn(self.net, lr, msi, prior, hr)[1]
                if joint:
                    parts.update({f"joint_{k}": v for k, v in self.loss_fn(self.net, *joint)[1].items()})
                return parts
            out_s, f_s = self.net(lr, msi, prior, return_features=True)
            out_t, f_t = self.teacher(lr, msi, prior, return_features=True)
            out_s, out_t = out_s.float(), out_t.float()
            parts = gt_losses(out_s, hr, self.w)
            parts["kd"] = self.w["kd"] * F.l1_loss(out_s, out_t.detach())
            parts["feat"] = self.w["feat"] * F.mse_loss(self.adapter(f_s).float(), f_t.detach().float())
            parts["teacher"] = sum(gt_losses(out_t, hr, self.w).values())
            return parts

    return Bundle


# ----------------------------------------------------------------------------- helpers


def resolve_device(name: str) -> str:
    """The engine's rule (one home): auto | cpu | cuda[:N]."""
    from ..fusion.engine import resolve_device as engine_resolve

    return engine_resolve(name)


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warmup to 1, then cosine decay to ``min_lr_ratio`` at ``steps``."""

    def f(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> DistInfo:
    """Join the process group torchrun (or a spawner) described in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    here = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", rank=rank, world_size=world)
        here = True
    return DistInfo(rank, world, local, here)


def load_checkpoint(path: Path, device: str = "cpu") -> dict:
    """A training checkpoint, loaded without executing anything (``weights_only``: tensors and plain types).

    A crafted pickle in a run folder must not run its payload on ``--resume``; torch's restricted
    unpickler refuses any global it does not know, which we turn into a one-line error.
    """
    import pickle

    import torch

    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"not a loadable hsfuse checkpoint (refused to unpickle anything but tensors and plain "
                         f"types): {first}", path) from None
    if not isinstance(ck, dict) or "model" not in ck:
        raise InputError("not an hsfuse training checkpoint (no model state)", path)
    return ck


def _atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def predict_scene(net, lr: np.ndarray, msi: np.ndarray, prior: np.ndarray | None, device: str,
                  tile: int = 0, fm=None) -> np.ndarray:
    """The network's estimate of a whole scene; with ``tile`` > 0 through the engine's tiler (``fusion.engine.fuse_with``:
    halo, mirrored borders, the GSA prior fitted on the whole scene, as ``hsfuse fuse`` runs it, without LR
    consistency so that tiled and whole-scene numbers compare) on the forward model ``fm``."""
    import torch

    if tile > 0:
        from ..fusion.base import FusionProblem
        from ..fusion.engine import fuse_with
        from ..models.zoo_fuser import NetworkFuser

        problem = FusionProblem(scale=fm.scale, lr_bands=lr.shape[0], msi_bands=msi.shape[0], psf=fm.psf, srf=fm.srf,
                                options={"lr_consistency": "off"})
        make = getattr(net, "tiled_fuser", None)  # HSR-Diff: its sampler's fuser
        fuser = make(problem, device) if make is not None else NetworkFuser(problem, device, network=net)
        return fuse_with(fuser, lr, msi, fm.psf, tile)
    net.eval()
    with torch.no_grad():
        t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))[None].to(device)  # noqa: E731
        with _autocast(device):
            out = net(t(lr), t(msi), t(prior))
        return out[0].float().cpu().numpy()


def _autocast(device: str, precision: str = "bf16"):
    from ..models.common import autocast

    return autocast(device, precision)


# ----------------------------------------------------------------------------- the run


@dataclass
class TrainResult:
    steps: int
    out_dir: str
    wall_seconds: float
    cpu_seconds: float
    device: str
    world: int
    final_loss: float
    loss_history: list[float] = field(default_factory=list)
    validation: dict[str, Any] = field(default_factory=dict)  # {"model": {...}, "gsa": {...}, "bicubic": {...}}
    exported: list[str] = field(default_factory=list)
    export_skipped: str | None = None
    checkpoint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        import dataclasses

        d = dataclasses.asdict(self)
        d["loss_history"] = d["loss_history"][-20:]
        return d


def evaluate_scenes(net, scenes, fm, device: str, tile: int = 0, baselines: dict | None = None) -> dict[str, Any]:
    """Per-scene and mean metrics of the model (and GSA prior / bicubic baselines if not cached) on the forward model
    ``fm`` the scenes were simulated with."""
    from .data import bicubic

    scale = fm.scale
    per: dict[str, dict[str, dict[str, float]]] = {"model": {}, "gsa": {}, "bicubic": {}}
    for sc in scenes:
        est = predict_scene(net, sc.lr, sc.msi, sc.prior, device, tile, fm)
        per["model"][sc.name] = quick_metrics(sc.hr, est, scale)
        if baselines is None:
            if sc.prior is not None:
                per["gsa"][sc.name] = quick_metrics(sc.hr, sc.prior, scale)
            per["bicubic"][sc.name] = quick_metrics(sc.hr, bicubic(sc.lr, scale), scale)
    if baselines is not None:
        per["gsa"], per["bicubic"] = baselines["gsa"]["scenes"], baselines["bicubic"]["scenes"]
    out = {}
    for method, scenes_m in per.items():
        if not scenes_m:
            continue
        mean = {k: float(np.mean([m[k] for m in scenes_m.values()])) for k in ("psnr", "sam", "ergas")}
        out[method] = {"mean": mean, "scenes": scenes_m}
    out["conventions"] = "PSNR dB (data range 1, mean of per-band PSNR), SAM degrees, ERGAS 100/scale; whole 512x512 scenes, no crop"
    return out


class TrainingRun:
    """One run's state, in the order ``train`` drives it: ``load_data`` → ``build`` → ``resume`` →
    ``open_log`` → ``step`` (× steps, with ``validate`` / ``save_checkpoint`` on their schedules) → ``finish``.

    The per-architecture parts (the loss, the predictor used for validation, which networks exist) are the
    hooks of ``objectives.py`` (``make_loss``, ``predictor``) and ``build_models``; this class holds what
    every run has: data, optimiser, schedule, checkpoints, validation, early stopping, export.
    """

    def __init__(self, cfg: TrainConfig, log: Callable[[str], None] | None = None):
        import torch

        self.cfg = cfg
        self.t0_wall, self.t0_cpu = time.time(), time.process_time()
        self.elapsed_prev = (0.0, 0.0)
        self.device = resolve_device(cfg.device)
        self.dist = setup_distributed(self.device)
        if self.device.startswith("cuda") and self.dist.world > 1:
            self.device = f"cuda:{self.dist.local_rank}"
            torch.cuda.set_device(self.device)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.say = log or (lambda m: None)
        self.out_dir = Path(cfg.out_dir)
        if self.dist.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_path = self.out_dir / "checkpoint.pt"
        self.best_path = self.out_dir / "best.pt"
        self.csv_path = self.out_dir / "log.csv"
        self.step_no, self.history, self.losses = 0, [], []
        self.baselines = None
        self._last_val: list = [None, {}]  # (step, result)

    # ---- setup
    def load_data(self, scenes: Sequence | None = None, val_scenes: Sequence | None = None, fm=None) -> None:
        """Scenes of the split (or the caller's), their augmented copies, and the patch samplers."""
        from .data import PatchSampler, find_scenes, forward_model, load_scenes, split_scenes

        cfg, say, rank = self.cfg, self.say, self.dist.rank
        if fm is None:
            fm = forward_model(cfg.protocol, cfg.scale, cfg.psf_sigma, cfg.srf_file)
        if scenes is None:
            found = find_scenes(cfg.data)
            tr_names, val_names = split_scenes(found, cfg.validation_scenes, cfg.train_scenes)
            say(f"loading {len(tr_names)} training + {len(val_names)} validation scenes ({fm.name})")
            scenes = load_scenes(found, tr_names, fm, cfg.prior)
            val_scenes = load_scenes(found, val_names, fm, cfg.prior) if self.dist.main else []
        self.recorded_scenes = list(scenes)  # the record names the real scenes, not their augmented copies
        if cfg.spectral_augment:
            from .data import spectral_variants

            extra = spectral_variants(scenes, fm, cfg.spectral_augment, cfg.seed, cfg.prior)
            say(f"spectral augmentation: {len(extra)} re-coloured copies of the {len(scenes)} training scenes")
            scenes = list(scenes) + extra
        if cfg.srf_augment or cfg.srf_augment_cameras:
            from .data import add_srf_variants, srf_variants

            srfs = srf_variants(fm, scenes[0].hr.shape[0], cfg.srf_augment_cameras, cfg.srf_augment, cfg.seed)
            say(f"SRF augmentation: {len(srfs)} extra response curves ({', '.join(n for n, _ in srfs)})")
            add_srf_variants(scenes, fm, srfs, cfg.prior)
        self.fm, self.scenes, self.val_scenes = fm, scenes, list(val_scenes or [])
        self.bands, self.msi_bands = scenes[0].hr.shape[0], scenes[0].msi.shape[0]
        self.sampler = PatchSampler(scenes, fm.scale, cfg.patch, cfg.batch, cfg.seed + 1000 * rank, cfg.noise_snr)
        self.sampler_joint, self.val_joint, self.fm_joint = None, [], None
        if cfg.joint_scale:
            from .data import at_scale, rescaled_scenes

            self.fm_joint = at_scale(fm, cfg.joint_scale)
            say(f"joint training at x{cfg.joint_scale} too ({self.fm_joint.psf.name})")
            self.sampler_joint = PatchSampler(rescaled_scenes(scenes, self.fm_joint, cfg.prior), cfg.joint_scale,
                                              cfg.patch, cfg.batch, cfg.seed + 500 + 1000 * rank, cfg.noise_snr)
            self.val_joint = rescaled_scenes(self.val_scenes, self.fm_joint, cfg.prior)

    def build(self) -> None:
        """Networks (the architecture's hook), initial weights, loss bundle, predictor, optimiser and schedule."""
        import torch

        from .objectives import make_loss, predictor

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        net, teacher, adapter = build_models(cfg, self.bands, self.msi_bands, self.fm.scale)
        if cfg.joint_scale and cfg.joint_scale not in tuple(getattr(net, "scales", ())):
            raise UsageError(f"joint_scale x{cfg.joint_scale}: this network serves {tuple(getattr(net, 'scales', ()))}")
        if cfg.init_weights:
            from ..errors import ModelError
            from ..weights import load_weights

            state, rec = load_weights(cfg.init_weights)
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise ModelError(f"{{init_weights}} do not fit this network: {' '.join(str(e).split())[:200]}",
                                 cfg.init_weights, options=("init_weights",)) from None
            self.say(f"initialised from {cfg.init_weights} ({rec.get('steps')} steps)")
        self.net = net
        loss = make_loss(cfg.model, cfg.weights, self.fm, lr_projection=cfg.lr_projection)  # checks the PSF for it
        self.bundle = _bundle_cls()(net, loss, cfg.weights, teacher, adapter).to(self.device)
        self.pred = predictor(cfg.model, net, cfg.val_steps, cfg.seed,
                              lr_projection_psf=self.fm.psf if cfg.lr_projection else None)
        self.opt = torch.optim.AdamW(self.bundle.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg))
        self.model = self.bundle
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.model = DDP(self.bundle, device_ids=[self.device] if self.device.startswith("cuda") else None)

    def resume(self) -> None:
        """Everything the checkpoint holds, so that the run continues exactly as if never stopped."""
        import torch

        if not self.ckpt_path.exists():
            raise InputError("{resume}: no checkpoint in the run folder", self.ckpt_path, options=("resume",))
        ck = load_checkpoint(self.ckpt_path, self.device)
        self.bundle.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.step_no, self.history, self.losses = ck["step"], ck["history"], ck["losses"]
        self.elapsed_prev = tuple(ck.get("elapsed", (0.0, 0.0)))
        rank = self.dist.rank
        self.sampler.set_state(ck["sampler"][rank] if rank < len(ck["sampler"]) else ck["sampler"][0])
        if self.sampler_joint is not None and ck.get("sampler_joint"):
            self.sampler_joint.set_state(ck["sampler_joint"][min(rank, len(ck["sampler_joint"]) - 1)])
        torch.set_rng_state(ck["torch_rng"])
        random.setstate(ck["py_rng"])
        self.say(f"resumed from step {self.step_no}")
        if self.step_no >= self.cfg.steps:
            self.say(f"checkpoint is already at step {self.step_no} >= steps {self.cfg.steps}")

    def open_log(self) -> None:
        """log.csv, one column per loss term in use (not top_level, a sampling share; not terms weighted 0)."""
        cfg, w = self.cfg, self.cfg.weights
        names = [k for k in w if k not in ("kd", "feat", "top_level") and w[k]]
        names += ["kd", "feat", "teacher"] if cfg.distill else []
        names += [f"joint_{k}" for k in names] if cfg.joint_scale else []
        self.part_names = names
        if self.dist.main and (not cfg.resume or not self.csv_path.exists()):
            with open(self.csv_path, "w", newline="") as f:
                csv.writer(f).writerow(["step", "loss", *names, "lr", "wall_s"])
        if not cfg.resume and self.best_path.exists() and self.dist.main:
            self.best_path.unlink()  # a fresh run in an old folder: that run's best is not this one's

    # ---- one step, validation, checkpoints
    def step(self) -> float:
        """One optimiser step on the next batch; returns the loss (and logs it)."""
        import torch

        from ..models.diffusion import progressive_patch_size

        cfg = self.cfg
        to_t = lambda a: None if a is None else torch.from_numpy(a).to(self.device, non_blocking=True)  # noqa: E731
        patch = progressive_patch_size(self.step_no, cfg.patch_schedule) if cfg.patch_schedule else None
        lr_t, msi_t, pr_t, hr_t = map(to_t, self.sampler.next(patch))
        joint = tuple(map(to_t, self.sampler_joint.next(patch))) if self.sampler_joint is not None else ()
        with _autocast(self.device):
            parts = self.model(lr_t, msi_t, pr_t, hr_t, *joint)
        loss = sum(v.float() for v in parts.values())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.bundle.parameters(), cfg.clip)
        self.opt.step()
        self.sched.step()
        self.step_no += 1
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise InputError(f"loss became {lv} at step {self.step_no}: lower {{lr}} or check the data", options=("lr",))
        self.losses.append(lv)
        if self.dist.main:
            row = [self.step_no, lv] + [float(parts[k].detach()) if k in parts else "" for k in self.part_names]
            with open(self.csv_path, "a", newline="") as f:
                csv.writer(f).writerow(row + [self.sched.get_last_lr()[0], round(self.elapsed()[0], 2)])
        return lv

    def validate(self) -> dict[str, Any]:
        """Metrics on the validation scenes at this step (computed once per step; gsa/bicubic once per run)."""
        if self._last_val[0] == self.step_no:
            return self._last_val[1]
        cfg = self.cfg
        res = evaluate_scenes(self.pred, self.val_scenes, self.fm, self.device, cfg.val_tile, self.baselines)
        self.baselines = {k: res[k] for k in ("gsa", "bicubic") if k in res} if "gsa" in res else None
        if self.val_joint:  # the second scale factor's numbers ride along (not in the history's means)
            res = {**res, "joint_scale": {"scale": cfg.joint_scale, "psf": self.fm_joint.psf.name,
                                          **evaluate_scenes(self.pred, self.val_joint, self.fm_joint, self.device, cfg.val_tile)}}
        self._last_val[:] = [self.step_no, res]
        self.net.train()
        return res

    def validate_and_record(self) -> None:
        if self.dist.main and self.val_scenes:
            res = self.validate()
            self.history.append({"step": self.step_no, "wall_s": self.elapsed()[0],
                                 **{k: res[k]["mean"] for k in res if k not in ("conventions", "joint_scale")}})
            self.say(f"step {self.step_no}: val PSNR model {res['model']['mean']['psnr']:.3f}"
                     + (f" gsa {res['gsa']['mean']['psnr']:.3f}" if "gsa" in res else ""))
            if self.cfg.keep_best:
                self.keep_if_best(res)
        _barrier(self.dist)

    def keep_if_best(self, res: dict[str, Any]) -> None:
        """Early stopping on the validation split: keep the weights of the best validation so far (a file, so a
        resumed run still knows it)."""
        import torch

        psnr = float(res["model"]["mean"]["psnr"])
        if self.best_path.exists() and torch.load(self.best_path, map_location="cpu", weights_only=True)["psnr"] >= psnr:
            return
        state = {k: v.detach().float().cpu().clone() for k, v in self.bundle.net.state_dict().items()}
        tmp = self.best_path.with_name(self.best_path.name + ".tmp")
        torch.save({"step": self.step_no, "psnr": psnr, "model": state}, tmp)
        os.replace(tmp, self.best_path)

    def save_checkpoint(self) -> None:
        import torch

        states = [self.sampler.state()]
        joint_states = [self.sampler_joint.state()] if self.sampler_joint is not None else []
        if self.dist.world > 1:
            import torch.distributed as dist

            states = [None] * self.dist.world
            dist.all_gather_object(states, self.sampler.state())
            if self.sampler_joint is not None:
                joint_states = [None] * self.dist.world
                dist.all_gather_object(joint_states, self.sampler_joint.state())
        if self.dist.main:
            _atomic_torch_save({
                "model": self.bundle.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "step": self.step_no, "history": self.history,
                "losses": self.losses, "sampler": states, "sampler_joint": joint_states,
                "torch_rng": torch.get_rng_state(), "py_rng": random.getstate(), "config": self.cfg.to_dict(),
                "elapsed": self.elapsed(),
            }, self.ckpt_path)

    def elapsed(self) -> tuple[float, float]:
        """(wall, CPU) seconds of the whole run, earlier sessions of a resumed run included."""
        return (self.elapsed_prev[0] + time.time() - self.t0_wall,
                self.elapsed_prev[1] + time.process_time() - self.t0_cpu)

    # ---- the loop and the end
    def run(self, on_step: Callable[[int, int, float], None] | None = None) -> str | None:
        """Steps until ``cfg.steps`` (or a stop); returns why it stopped early (None: it did not)."""
        cfg = self.cfg
        self.bundle.train()
        start = self.step_no
        while self.step_no < cfg.steps:
            if cfg.stop_after and self.step_no - start >= cfg.stop_after:
                return "stop_after"
            if cfg.time_limit_min and _agree_stop(time.time() - self.t0_wall > 60 * cfg.time_limit_min, self.dist):
                self.say(f"time limit reached at step {self.step_no}")
                return "time_limit"
            lv = self.step()
            if on_step is not None:
                on_step(self.step_no, cfg.steps, lv)
            if self.step_no % cfg.val_every == 0 or self.step_no == cfg.steps:
                self.validate_and_record()
            if self.step_no % cfg.checkpoint_every == 0 or self.step_no == cfg.steps:
                self.save_checkpoint()
        return None

    def finish(self, stopped: str | None) -> TrainResult:
        """Final validation (early stopping: the best step's weights), log.json, export of weights + record."""
        import torch

        cfg, step = self.cfg, self.step_no
        if stopped and step % cfg.checkpoint_every:
            self.save_checkpoint()
        final_val: dict[str, Any] = {}
        if self.dist.main and self.val_scenes and stopped != "stop_after":
            final_val = self.validate()
            if cfg.keep_best:
                self.keep_if_best(final_val)
                best = torch.load(self.best_path, map_location="cpu", weights_only=True)
                if best["step"] != step:  # an earlier validation was better: export those weights, validated again
                    self.bundle.net.load_state_dict(best["model"])
                    self.say(f"keeping the weights of step {best['step']} (validation PSNR {best['psnr']:.3f} dB; "
                             f"step {step}: {final_val['model']['mean']['psnr']:.3f})")
                    self._last_val[0] = None
                    final_val = self.validate()
                    final_val["selected_step"] = int(best["step"])
        wall, cpu = self.elapsed()
        result = TrainResult(step, str(self.out_dir), wall, cpu, self.device, self.dist.world,
                             self.losses[-1] if self.losses else float("nan"), list(self.losses), final_val,
                             checkpoint=str(self.ckpt_path))
        if self.dist.main:
            self._write_log(result)
            if cfg.export and stopped == "stop_after":
                result.export_skipped = (f"not exported: stopped at step {step} of {cfg.steps} (--stop-after); "
                                         "--resume to finish")
            elif cfg.export:
                from .export import export_run

                exported, why = export_run(cfg, self.bundle.net, self.fm, result, self.recorded_scenes, self.val_scenes)
                result.exported, result.export_skipped = exported, why
                self._write_log(result)
        _barrier(self.dist)
        if self.dist.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()
        return result

    def _write_log(self, result: TrainResult) -> None:
        (self.out_dir / "log.json").write_text(json.dumps({"config": self.cfg.to_dict(), "history": self.history,
                                                           "result": _plain(result.to_dict())}, indent=2) + "\n")


def rich_progress(total: int, start: int = 0):
    """A rich progress bar on stderr as an ``on_step`` callback, and the function that closes it."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    err = Console(stderr=True, highlight=False)  # the library never imports the CLI
    bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                   TimeRemainingColumn(), console=err, transient=False)
    bar.start()
    task = bar.add_task("train", total=total, completed=start, info="")
    return (lambda step, _total, loss: bar.update(task, completed=step, info=f"loss {loss:.4g}")), bar.stop


def train(cfg: TrainConfig, progress: bool = False, scenes: Sequence | None = None, val_scenes: Sequence | None = None,
          fm=None, log: Callable[[str], None] | None = None,
          on_step: Callable[[int, int, float], None] | None = None) -> TrainResult:
    """Train (or resume) the run described by ``cfg``; ``scenes``/``val_scenes``/``fm`` override the data (tests).

    ``on_step(step, steps, loss)`` is called after every step (``progress=True``: a rich bar on stderr).
    """
    run = TrainingRun(cfg, log)
    run.load_data(scenes, val_scenes, fm)
    run.build()
    if cfg.resume:
        run.resume()
    run.open_log()
    close = None
    if on_step is None and progress and run.dist.main:
        on_step, close = rich_progress(cfg.steps, run.step_no)
    try:
        stopped = run.run(on_step)
    finally:
        if close is not None:
            close()
    return run.finish(stopped)


def _agree_stop(flag: bool, d: DistInfo) -> bool:
    """All ranks stop together (rank 0's clock decides)."""
    if d.world <= 1:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0])
    dist.broadcast(t, 0)
    return bool(t.item())


def _barrier(d: DistInfo) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (np.generic,)):
        return obj.item()
    return obj


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hsfuse.train.loop [config.toml] [key=value ...]`` (torchrun entry point)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg_file = argv.pop(0) if argv and argv[0].endswith(".toml") else None
    over: dict[str, Any] = {}
    for a in argv:
        k, _, v = a.partition("=")
        try:
            over[k.replace("-", "_")] = json.loads(v)  # numbers, true/false, lists
        except json.JSONDecodeError:
            over[k.replace("-", "_")] = v
    cfg = TrainConfig.resolve(cfg_file, over)
    res = train(cfg, progress=sys.stderr.isatty(), log=lambda m: print(m, file=sys.stderr, flush=True))
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(_plain(res.to_dict()), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
