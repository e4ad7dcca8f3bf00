"""hsfuse: hyperspectral image super-resolution by fusion (LR-HSI + HR-MSI -> HR-HSI)."""

__version__ = "0.1.0"
