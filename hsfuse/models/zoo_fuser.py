"""``NetworkFuser``: every trained network (CSAKD, MFTN, HyFusion, MulSR, refine; HSR-Diff through its hooks)
behind the ``Fuser`` interface.

    $ hsfuse fuse lr.hdr msi.tif -o out.hdr --model mftn --opt weights=weights/mftn-cave-gauss-x8

The network is rebuilt from the weights record's ``architecture`` and
``kwargs`` through the one architecture table (``architectures.py``; no scanning; the
model module is imported only when used). The weights come from
``problem.options["weights"]`` or, when the model is in the registry with
weights stems, the installed stem whose record lists the inputs' scale. The
record must match the inputs (band counts, scale) or a ``ModelError`` says what
does not fit. With a ``prior=True`` network, ``fit`` fits the classical
detail-injection (GSA) on the whole scene and ``fuse_tile`` refines that
method's tile estimate.

``halo_lr`` is the network's receptive radius (``receptive_radius_hr``, an
upper bound) in LR pixels plus the prior's halo; a record may carry a smaller
measured one (``"halo_lr": {"8": n}``) and ``problem.options["halo_lr"]``
overrides both. HyFusion's window attention is equivariant only to whole-window
shifts, so tiles whose origins are off the window grid differ at window seams:
give it a blending overlap.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError, UsageError
from ..fusion.base import Fuser, FusionProblem
from .architectures import build_network
from .consistency import consistency_halo, match_lr, project_lr, projection_halo

#: -O lr_consistency=VALUE -> on/off ("auto": on when the PSF is exact, or known for weights trained through the
#: projection); "ratio" / "project" force the method (models/consistency.py)
LR_CONSISTENCY = {"auto": None, "on": True, "true": True, "1": True, "off": False, "false": False, "0": False,
                  "ratio": True, "project": True}
#: SIRT steps of the LR projection where the PSF's LR pixels share HR pixels (one step is exact otherwise)
PROJECTION_STEPS_OVERLAP = 3

def _autocast(device: str, precision: str):
    from .common import autocast

    return autocast(device, precision)


def _weights_for_scale(model: str, scale: int) -> Path:
    from ..weights import read_record
    from .registry import get_model, weights_dir

    try:
        entry = get_model(model)
    except UsageError:
        raise ModelError(f"model '{model}' is not in the registry: pass its weights as the model option weights=STEM") from None
    tried = []
    for stem in entry.weights:
        p = weights_dir() / stem
        if not p.with_suffix(".json").exists():
            continue
        rec = read_record(p)
        tried.append(f"{stem} (x{','.join(map(str, rec.scales))})")
        if scale in rec.scales:
            return p
    have = "; installed: " + ", ".join(tried) if tried else f"; no {model} weights are installed (not yet trained)"
    raise ModelError(f"no {model} weights trained for scale x{scale}{have}", weights_dir())


def load_checked(weights_path: Path, problem: FusionProblem, build) -> tuple[Any, dict[str, Any]]:
    """(network, record) for ``weights_path`` after checking the record against the inputs.

    ``build(architecture, kwargs)`` makes the untrained network; any mismatch in band counts or
    scale, or weights that do not fit the recorded architecture, is a ``ModelError`` naming the record.
    """
    from ..weights import load_weights

    state, rec = load_weights(weights_path)
    where = Path(weights_path).with_suffix(".json")
    bands, msi_bands, scales = rec.bands, rec.msi_bands, rec.scales
    if bands is not None and problem.lr_bands != int(bands):
        raise ModelError(f"weights were trained for {bands} hyperspectral bands, the LR cube has {problem.lr_bands}", where)
    if msi_bands is not None and problem.msi_bands != int(msi_bands):
        raise ModelError(f"weights were trained for a {msi_bands}-band MSI, the MSI has {problem.msi_bands} bands", where)
    if problem.scale not in scales:
        raise ModelError(f"weights were trained for scale x{', x'.join(map(str, scales))}, the inputs are x{problem.scale}", where)
    try:
        net = build(rec["architecture"], rec["kwargs"])
        net.load_state_dict(state, strict=True)
    except (ValueError, TypeError, RuntimeError) as e:
        raise ModelError(f"weights do not fit the recorded architecture: {' '.join(str(e).split())[:300]}", where) from None
    return net, rec


def prior_for(net, problem: FusionProblem, device: str):
    """(GSA fuser, its halo in LR pixels) for a ``prior=True`` network, else (None, 0); fit it on the whole scene."""
    if not getattr(net, "prior", False):
        return None, 0
    from .classical import DetailInjection

    fuser = DetailInjection(problem, device, "fp32")
    # backend "auto": numpy on a CPU, as for `--model gsa` (measured 2026-12-07 with refine: the same prior to float
    # rounding, 0.1-1 CPU-s less per 512² scene and a lower x32 peak, 0.94 against 1.02 GiB), torch on a GPU
    return fuser, int(getattr(fuser, "halo_lr", 0))


# the order in which ``tta`` passes take the 8 transforms of ``dihedral``: 2 passes = the input and its 180° rotation
# (measured best of the pairs with refine, docs/models/refine.md), 4 = the flips, 8 = all
TTA_TRANSFORMS = (0, 3, 1, 2, 4, 7, 5, 6)


def dihedral(a, k: int, inverse: bool = False):
    """Transform k of the 8 flips/transposes of a (..., H, W) tensor (bit 0: flip W, bit 1: flip H,
    bit 2: transpose); ``inverse`` undoes it. The PSF and SRF commute with these only because the
    networks were trained with the same flips and rotations applied to whole (LR, MSI, HR) triples."""
    import torch

    def flips(t):
        dims = [d for bit, d in ((1, -1), (2, -2)) if k & bit]
        return torch.flip(t, dims) if dims else t

    if not inverse:
        a = flips(a)
        return a.transpose(-1, -2) if k & 4 else a
    a = a.transpose(-1, -2) if k & 4 else a
    return flips(a)


class NetworkFuser(Fuser):
    """Any network of ``architectures.ARCHITECTURES`` with trained weights; optionally refining the GSA estimate."""

    name = "network"

    def __init__(self, problem: FusionProblem, device: str = "cpu", precision: str = "fp32",
                 weights: str | Path | None = None, network: Any = None):
        super().__init__(problem, device, precision)
        if precision not in ("fp32", "bf16", "fp16"):
            raise ModelError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
        self.weights_path: Path | None = None
        self._weights = weights
        if network is not None:  # a network in memory (training validation): no weights file, nothing to check
            from ..weights import WeightsRecord

            self.net, self.record = network, WeightsRecord()
        else:
            self.net, self.record = self._load_network()
        self._configure()
        self.net.to(device).eval()
        # networks measured faster in channels-last layout on a CPU (refine: 0.8 instead of 1.3 CPU-s per 512²
        # pass; the same sums, to float rounding) run in it
        self.channels_last = str(device) == "cpu" and bool(getattr(self.net, "channels_last_cpu", False))
        if self.channels_last:
            import torch

            self.net.to(memory_format=torch.channels_last)
        if str(device) == "cpu":
            from .common import keep_freed_memory

            keep_freed_memory()  # tensors of a tile reuse freed memory instead of page-faulting afresh
        self.prior_fuser, prior_halo = prior_for(self.net, problem, device)
        net_halo = self._network_halo()
        # MulSR at its small scale averages LR pixels in blocks of `align` for its large branch: tiles are
        # padded to start on that block grid (fuse_tile), which costs up to align-1 more LR pixels of context
        small, large = getattr(self.net, "small_scale", 0), getattr(self.net, "scale", 0)
        self.align = large // small if small and problem.scale == small and large % small == 0 else 1
        # a network with a pixel-unshuffle grid (refine: 2) needs tiles starting on it; at odd scales that
        # takes tile origins on even LR pixels
        grid = int(getattr(self.net, "grid_hr", 1))
        if grid > 1 and problem.scale % grid:  # HR origin s*k on the grid: k a multiple of grid / gcd(s, grid)
            self.align = math.lcm(self.align, grid // math.gcd(problem.scale, grid))
        # LR consistency (models/consistency.py). Weights trained through the exact projection (record
        # "lr_consistency": "project") rely on it for the low frequencies, so it is on wherever the PSF is known;
        # the others take the ratio step where the PSF is exact.
        mode = str(problem.options.get("lr_consistency", "auto")).lower()
        if mode not in LR_CONSISTENCY:
            raise ModelError(f"option lr_consistency must be auto, on, off, ratio or project, got {mode!r}")
        trained = self.record.get("lr_consistency") == "project"
        self.consistency_method = mode if mode in ("ratio", "project") else ("project" if trained else "ratio")
        auto = problem.psf is not None if trained else bool(problem.psf_exact)
        self.lr_consistency = LR_CONSISTENCY[mode] if mode != "auto" else auto
        if self.lr_consistency and problem.psf is None:
            raise ModelError("option lr_consistency=on needs the PSF (give {psf} or {protocol})", options=("psf", "protocol"))
        extra = 0
        if self.lr_consistency and self.consistency_method == "project":
            from ..forward.degrade import lr_supports_disjoint

            self.projection_steps = 1 if lr_supports_disjoint(problem.psf) else PROJECTION_STEPS_OVERLAP
            extra = projection_halo(problem.psf, self.projection_steps)
        elif self.lr_consistency:
            extra = consistency_halo(problem.psf)
        self.net_need = net_halo + (self.align - 1) + extra  # LR context the network and LR consistency need
        self.halo_bound = self.net_need + prior_halo
        measured = self.record.get("halo_lr", {}).get(str(problem.scale)) if isinstance(self.record.get("halo_lr"), dict) else None
        self.halo_lr = int(problem.options.get("halo_lr", measured + extra if measured is not None else self.halo_bound))
        # test-time self-ensemble over flips/transposes (the training augmentations): tta = 1, 2, 4 or 8 passes;
        # the record may set the default where it was measured to pay (refine: 2)
        self.tta = int(problem.options.get("tta", self.record.get("tta") or 1))
        if self.tta not in (1, 2, 4, 8):
            raise ModelError(f"option tta must be 1, 2, 4 or 8 (passes over flipped/transposed inputs), got {self.tta}")

    # -- hooks a network family overrides (HSR-Diff: models/hsrdiff.py)

    def _load_network(self) -> tuple[Any, Any]:
        """(network, record) from the weights given, or the installed ones for the inputs' scale."""
        problem = self.problem
        stem = self._weights or problem.options.get("weights") or _weights_for_scale(self.name, problem.scale)
        self.weights_path = Path(stem)
        return load_checked(self.weights_path, problem, build_network)

    def _configure(self) -> None:
        """Read the family's own options (called once the network and its record are loaded)."""

    def _network_halo(self) -> int:
        """LR pixels of context the network itself needs (its receptive radius, an upper bound)."""
        return int(math.ceil(self.net.receptive_radius_hr(self.problem.scale) / self.problem.scale))

    def _input_origin(self, lr: np.ndarray) -> tuple[int, int]:
        """HR (row, col) of the tile input's first pixel in the scene (the engine sets ``tile_origin``)."""
        return int(self.tile_origin[0]), int(self.tile_origin[1])

    def _predict(self, lr_t, msi_t, prior_t, origin: tuple[int, int]):
        """The network's estimate (1, C, H, W) of tensors already on the device; ``origin`` as ``_input_origin``."""
        import torch

        run = getattr(self.net, "predict", self.net)  # MulSR: the output matching the inputs' scale
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        y = None
        with torch.no_grad(), _autocast(self.device, self.precision):
            for k in TTA_TRANSFORMS[:self.tta]:
                fwd = lambda a, k=k: None if a is None else dihedral(a, k).contiguous(memory_format=layout)  # noqa: E731
                out = dihedral(run(fwd(lr_t), fwd(msi_t), fwd(prior_t)).float(), k, inverse=True)
                if y is None:  # a copy when passes are summed into it: a network's output may be a view of its input
                    y = out.contiguous() if self.tta == 1 else out.clone(memory_format=torch.contiguous_format)
                else:
                    y.add_(out)
        return y if self.tta == 1 else y.div_(self.tta)

    # -- engine interface

    def fit(self, lr: np.ndarray, msi_lr: np.ndarray) -> None:
        if self.prior_fuser is not None:
            self.prior_fuser.fit(lr, msi_lr)

    def fuse_tile(self, lr: np.ndarray, msi: np.ndarray) -> np.ndarray:
        import torch

        lr = lr_in = np.nan_to_num(np.asarray(lr, np.float32))
        msi = np.nan_to_num(np.asarray(msi, np.float32))
        prior = None
        s, full = self.problem.scale, lr.shape[1:]
        # LR pixels of the input only the prior needed, per side (top, bottom, left, right): the network does not
        # run on them. A side with less context than halo_lr (a tile stopping at the scene border) has less to cut.
        sides = self.tile_halo if self.tile_halo is not None else (self.halo_lr,) * 4
        cut = (0, 0, 0, 0)
        if self.prior_fuser is not None:
            prior = np.asarray(self.prior_fuser.fuse_tile(lr, msi), np.float32)
            cut = tuple(max(0, min(int(v) - self.net_need, (n - 1) // 2))
                        for v, n in zip(sides, (full[0], full[0], full[1], full[1])))
            if any(cut):  # the prior is exact only inside its own halo, and the network needs no more than net_need
                t, b, l, r = cut
                lr = lr[:, t:full[0] - b, l:full[1] - r]
                # the prior's inner part copied out, so its whole extent (at x32 the tile with gsa's halo is ~6x the
                # area the network needs: 180 MB for 31 bands) is freed before the network runs (issue 20)
                msi, prior = (a[:, t * s:(full[0] - b) * s, l * s:(full[1] - r) * s] for a in (msi, prior))
                prior = np.ascontiguousarray(prior)
        h, w = lr.shape[1:]
        o0 = self._input_origin(lr_in)
        origin = [o0[0] + cut[0] * s, o0[1] + cut[2] * s]
        ky, kx = ((v // s) % self.align for v in origin) if self.align > 1 else (0, 0)
        ey, ex = (-(ky + h)) % self.align, (-(kx + w)) % self.align
        if ky or kx or ey or ex:  # the tile on whole blocks of the scene's grid (mirrored rows/cols in the halo)
            pad = lambda a, k: np.pad(a, ((0, 0), (ky * k, ey * k), (kx * k, ex * k)), mode="symmetric")  # noqa: E731
            lr, msi, prior = pad(lr, 1), pad(msi, s), None if prior is None else pad(prior, s)
        x = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))[None].to(self.device)  # noqa: E731
        lr_t, msi_t, prior_t = x(lr), x(msi), x(prior)
        y = self._predict(lr_t, msi_t, prior_t, (origin[0] - ky * s, origin[1] - kx * s))
        if self.lr_consistency:
            with torch.no_grad():
                if self.consistency_method == "project":
                    y = project_lr(y.float(), lr_t, self.problem.psf, self.projection_steps)
                else:
                    y = match_lr(y.float(), lr_t, self.problem.psf)
        y = y[0, :, ky * s:(ky + h) * s, kx * s:(kx + w) * s].float().cpu().numpy()
        if any(cut):  # back to the input's extent; the engine keeps only the centre, which the network computed
            t, b, l, r = cut
            y = np.pad(y, ((0, 0), (t * s, b * s), (l * s, r * s)), mode="edge")
        return y

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "halo_lr": self.halo_lr, "halo_bound_lr": self.halo_bound,
                "weights": None if self.weights_path is None else str(self.weights_path),
                "architecture": self.record.get("architecture"), "prior": bool(getattr(self.net, "prior", False)),
                "scales": self.record.get("scales"), "protocol": self.record.get("protocol"),
                "parameters": self.record.get("parameters"), "tta": self.tta,
                "lr_consistency": self.consistency_method if self.lr_consistency else False}


class MFTNFuser(NetworkFuser):
    name = "mftn"


class HyFusionFuser(NetworkFuser):
    name = "hyfusion"


class MulSRFuser(NetworkFuser):
    name = "mulsr"


class RefineFuser(NetworkFuser):
    name = "refine"
    # tiles stop at the scene border instead of reading a mirrored halo there (engine.stream_tiles): the network was
    # trained on crops (zero-padded convolutions at their edges), the gsa prior and the LR projection apply the
    # PSF's own border rule. Measured 2026-12-07 on the validation scenes (cave-gauss-x4/x8, wald-gauss x4, two
    # passes): PSNR equal or up to 0.01 dB higher, the interior identical, 1.3-2x less CPU in the fusion itself
    # (the halo of three SIRT steps under an overlapping kernel is 36 LR pixels at x4: a 512² scene ran as 800²)
    tiles_stop_at_border = True
