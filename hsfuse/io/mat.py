"""MATLAB ``.mat`` cubes: v5 (scipy.io) and v7.3 (HDF5, h5py).

The cube is the variable named by ``var=`` (``--var``) or else the only 3-D
numeric array in the file. MATLAB stores images as ``(H, W, C)``: v5 arrays
are transposed to ``(C, H, W)``; h5py sees MATLAB's column-major v7.3 data with
axes reversed, ``(C, W, H)``, and swaps the last two. A 1-D variable named
``wavelength(s)``, ``wl`` or ``lambda`` with one value per band gives the
wavelengths (nm; µm if every value is < 100).

v5 variables are loaded whole on open (scipy cannot read part of one; a v5
variable is < 2 GB anyway); v7.3 cubes are read window by window through h5py.

Writes: v5 by default (``scipy.io.savemat``; windows are buffered in a temporary
``.npy`` memmap and saved at commit), v7.3 (h5py with MATLAB's 512-byte header,
written window by window) for cubes over 2 GB or with ``version="7.3"``. The
cube goes in ``meta.source['var']`` (else ``cube``) as ``(H, W, C)``, the
wavelengths in ``wavelength`` (1 x C, nm). MAT files have no nodata or
georeferencing: those are not written.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..cube import CubeMeta, Window
from ..errors import FormatError, OutputError, UsageError
from .base import CubeSource, CubeWriter, temp_path_for
from .envi import to_nm

#: MATLAB class name -> numpy dtype for the numeric classes hsfuse reads and writes
CLASSES = {c: np.dtype(c if c not in ("double", "single") else {"double": "float64", "single": "float32"}[c])
           for c in ("double", "single", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")}
CLASS_OF = {v: k for k, v in CLASSES.items()}
WAVELENGTH_NAMES = re.compile(r"^(wavelengths?|wl|lambdas?)$", re.IGNORECASE)
V5_LIMIT = 2**31 - 1  # bytes of one v5 variable
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_v73(path: Path) -> bool:
    """v7.3 files start with a 'MATLAB 7.3' text header (or are bare HDF5 written by h5py)."""
    with open(path, "rb") as fh:
        head = fh.read(128)
    return head.startswith(b"MATLAB 7.3") or head.startswith(_HDF5_SIGNATURE)


def _choose(path: Path, variables: list[tuple[str, tuple, str]], var: str | None) -> str:
    """The cube variable: ``var`` if given (checked), else the only 3-D numeric one."""
    cubes = [n for n, shape, cls in variables if len(shape) == 3 and cls in CLASSES]
    listing = ", ".join(f"{n} ({'x'.join(map(str, s))} {c})" for n, s, c in variables) or "none"
    if var is not None:
        found = {n: (s, c) for n, s, c in variables}
        if var not in found:
            raise UsageError(f"no variable '{var}' (3-D arrays: {', '.join(cubes) or 'none'}; all variables: {listing})", path)
        if var not in cubes:
            s, c = found[var]
            if len(s) == 2 and c in CLASSES and min(s) > 1:
                return var  # a named 2-D image: a one-band cube (a panchromatic MSI)
            raise UsageError(f"variable '{var}' is {'x'.join(map(str, s))} {c}, not a 3-D numeric array "
                             f"(3-D arrays: {', '.join(cubes) or 'none'})", path)
        return var
    if not cubes:
        raise FormatError(f"no 3-D numeric array in the file (variables: {listing})", path)
    if len(cubes) > 1:
        raise FormatError(f"several 3-D arrays ({', '.join(cubes)}): choose one with {{var}}", path, options=("var",))
    return cubes[0]


def _wavelength_var(variables: list[tuple[str, tuple, str]], bands: int) -> str | None:
    for n, shape, cls in variables:
        if WAVELENGTH_NAMES.match(n) and cls in CLASSES and int(np.prod(shape)) == bands and sorted(shape)[:-1] == [1] * (len(shape) - 1):
            return n
    return None


class Mat5Source(CubeSource):
    format = "mat"

    def __init__(self, path: Path, var: str | None):
        import scipy.io

        variables = [(n, tuple(s), c) for n, s, c in scipy.io.whosmat(str(path))]
        var = _choose(path, variables, var)
        shape = dict((n, s) for n, s, _ in variables)[var]
        bands = shape[2] if len(shape) == 3 else 1
        wl_name = _wavelength_var(variables, bands) if bands > 1 else None
        names = [var] + ([wl_name] if wl_name else [])
        loaded = scipy.io.loadmat(str(path), variable_names=names, squeeze_me=False)
        arr = loaded[var]
        if arr.ndim == 2:  # one band (a panchromatic image)
            arr = arr[:, :, None]
        self._data = arr.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W), a view
        self.files = [path]
        dtype = self._data.dtype.newbyteorder("=")  # files from big-endian machines load as such
        meta = CubeMeta(
            wavelengths=to_nm(np.ravel(loaded[wl_name]), None) if wl_name else None,
            source={"format": "mat", "var": var, "version": "5", "dtype": dtype.name},
        )
        super().__init__(path, self._data.shape, dtype, meta)

    def _read_raw(self, window: Window, bands: np.ndarray | None) -> np.ndarray:
        rs, cs = window.slices
        block = self._data[:, rs, cs]
        # a native-order copy: callers may write to it
        return np.array(block if bands is None else block[bands], dtype=self.dtype, order="C")


def _h5_variables(f) -> list[tuple[str, tuple, str]]:
    """(name, MATLAB-order shape, MATLAB class) of the top-level datasets of a v7.3 file."""
    import h5py

    out = []
    for name, obj in f.items():
        if name.startswith("#") or not isinstance(obj, h5py.Dataset):
            continue
        cls = obj.attrs.get("MATLAB_class")
        native = obj.dtype.newbyteorder("=")
        cls = cls.decode() if isinstance(cls, bytes) else (str(cls) if cls is not None else CLASS_OF.get(native, native.name))
        if obj.attrs.get("MATLAB_empty"):
            cls = f"empty {cls}"
        out.append((name, tuple(obj.shape[::-1]), cls))
    return out


class Mat73Source(CubeSource):
    format = "mat"

    def __init__(self, path: Path, var: str | None):
        import h5py

        self._file = h5py.File(path, "r")
        try:
            variables = _h5_variables(self._file)
            var = _choose(path, variables, var)
            ds = self._file[var]
            dtype = ds.dtype.newbyteorder("=")
            if dtype not in CLASS_OF:
                raise FormatError(f"variable '{var}' has unsupported type {ds.dtype}", path)
            flat = ds.ndim == 2  # one band (a panchromatic image): MATLAB (H, W) stored as (W, H)
            wl_name = None if flat else _wavelength_var(variables, ds.shape[0])
            wl = to_nm(np.ravel(self._file[wl_name][()]), None) if wl_name else None
        except BaseException:
            self._file.close()
            raise
        self._ds = ds  # (C, W, H): MATLAB's (H, W, C) with axes reversed
        self._flat = flat
        self.files = [path]
        meta = CubeMeta(wavelengths=wl, source={"format": "mat", "var": var, "version": "7.3", "dtype": dtype.name})
        shape = (1, ds.shape[1], ds.shape[0]) if flat else (ds.shape[0], ds.shape[2], ds.shape[1])
        super().__init__(path, shape, dtype, meta)

    def _read_raw(self, window: Window, bands: np.ndarray | None) -> np.ndarray:
        rs, cs = window.slices
        if self._flat:
            block = self._ds[cs, rs][None]
            return np.ascontiguousarray(block.transpose(0, 2, 1), dtype=self.dtype)
        if bands is None:
            block = self._ds[:, cs, rs]
        else:
            uniq = np.unique(bands)  # h5py wants increasing, unique indices
            block = self._ds[uniq.tolist(), cs, rs][np.searchsorted(uniq, bands)]
        return np.ascontiguousarray(block.transpose(0, 2, 1), dtype=self.dtype)  # native byte order

    def close(self) -> None:
        self._file.close()


def open_source(path: Path, var: str | None = None) -> CubeSource:
    path = Path(path)
    return Mat73Source(path, var) if is_v73(path) else Mat5Source(path, var)


def output_files(path: Path) -> list[Path]:
    return [Path(path)]


def _matlab_header() -> bytes:
    """The 128-byte text header MATLAB expects at the start of a v7.3 file's userblock."""
    text = f"MATLAB 7.3 MAT-file, Platform: hsfuse, Created on: {time.strftime('%a %b %d %H:%M:%S %Y')} HDF5 schema 1.00 ."
    return text.ljust(116).encode("ascii") + b"\x00" * 8 + b"\x00\x02IM"


class MatWriter(CubeWriter):
    format = "mat"

    def __init__(self, path: Path, shape: tuple[int, int, int], meta: CubeMeta, dtype: np.dtype,
                 var: str | None = None, version: str | None = None):
        super().__init__(path, shape, meta, dtype)
        if self.dtype not in CLASS_OF:
            raise OutputError(f"dtype {self.dtype.name} cannot be stored in MAT (supported: {', '.join(d.name for d in CLASS_OF)})", path)
        self.var = var or meta.source.get("var") or "cube"
        if not re.fullmatch(r"[A-Za-z]\w{0,62}", self.var):
            raise UsageError(f"'{self.var}' is not a valid MATLAB variable name", path)
        nb, height, width = self.shape
        if meta.wavelengths is not None and len(meta.wavelengths) != nb:
            raise OutputError(f"{len(meta.wavelengths)} wavelengths for {nb} bands", path)
        nbytes = nb * height * width * self.dtype.itemsize
        self.version = str(version) if version else ("7.3" if nbytes > V5_LIMIT else "5")
        if self.version not in ("5", "7.3"):
            raise UsageError(f"MAT version must be 5 or 7.3, not {version}", path)
        if self.version == "5" and nbytes > V5_LIMIT:
            raise UsageError(f"a {nbytes / 2**30:.1f} GiB cube does not fit a v5 MAT file (use version 7.3)", path)
        self._tmp = temp_path_for(self.path)
        self._pending = [(self._tmp, self.path)]
        # both layouts hold (C, W, H) C-ordered = MATLAB's column-major (H, W, C)
        if self.version == "7.3":
            import h5py

            self._h5 = h5py.File(self._tmp, "w", userblock_size=512)
            self._buf = self._h5.create_dataset(self.var, shape=(nb, width, height), dtype=self.dtype)
            self._buf.attrs["MATLAB_class"] = np.bytes_(CLASS_OF[self.dtype])
            if meta.wavelengths is not None:
                wl = self._h5.create_dataset("wavelength", data=np.asarray(meta.wavelengths, np.float64)[:, None])
                wl.attrs["MATLAB_class"] = np.bytes_("double")
        else:
            self._h5 = None
            self._npy = self._tmp.with_suffix(".npy")
            self._buf = np.lib.format.open_memmap(self._npy, mode="w+", dtype=self.dtype, shape=(nb, width, height))

    def _write_raw(self, window: Window, raw: np.ndarray) -> None:
        rs, cs = window.slices
        self._buf[:, cs, rs] = raw.transpose(0, 2, 1)

    def _finish(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            with open(self._tmp, "r+b") as fh:
                fh.write(_matlab_header())
            return
        import scipy.io

        mdict: dict[str, Any] = {self.var: self._buf.T}  # (H, W, C), Fortran-ordered: no reshuffle
        if self.meta.wavelengths is not None:
            mdict["wavelength"] = np.asarray(self.meta.wavelengths, np.float64)[None, :]
        self._buf.flush()
        scipy.io.savemat(self._tmp, mdict, format="5", do_compression=False)

    def _close_handles(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            return
        buf, self._buf = self._buf, None
        if buf is not None:
            buf._mmap.close()
        self._npy.unlink(missing_ok=True)


def create_writer(path: Path, shape: tuple[int, int, int], meta: CubeMeta, dtype: np.dtype, **opts: Any) -> MatWriter:
    """Options: ``var`` (variable name), ``version`` ('5' or '7.3'; default 7.3 only above 2 GB)."""
    return MatWriter(Path(path), shape, meta, dtype, **opts)
