"""The ground-truth losses every trained network can use (L1, band RMSE, band-energy-balanced MSE, spectral angle);
each model's paper loss lives with the model (``hsfuse.models.*``) and is picked in ``objectives``."""

from __future__ import annotations


def sam_loss(x, y, eps: float = 1e-7):
    from ..models.common import spectral_angle_loss

    return spectral_angle_loss(x, y, eps)


def beba_loss(x, y, eps: float = 1e-4):
    """Band-energy-balance-aware MSE: each band's MSE divided by the band's energy in the GT batch."""
    energy = (y ** 2).mean(dim=(0, 2, 3))
    return (((x - y) ** 2).mean(dim=(0, 2, 3)) / (energy + eps)).mean()


def band_rmse_loss(x, y, eps: float = 1e-10):
    """Mean over bands of each band's RMSE: the reported PSNR is a per-band MSE, which L1 under-weights where
    errors are large (bright regions); RMSE keeps L1's gradient scale."""
    return (((x - y) ** 2).mean(dim=(0, 2, 3)) + eps).sqrt().mean()


def gt_losses(out, gt, w: dict[str, float]) -> dict:
    import torch.nn.functional as F

    zero = out.new_zeros(())  # a term of weight 0 is logged, not computed
    return {"l1": w["l1"] * F.l1_loss(out, gt), "beba": w["beba"] * beba_loss(out, gt) if w["beba"] else zero,
            "sam": w["sam"] * sam_loss(out, gt) if w["sam"] else zero,
            **({"rmse": w["rmse"] * band_rmse_loss(out, gt)} if w.get("rmse") else {})}
