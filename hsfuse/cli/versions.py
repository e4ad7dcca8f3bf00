"""`hsfuse --versions`: what a bug report needs."""

from __future__ import annotations

import importlib.metadata
import platform


def print_versions() -> None:
    from .. import __version__

    print(f"hsfuse {__version__}")
    print(f"python {platform.python_version()} ({platform.platform()})")
    for name in ("numpy", "scipy", "torch", "rasterio", "spectral", "tifffile", "h5py", "scikit-image", "typer", "rich",
                 "safetensors", "colour-science", "matplotlib"):
        try:
            print(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            print(f"{name} not installed")
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
