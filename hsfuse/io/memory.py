"""In-memory sources and sinks, so library users (and tests) run the very same
streaming engine on numpy arrays that the CLI runs on files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..cube import CubeMeta, Window
from .base import CubeSource


class ArraySource(CubeSource):
    """A (C, H, W) array posing as an opened cube file (values are already physical)."""

    format = "array"

    def __init__(self, data: np.ndarray, meta: CubeMeta | None = None, name: str = "<array>"):
        data = np.asarray(data)
        if data.ndim != 3:
            raise ValueError(f"expected a (C, H, W) array, got shape {data.shape}")
        meta = (meta or CubeMeta()).copy(scale=1.0, offset=0.0)
        super().__init__(Path(name), data.shape, data.dtype, meta)
        self._data = data

    def _read_raw(self, window: Window, bands: np.ndarray | None) -> np.ndarray:
        block = self._data[:, window.row:window.row + window.height, window.col:window.col + window.width]
        return block if bands is None else block[bands]


class ArraySink:
    """Collects windowed writes into a float32 array (the in-memory twin of a CubeWriter)."""

    def __init__(self, shape: tuple[int, int, int], meta: CubeMeta | None = None):
        self.shape = tuple(shape)
        self.meta = meta or CubeMeta()
        self.data = np.full(self.shape, np.nan, dtype=np.float32)

    def write(self, data: np.ndarray, window: Window | None = None) -> None:
        if window is None:
            self.data[...] = data
        else:
            self.data[:, window.row:window.row + window.height, window.col:window.col + window.width] = data

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def __enter__(self) -> "ArraySink":
        return self

    def __exit__(self, *exc) -> None:
        pass
