"""What ``hsfuse train`` can train, and for each: how to build it, its loss, how it predicts, its record.

The models come from the one architecture table (``hsfuse.models.architectures``), so the loop
stays model-agnostic: the CSAKD student and teacher (optionally distilled), MFTN, HyFusion,
MulSR, refine and HSR-Diff's CDFormer. Every
network may refine the classical detail-injection estimate (``prior=True``, the default
for training). Losses are each paper's (as reimplemented in the model module), computed
inside :class:`Bundle` so DistributedDataParallel sees one forward.

>>> spec("mftn").loss_weights
>>> net = build_net("mftn", bands=31, msi_bands=3, scale=8, prior=True, overrides={"nf": 24})
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np


def spec(model: str):
    """The architecture ``--model MODEL`` trains (``hsfuse.models.architectures``: build, registry, loss weights)."""
    from ..models.architectures import trainable

    return trainable(model)


def build_net(model: str, bands: int, msi_bands: int, scale: int, prior: bool, overrides: Mapping[str, Any] | None = None):
    """The untrained network for ``model``; ``overrides`` are constructor keywords (``nf``, ``width``, ...).

    A keyword the network rejects (unknown name, bad value) is a usage error, not a crash.
    """
    from ..errors import UsageError

    over = {k: v for k, v in dict(overrides or {}).items() if v is not None}
    try:
        return _build_net(model, bands, msi_bands, scale, prior, over)
    except (TypeError, ValueError) as e:
        raise UsageError(f"cannot build {model} with {{model_kwargs}} {over}: {e}", options=("model_kwargs",)) from None


def _build_net(model: str, bands: int, msi_bands: int, scale: int, prior: bool, over: dict[str, Any]):
    if model in ("student", "teacher"):
        from ..models.networks.csakd import build_csakd

        return build_csakd(model, bands, msi_bands, prior=prior, **over)
    if model == "hsr-diff":
        from ..models.networks.cdformer import build_cdformer

        return build_cdformer(bands, msi_bands, prior=prior, **over)
    return spec(model).build({"bands": bands, "msi_bands": msi_bands, "scale": scale, "prior": prior, **over})


def record_kwargs(model: str, net) -> dict[str, Any]:
    """The constructor keywords to store in the record (what ``build_network`` needs to rebuild it)."""
    kw = dict(net.config)
    if model in ("student", "teacher"):
        kw.pop("kind", None)
    return kw


# ----------------------------------------------------------------------------- losses


def make_loss(model: str, weights: Mapping[str, float], fm=None, lr_projection: bool = False) -> Callable:
    """``loss(net, lr, msi, prior, hr) -> (output used for distillation or None, {term: tensor})``.

    ``lr_projection``: the output is projected onto the cubes whose degradation is the LR patch
    (``models.consistency.project_lr``) before the loss, as ``fuse`` will do.
    """
    import torch

    from ..errors import UsageError

    w = dict(weights)
    if lr_projection:
        from ..forward.degrade import lr_supports_disjoint

        if model not in ("student", "teacher", "refine"):
            raise UsageError(f"{{lr_projection}} is implemented for refine and CSAKD, not {model}", options=("lr_projection",))
        if fm is None or not lr_supports_disjoint(fm.psf) or fm.psf.pad:
            # a patch holds each of its LR pixels' whole footprint only in the block form (pad 0)
            raise UsageError(f"{{lr_projection}} needs a block-form PSF (LR pixels drawing on disjoint HR pixels of their "
                             f"own block); {'none given' if fm is None else fm.psf.name + ' is not one'}",
                             options=("lr_projection",))
    if model in ("student", "teacher", "refine"):
        from .losses import gt_losses

        def csakd(net, lr, msi, prior, hr):
            out = net(lr, msi, prior).float()
            if lr_projection:
                from ..models.consistency import project_lr

                out = project_lr(out, lr, fm.psf)
            return out, gt_losses(out, hr, w)

        return csakd
    if model == "mftn":
        from ..models.networks.mftn import mftn_loss

        def mftn(net, lr, msi, prior, hr):
            out, aux = net(lr, msi, prior, return_aux=True)
            t = mftn_loss(out.float(), hr, net, aux, w)
            t.pop("total")
            return out, t

        return mftn
    if model == "hyfusion":
        from ..models.networks.hyfusion import hyfusion_loss

        def hyfusion(net, lr, msi, prior, hr):
            out = net(lr, msi, prior).float()
            t = hyfusion_loss(out, hr, w)
            t.pop("total")
            return out, t

        return hyfusion
    if model == "mulsr":
        from ..models.networks.mulsr import mulsr_loss

        def mulsr(net, lr, msi, prior, hr):
            out = net(lr, msi, prior)
            t = mulsr_loss(type(out)(out.small.float(), out.large.float()), hr, w.get("small", 1.0), w.get("large", 1.0),
                           w.get("sam", 0.0))
            t.pop("total")
            return out.large, t

        return mulsr
    if model == "hsr-diff":
        from ..models import diffusion as D

        schedule = D.NoiseSchedule()
        psf = None if fm is None else fm.psf
        srf = None if fm is None else torch.as_tensor(np.asarray(fm.srf, np.float32))
        # "top_level" is not a loss term: the share of each batch trained at the top noise level
        top_fraction = float(w.get("top_level", 0.0))
        loss_w = {k: v for k, v in w.items() if k != "top_level"}

        def hsrdiff(net, lr, msi, prior, hr):
            cond = net.encode(lr, msi, (0, 0), prior)
            s = None if srf is None else srf.to(hr.device)
            core = getattr(net, "module", net)
            rs = getattr(core, "residual_scale", 0.0)
            latent = None if not rs else (lambda x: core.to_latent(x, cond), lambda z: core.from_latent(z, cond))
            _, parts = D.diffusion_loss(lambda x, g: net.denoise(x, g, cond).float(), hr, lr, msi, schedule,
                                        psf=psf, srf=s, weights=loss_w, detach_parts=False, latent=latent,
                                        loss_scale=1.0 / rs if rs else 1.0, top_fraction=top_fraction)
            return None, parts

        return hsrdiff
    raise ValueError(model)


# ----------------------------------------------------------------------------- prediction


def predictor(model: str, net, diffusion_steps: int = 8, seed: int = 0, lr_projection_psf=None):
    """A module whose ``forward(lr, msi, prior)`` is the model's HR estimate (validation, benchmarks);
    projected onto the LR-consistent cubes when the network was trained that way (``lr_projection_psf``)."""
    from torch import nn

    if lr_projection_psf is not None:
        return _projected_cls()(net, lr_projection_psf)

    if model == "mulsr":
        from ..models.networks.mulsr import SelectOutput

        return SelectOutput(net)
    if model == "hsr-diff":
        return DiffusionPredictor(net, diffusion_steps, seed)
    if isinstance(net, nn.Module):
        return net
    raise ValueError(model)


def _projected_cls():
    from torch import nn

    class _Projected(nn.Module):
        """A network trained through the LR projection, as validation must run it (the fuser applies the same step)."""

        def __init__(self, net, psf):
            super().__init__()
            self.net, self.psf = net, psf
            self.prior = net.prior
            self.grid_hr = getattr(net, "grid_hr", 1)

        def receptive_radius_hr(self, scale: int) -> int:
            from ..models.consistency import projection_halo

            return self.net.receptive_radius_hr(scale) + scale * projection_halo(self.psf)

        def forward(self, lr, msi, prior=None):
            from ..models.consistency import project_lr

            return project_lr(self.net(lr, msi, prior).float(), lr, self.psf)

    return _Projected


def _diffusion_predictor_cls():
    from torch import nn

    class _DiffusionPredictor(nn.Module):
        """Deterministic DDIM sampling of a CDFormer at ``steps`` steps with scene-grid noise (origin 0, 0)."""

        def __init__(self, net, steps: int = 8, seed: int = 0):
            super().__init__()
            self.net, self.steps, self.seed = net, int(steps), int(seed)
            self.prior = net.prior

        def receptive_radius_hr(self, scale: int) -> int:
            return self.net.receptive_radius_hr(self.steps, scale)

        def tiled_fuser(self, problem, device: str):
            """The engine's HSR-Diff fuser around this network (tiled validation): noise on the scene grid."""
            from dataclasses import replace

            from ..models.hsrdiff import HSRDiffFuser

            opts = {**problem.options, "steps": self.steps, "seed": self.seed}
            return HSRDiffFuser(replace(problem, options=opts), device, network=self.net)

        def forward(self, lr, msi, prior=None):
            from ..models import diffusion as D

            cond = self.net.encode(lr, msi, (0, 0), prior)
            b, c, hh, ww = cond.base.shape
            dev = cond.base.device

            def noise(key):
                return D.scene_noise(self.seed, (c, hh, ww), 0, 0, key, device=dev)[None].expand(b, -1, -1, -1)

            z = D.sample(lambda x, g: self.net.denoise(x, g, cond).float(), D.NoiseSchedule(), steps=self.steps,
                         eta=0.0, noise=noise)
            return self.net.from_latent(z, cond)

    return _DiffusionPredictor


def DiffusionPredictor(net, steps: int = 8, seed: int = 0):  # noqa: N802 - a class built lazily (torch import)
    return _diffusion_predictor_cls()(net, steps, seed)
