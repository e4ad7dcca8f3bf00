"""Training CSAKD networks: config (config.py), data (data.py), loop (loop.py), export (export.py).

>>> from hsfuse.train import TrainConfig, train
>>> train(TrainConfig(protocol="cave-gauss-x8", steps=2000, export="weights/csakd-s-cave-gauss-x8"))

Importing this package is cheap; torch is imported inside the functions.
"""

from .config import DEFAULT_LOSS_WEIGHTS, VALIDATION_SCENES, TrainConfig


def train(cfg: TrainConfig, **kw):
    """See :func:`hsfuse.train.loop.train`."""
    from .loop import train as _train

    return _train(cfg, **kw)


__all__ = ["TrainConfig", "train", "VALIDATION_SCENES", "DEFAULT_LOSS_WEIGHTS"]
