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
                  tile: int = 0, halo_lr: int | None = None) -> np.ndarray:
    """Run the network on a whole scene (or in ``tile`` x ``tile`` HR tiles with a mirrored halo)."""
    import torch

    from ..models.csakd_fuser import run_tiled

    net.eval()
    with torch.no_grad():
        if tile <= 0:
            t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))[None].to(device)
            with _autocast(device):
                out = net(t(lr), t(msi), t(prior))
            return out[0].float().cpu().numpy()
        return run_tiled(net, lr, msi, prior, tile, halo_lr, device)


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


def validate(net, scenes, scale: int, device: str, tile: int = 0, baselines: dict | None = None) -> dict[str, Any]:
    """Per-scene and mean metrics of the model (and GSA prior / bicubic baselines if not cached)."""
    from .data import bicubic

    per: dict[str, dict[str, dict[str, float]]] = {"model": {}, "gsa": {}, "bicubic": {}}
    for sc in scenes:
        est = predict_scene(net, sc.lr, sc.msi, sc.prior, device, tile)
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


def train(cfg: TrainConfig, progress: bool = False, scenes: Sequence | None = None, val_scenes: Sequence | None = None,
          fm=None, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train (or resume) the run described by ``cfg``; ``scenes``/``val_scenes``/``fm`` override the data (tests)."""
    import torch

    from .data import PatchSampler, find_scenes, forward_model, load_scenes, split_scenes
    from ..models.diffusion import progressive_patch_size
    from .objectives import make_loss, predictor

    t0_wall, t0_cpu = time.time(), time.process_time()
    device = resolve_device(cfg.device)
    dist_info = setup_distributed(device)
    if device.startswith("cuda") and dist_info.world > 1:
        device = f"cuda:{dist_info.local_rank}"
        torch.cuda.set_device(device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    say = log or (lambda m: None)
    out_dir = Path(cfg.out_dir)
    if dist_info.main:
        out_dir.mkdir(parents=True, exist_ok=True)

    # ---- data
    if fm is None:
        fm = forward_model(cfg.protocol, cfg.scale, cfg.psf_sigma, cfg.srf_file)
    if scenes is None:
        found = find_scenes(cfg.data)
        tr_names, val_names = split_scenes(found, cfg.validation_scenes, cfg.train_scenes)
        say(f"loading {len(tr_names)} training + {len(val_names)} validation scenes ({fm.name})")
        scenes = load_scenes(found, tr_names, fm, cfg.prior)
        val_scenes = load_scenes(found, val_names, fm, cfg.prior) if dist_info.main else []
    recorded_scenes = list(scenes)  # the record names the real scenes, not their augmented copies
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
    val_scenes = list(val_scenes or [])
    bands, msi_bands = scenes[0].hr.shape[0], scenes[0].msi.shape[0]
    sampler = PatchSampler(scenes, fm.scale, cfg.patch, cfg.batch, cfg.seed + 1000 * dist_info.rank, cfg.noise_snr)
    sampler_joint, val_joint, fm_joint = None, [], None
    if cfg.joint_scale:
        from .data import at_scale, rescaled_scenes

        fm_joint = at_scale(fm, cfg.joint_scale)
        say(f"joint training at x{cfg.joint_scale} too ({fm_joint.psf.name})")
        sampler_joint = PatchSampler(rescaled_scenes(scenes, fm_joint, cfg.prior), cfg.joint_scale, cfg.patch, cfg.batch,
                                     cfg.seed + 500 + 1000 * dist_info.rank, cfg.noise_snr)
        val_joint = rescaled_scenes(val_scenes, fm_joint, cfg.prior)

    # ---- model, optimiser, schedule
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    net, teacher, adapter = build_models(cfg, bands, msi_bands, fm.scale)
    if cfg.joint_scale and cfg.joint_scale not in tuple(getattr(net, "scales", ())):
        raise UsageError(f"joint_scale x{cfg.joint_scale}: this network serves {tuple(getattr(net, 'scales', ()))}")
    if cfg.init_weights:
        from ..errors import ModelError
        from ..weights import load_weights

        state, rec = load_weights(cfg.init_weights)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ModelError(f"--init-weights do not fit this network: {' '.join(str(e).split())[:200]}", cfg.init_weights) from None
        say(f"initialised from {cfg.init_weights} ({rec.get('steps')} steps)")
    w = cfg.weights
    bundle = _bundle_cls()(net, make_loss(cfg.model, w, fm), w, teacher, adapter).to(device)
    pred = predictor(cfg.model, net, cfg.val_steps, cfg.seed)
    opt = torch.optim.AdamW(bundle.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    step, history, losses, elapsed_prev = 0, [], [], (0.0, 0.0)
    ckpt_path = out_dir / "checkpoint.pt"
    if cfg.resume:
        if not ckpt_path.exists():
            raise InputError("--resume: no checkpoint in the run folder", ckpt_path)
        ck = load_checkpoint(ckpt_path, device)
        bundle.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        step, history, losses = ck["step"], ck["history"], ck["losses"]
        elapsed_prev = tuple(ck.get("elapsed", (0.0, 0.0)))
        sampler.set_state(ck["sampler"][dist_info.rank] if dist_info.rank < len(ck["sampler"]) else ck["sampler"][0])
        if sampler_joint is not None and ck.get("sampler_joint"):
            sampler_joint.set_state(ck["sampler_joint"][min(dist_info.rank, len(ck["sampler_joint"]) - 1)])
        torch.set_rng_state(ck["torch_rng"])
        random.setstate(ck["py_rng"])
        say(f"resumed from step {step}")
        if step >= cfg.steps:
            say(f"checkpoint is already at step {step} >= steps {cfg.steps}")
    model = bundle
    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(bundle, device_ids=[device] if device.startswith("cuda") else None)

    csv_path = out_dir / "log.csv"
    # one column per loss term in use: not top_level (a sampling share), not terms weighted 0
    part_names = [k for k in w if k not in ("kd", "feat", "top_level") and w[k]]
    part_names += ["kd", "feat", "teacher"] if cfg.distill else []
    part_names += [f"joint_{k}" for k in part_names] if cfg.joint_scale else []
    fields_csv = ["step", "loss", *part_names, "lr", "wall_s"]
    if dist_info.main and (not cfg.resume or not csv_path.exists()):
        with open(csv_path, "w", newline="") as f:
            csv.writer(f).writerow(fields_csv)

    baselines = None
    last_val: list = [None, {}]  # (step, result)
    best_path = out_dir / "best.pt"
    if not cfg.resume and best_path.exists() and dist_info.main:
        best_path.unlink()  # a fresh run in an old folder: that run's best is not this one's

    def keep_if_best(res: dict[str, Any]) -> None:
        """Early stopping on the validation split: keep the weights of the best validation so far (a file, so a
        resumed run still knows it)."""
        psnr = float(res["model"]["mean"]["psnr"])
        if best_path.exists() and torch.load(best_path, map_location="cpu", weights_only=True)["psnr"] >= psnr:
            return
        state = {k: v.detach().float().cpu().clone() for k, v in bundle.net.state_dict().items()}
        tmp = best_path.with_name(best_path.name + ".tmp")
        torch.save({"step": step, "psnr": psnr, "model": state}, tmp)
        os.replace(tmp, best_path)

    def run_validation() -> dict[str, Any]:
        nonlocal baselines
        if last_val[0] == step:
            return last_val[1]
        res = validate(pred, val_scenes, fm.scale, device, cfg.val_tile, baselines)
        baselines = {k: res[k] for k in ("gsa", "bicubic") if k in res} if "gsa" in res else None
        if val_joint:  # the second scale factor's numbers ride along (not in the history's means)
            res = {**res, "joint_scale": {"scale": cfg.joint_scale, "psf": fm_joint.psf.name,
                                          **validate(pred, val_joint, cfg.joint_scale, device, cfg.val_tile)}}
        last_val[:] = [step, res]
        net.train()
        return res

    def save_checkpoint() -> None:
        states = [sampler.state()]
        joint_states = [sampler_joint.state()] if sampler_joint is not None else []
        if dist_info.world > 1:
            import torch.distributed as dist

            states = [None] * dist_info.world
            dist.all_gather_object(states, sampler.state())
            if sampler_joint is not None:
                joint_states = [None] * dist_info.world
                dist.all_gather_object(joint_states, sampler_joint.state())
        if dist_info.main:
            wall, cpu = elapsed()
            _atomic_torch_save({
                "model": bundle.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "step": step, "history": history, "losses": losses, "sampler": states, "sampler_joint": joint_states,
                "torch_rng": torch.get_rng_state(), "py_rng": random.getstate(), "config": cfg.to_dict(),
                "elapsed": (wall, cpu),
            }, ckpt_path)

    def elapsed() -> tuple[float, float]:
        return elapsed_prev[0] + time.time() - t0_wall, elapsed_prev[1] + time.process_time() - t0_cpu

    bar = None
    if progress and dist_info.main:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from rich.console import Console

        err = Console(stderr=True, highlight=False)  # the library never imports the CLI

        bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                       TimeRemainingColumn(), console=err, transient=False)
        bar.start()
        task = bar.add_task("train", total=cfg.steps, completed=step, info="")

    to_t = lambda a: None if a is None else torch.from_numpy(a).to(device, non_blocking=True)
    bundle.train()
    start_step, stopped = step, None
    try:
        while step < cfg.steps:
            if cfg.stop_after and step - start_step >= cfg.stop_after:
                stopped = "stop_after"
                break
            if cfg.time_limit_min and _agree_stop(time.time() - t0_wall > 60 * cfg.time_limit_min, dist_info):
                stopped = "time_limit"
                say(f"time limit reached at step {step}")
                break
            patch = progressive_patch_size(step, cfg.patch_schedule) if cfg.patch_schedule else None
            lr_np, msi_np, pr_np, hr_np = sampler.next(patch)
            lr_t, msi_t, pr_t, hr_t = map(to_t, (lr_np, msi_np, pr_np, hr_np))
            joint = tuple(map(to_t, sampler_joint.next(patch))) if sampler_joint is not None else ()
            with _autocast(device):
                parts = model(lr_t, msi_t, pr_t, hr_t, *joint)
            loss = sum(v.float() for v in parts.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip > 0:
                torch.nn.utils.clip_grad_norm_(bundle.parameters(), cfg.clip)
            opt.step()
            sched.step()
            step += 1
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise InputError(f"loss became {lv} at step {step}: lower --lr or check the data")
            losses.append(lv)
            if dist_info.main:
                row = [step, lv] + [float(parts[k].detach()) if k in parts else "" for k in part_names]
                with open(csv_path, "a", newline="") as f:
                    csv.writer(f).writerow(row + [sched.get_last_lr()[0], round(elapsed()[0], 2)])
            if bar is not None:
                bar.update(task, completed=step, info=f"loss {lv:.4g}")
            if step % cfg.val_every == 0 or step == cfg.steps:
                if dist_info.main and val_scenes:
                    res = run_validation()
                    history.append({"step": step, "wall_s": elapsed()[0], **{k: res[k]["mean"] for k in res if k not in ("conventions", "joint_scale")}})
                    say(f"step {step}: val PSNR model {res['model']['mean']['psnr']:.3f}"
                        + (f" gsa {res['gsa']['mean']['psnr']:.3f}" if "gsa" in res else ""))
                    if cfg.keep_best:
                        keep_if_best(res)
                _barrier(dist_info)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_checkpoint()
    finally:
        if bar is not None:
            bar.stop()
    if stopped and step % cfg.checkpoint_every:
        save_checkpoint()

    final_val: dict[str, Any] = {}
    if dist_info.main and val_scenes and stopped != "stop_after":
        final_val = run_validation()
        if cfg.keep_best:
            keep_if_best(final_val)
            best = torch.load(best_path, map_location="cpu", weights_only=True)
            if best["step"] != step:  # an earlier validation was better: export those weights, validated again
                bundle.net.load_state_dict(best["model"])
                say(f"keeping the weights of step {best['step']} (validation PSNR {best['psnr']:.3f} dB; "
                    f"step {step}: {final_val['model']['mean']['psnr']:.3f})")
                last_val[0] = None
                final_val = run_validation()
                final_val["selected_step"] = int(best["step"])
    wall, cpu = elapsed()
    result = TrainResult(step, str(out_dir), wall, cpu, device, dist_info.world, losses[-1] if losses else float("nan"),
                         list(losses), final_val, checkpoint=str(ckpt_path))
    if dist_info.main:
        (out_dir / "log.json").write_text(json.dumps({"config": cfg.to_dict(), "history": history,
                                                      "result": _plain(result.to_dict())}, indent=2) + "\n")
        if cfg.export and stopped == "stop_after":
            result.export_skipped = f"not exported: stopped at step {step} of {cfg.steps} (--stop-after); --resume to finish"
        elif cfg.export:
            from .export import export_run

            exported, why = export_run(cfg, bundle.net, fm, result, recorded_scenes, val_scenes)
            result.exported, result.export_skipped = exported, why
            (out_dir / "log.json").write_text(json.dumps({"config": cfg.to_dict(), "history": history,
                                                          "result": _plain(result.to_dict())}, indent=2) + "\n")
    _barrier(dist_info)
    if dist_info.initialised_here:
        import torch.distributed as dist

        dist.destroy_process_group()
    return result


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
