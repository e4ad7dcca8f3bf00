"""Reader and writer base classes shared by every format.

A reader (``CubeSource``) opens lazily: ``shape``/``dtype``/``meta`` are known
after opening, pixels are read window by window (memory-mapped where the format
allows), so a scene larger than memory can be streamed.

A writer (``CubeWriter``) writes into temporary file(s) beside the target and
renames them into place only in ``commit()``; ``abort()`` (called on any
exception, KeyboardInterrupt included) deletes them. An interrupted run
therefore never leaves a half-written output.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Sequence

import numpy as np

from ..cube import Cube, CubeMeta, Window, to_physical, to_raw
from ..errors import HsfuseError, FormatError, OutputError


class CubeSource:
    """An opened cube file. Subclasses implement ``_read_raw``."""

    format: str = "?"

    def __init__(self, path: Path, shape: tuple[int, int, int], dtype: np.dtype, meta: CubeMeta):
        self.path = Path(path)
        self.shape = tuple(int(v) for v in shape)
        self.dtype = np.dtype(dtype)
        self.meta = meta

    # -- to implement -------------------------------------------------
    def _read_raw(self, window: Window, bands: np.ndarray | None) -> np.ndarray:
        """Stored numbers of ``window`` (already clipped to the image), (C', h, w)."""
        raise NotImplementedError

    # -- public --------------------------------------------------------
    @property
    def bands(self) -> int:
        return self.shape[0]

    @property
    def height(self) -> int:
        return self.shape[1]

    @property
    def width(self) -> int:
        return self.shape[2]

    def read(self, window: Window | None = None, bands: Sequence[int] | None = None, raw: bool = False) -> np.ndarray:
        """(C, h, w): float32 physical values with NaN for nodata, or stored numbers if ``raw``."""
        if window is None:
            window = Window(0, 0, self.height, self.width)
        window = window.clip(self.height, self.width)
        idx = None if bands is None else np.asarray(bands, dtype=np.intp)
        try:
            data = np.asarray(self._read_raw(window, idx))
        except HsfuseError:
            raise
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - a corrupt file found while reading, not while opening
            msg = " ".join(str(e).split()) or type(e).__name__
            raise FormatError(f"cannot read the data (corrupt or truncated file?): {type(e).__name__}: {msg}",
                              self.path) from None
        if np.iscomplexobj(data):
            raise FormatError("complex-valued data: hsfuse takes real cubes (take abs() or .real yourself)", self.path)
        return data if raw else to_physical(data, self.meta)

    def to_cube(self) -> Cube:
        return Cube(self.read(), self.meta, self.path)

    def close(self) -> None:
        pass

    def __enter__(self) -> "CubeSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def temp_path_for(final: Path) -> Path:
    """A hidden temporary name in the same directory (same filesystem, so rename is atomic).

    The name carries the writing process's id: temporaries that a killed run (SIGKILL, power loss) left
    for the same output are removed here, once their process is gone.
    """
    _remove_stale_temps(final)
    token = f"{os.getpid()}-{secrets.token_hex(3)}"
    return final.with_name(f".{final.stem}.hsfuse-tmp-{token}{final.suffix}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale_temps(final: Path) -> None:
    prefix = f".{final.stem}.hsfuse-tmp-"
    try:
        siblings = list(final.parent.glob(f"{prefix}*"))
    except OSError:
        return
    for p in siblings:
        pid = p.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                p.unlink()
            except OSError:
                pass


def atomic_write(path: str | Path, write) -> Path:
    """``write(tmp_path)`` to a hidden temporary file beside ``path``, then rename it into place.

    For the small side outputs (JSON estimates, CSV tables, PNG reports): an interruption or a full disk
    leaves nothing half-written, and the temporary name is one the next run recognises.
    """
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class CubeWriter:
    """Writes a cube window by window, atomically.

    Subclasses create their temporary file(s) in ``__init__`` (listing each
    ``(temp, final)`` pair in ``self._pending``), implement ``_write_raw`` and,
    if needed, ``_finish`` (flush headers, close handles) before the renames.
    """

    format: str = "?"

    def __init__(self, path: Path, shape: tuple[int, int, int], meta: CubeMeta, dtype: np.dtype | str = "float32"):
        self.path = Path(path)
        self.shape = tuple(int(v) for v in shape)
        self.meta = meta
        self.dtype = np.dtype(dtype)
        self._pending: list[tuple[Path, Path]] = []
        self._done = False

    def _write_raw(self, window: Window, raw: np.ndarray) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        pass

    def _close_handles(self) -> None:
        """Release open handles (called before commit renames and on abort)."""

    def write(self, data: np.ndarray, window: Window | None = None) -> None:
        """Write float physical values (C, h, w) at ``window`` (default: whole image)."""
        if window is None:
            window = Window(0, 0, self.shape[1], self.shape[2])
        data = np.asarray(data)
        if data.shape != (self.shape[0], window.height, window.width):
            raise ValueError(f"window data shape {data.shape} does not match {window}")
        try:
            raw = to_raw(data, self.meta, self.dtype)
        except ValueError as e:
            raise OutputError(str(e), self.path) from None
        self._write_raw(window, raw)

    def commit(self) -> Path:
        if self._done:
            return self.path
        try:
            self._finish()
            self._close_handles()
        except BaseException:
            self.abort()
            raise
        # several files (ENVI header + data) land together: the old ones are moved aside first and put
        # back if any rename fails, so a reader never sees a new data file with an old header
        moved: list[tuple[Path, Path]] = []
        placed: list[Path] = []
        try:
            for _, final in self._pending:
                if len(self._pending) > 1 and final.exists():
                    aside = temp_path_for(final)
                    os.replace(final, aside)
                    moved.append((aside, final))
            for tmp, final in self._pending:
                os.replace(tmp, final)
                placed.append(final)
        except BaseException:
            for final in placed:
                final.unlink(missing_ok=True)
            for aside, final in moved:
                os.replace(aside, final)
            self.abort()
            raise
        for aside, _ in moved:
            aside.unlink(missing_ok=True)
        self._done = True
        return self.path

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._close_handles()
        finally:
            for tmp, _ in self._pending:
                try:
                    tmp.unlink()
                except FileNotFoundError:
                    pass

    def __enter__(self) -> "CubeWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
