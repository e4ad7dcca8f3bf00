"""The one table of trainable network architectures (the registry, ``registry.py``, is the other table).

An architecture is what a weights record names in ``"architecture"``: how to rebuild the
``nn.Module`` from the record's ``kwargs``, which registry entry runs its weights, which
``hsfuse train --model`` value trains it, and the loss weights it trains with by default.
Builders are ``"module:callable"`` strings imported only when used, so this table (and
``hsfuse train --help``) costs no torch import.

>>> net = build_network("refine", {"bands": 31, "msi_bands": 3, "scale": 8})
>>> ARCHITECTURES[net.architecture].registry
'refine'
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import UsageError


@dataclass(frozen=True)
class Architecture:
    name: str  # a weights record's "architecture"
    network: str  # "module:callable": callable(**record kwargs) -> nn.Module
    registry: str  # the registry entry whose Fuser runs these weights
    train_as: str  # the `hsfuse train --model` value
    paper: str
    loss_weights: Mapping[str, float]  # defaults; --loss-weights overrides

    def build(self, kwargs: Mapping[str, Any] | None = None):
        mod, attr = self.network.split(":")
        return getattr(importlib.import_module(mod), attr)(**dict(kwargs or {}))


_CSAKD_PAPER = "CSAKD, Hsu et al., arXiv 2406.19666 (2024); S3RNet describes the same network"
_CSAKD_LOSS = {"l1": 1.0, "kd": 0.5, "feat": 0.1, "beba": 0.1, "sam": 0.05}

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("csakd-student", "hsfuse.models.networks.csakd:student_from_record", "csakd-s", "student", _CSAKD_PAPER, _CSAKD_LOSS),
    Architecture("csakd-teacher", "hsfuse.models.networks.csakd:teacher_from_record", "csakd-s", "teacher", _CSAKD_PAPER, _CSAKD_LOSS),
    Architecture("mftn", "hsfuse.models.networks.mftn:MFTN", "mftn", "mftn", "Huang et al., ICML 2024 (MFTN, IMatchFormer)",
                 {"l1": 1.0, "grad": 0.1, "sam": 0.05, "transfer": 0.01}),
    Architecture("hyfusion", "hsfuse.models.networks.hyfusion:HyFusion", "hyfusion", "hyfusion",
                 "Hsu, Lee, Kang et al., HyFusion (arXiv 2501.04665)", {"l1": 1.0, "sam": 0.1, "swt": 0.1}),
    Architecture("mulsr", "hsfuse.models.networks.mulsr:MulSR", "mulsr", "mulsr",
                 "MulSR, Multi-Scale Factor Joint Learning for HSI SR (IEEE TGRS)", {"small": 1.0, "large": 1.0, "sam": 0.0}),
    Architecture("refine", "hsfuse.models.networks.refine:RefineNet", "refine", "refine",
                 "ours (hsfuse issue 20): GSA-residual CNN, half-resolution body", {"l1": 1.0, "rmse": 0.0, "beba": 0.0, "sam": 0.1}),
    Architecture("hsrdiff-cdformer", "hsfuse.models.networks.cdformer:CDFormer", "hsr-diff", "hsr-diff",
                 "Wu et al., HSR-Diff, ICCV 2023 (arXiv 2306.12085)",
                 {"l1": 1.0, "spatial": 0.5, "spectral": 0.5, "top_level": 0.0}),
)}

#: `hsfuse train --model` value -> architecture (a view of the table above, not another table)
TRAINABLE: dict[str, Architecture] = {a.train_as: a for a in ARCHITECTURES.values()}


def get_architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r} (known: {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[name]


def build_network(architecture: str, kwargs: Mapping[str, Any] | None = None):
    """An untrained network by a record's ``architecture`` and ``kwargs`` (``net.config``)."""
    return get_architecture(architecture).build(kwargs)


def trainable(model: str) -> Architecture:
    """The architecture ``hsfuse train --model MODEL`` trains."""
    if model not in TRAINABLE:
        raise UsageError(f"unknown model {model!r} for training (known: {', '.join(TRAINABLE)})")
    return TRAINABLE[model]
