"""`hsfuse --versions`: what a bug report needs."""

from __future__ import annotations

import importlib
import platform


def print_versions() -> None:
    from .. import __version__

    print(f"hsfuse {__version__}")
    print(f"python {platform.python_version()} ({platform.platform()})")
    for name in ("numpy", "scipy", "torch", "rasterio", "spectral", "tifffile", "h5py", "skimage", "typer", "rich", "safetensors"):
        try:
            mod = importlib.import_module(name)
            print(f"{name} {getattr(mod, '__version__', '?')}")
        except Exception as e:  # a broken install is exactly what this report is for
            print(f"{name} not importable ({type(e).__name__})")
    try:
        import rasterio

        print(f"gdal {rasterio.__gdal_version__}")
    except Exception:
        pass
    try:
        import torch

        print(f"cuda available: {torch.cuda.is_available()} (torch CUDA {torch.version.cuda})")
    except Exception:
        pass
