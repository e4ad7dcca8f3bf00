"""Band folders (CAVE layout): Pillow-written PNG/TIFF bands read lazily, bit-exactly, in natural order."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hsfuse.cube import Window
from hsfuse.errors import FormatError
from hsfuse.io import open_cube, read_cube
from hsfuse.io.bandfolder import natural_key


def _bands(n=4, h=6, w=5, dtype="uint16", seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max, (n, h, w), endpoint=True).astype(dtype)


def _save(folder, cube, names, ext=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    for band, name in zip(cube, names):
        Image.fromarray(band).save(folder / f"{name}{ext}")


def test_cave_layout_16bit_png(tmp_path):
    cube = _bands(31, 8, 6)
    folder = tmp_path / "scene_ms"
    _save(folder, cube, [f"scene_ms_{i:02d}" for i in range(1, 32)])
    (folder / "Thumbs.db").write_bytes(b"junk")
    Image.fromarray((cube[0] >> 8).astype("uint8")).convert("RGB").save(folder / "scene_RGB.bmp")
    with Image.open(folder / "scene_ms_01.png") as im:
        assert im.mode == "I;16"
    with open_cube(folder) as src:
        assert src.format == "bands" and src.shape == (31, 8, 6) and src.dtype == np.uint16
        phys = src.read(Window(1, 1, 3, 3), bands=[30, 2])
        assert list(src._cache) == [30, 2]  # only the bands asked for were decoded
        np.testing.assert_allclose(phys, cube[[30, 2], 1:4, 1:4] / 65535, rtol=1e-6)
        assert 0 <= phys.min() and phys.max() <= 1
        np.testing.assert_array_equal(src.read(raw=True), cube)
        np.testing.assert_allclose(src.meta.wavelengths, 400 + 10 * np.arange(31))
        assert src.meta.scale == 1 / 65535


def test_natural_order_and_no_wavelengths_without_cave_names(tmp_path):
    cube = _bands(11, dtype="uint8")
    _save(tmp_path / "f", cube, [f"band_{i}" for i in range(1, 12)])
    assert sorted(["b_10", "b_2", "b_1"], key=natural_key) == ["b_1", "b_2", "b_10"]
    with open_cube(tmp_path / "f") as src:
        assert src.meta.band_names[:3] == ["band_1", "band_2", "band_3"] and src.meta.band_names[-1] == "band_11"
        np.testing.assert_array_equal(src.read(raw=True), cube)
        assert src.meta.wavelengths is None and src.meta.scale == 1 / 255


def test_nested_folder_tiff_bands(tmp_path):
    cube = _bands(3)
    _save(tmp_path / "outer" / "outer", cube, ["b1", "b2", "b3"], ext=".tif")
    (tmp_path / "outer" / "readme.txt").write_text("not a band")
    with open_cube(tmp_path / "outer") as src:
        np.testing.assert_array_equal(src.read(raw=True), cube)


def test_rgba_bands_take_first_channel(tmp_path):
    grey = _bands(2, dtype="uint8")
    folder = tmp_path / "rgba"
    folder.mkdir()
    for i, band in enumerate(grey):
        rgba = np.stack([band, 255 - band, band // 2, np.full_like(band, 255)], -1)
        Image.fromarray(rgba, "RGBA").save(folder / f"x_{i}.png")
    np.testing.assert_allclose(read_cube(folder).data, grey / 255, rtol=1e-6)


def test_bands_must_agree(tmp_path):
    _save(tmp_path / "size", _bands(1), ["a"])
    _save(tmp_path / "size", _bands(1, h=7), ["b"])
    with pytest.raises(FormatError, match="b.png is 5x7"):
        open_cube(tmp_path / "size")
    _save(tmp_path / "depth", _bands(1), ["a"])
    _save(tmp_path / "depth", _bands(1, dtype="uint8"), ["b"])
    with pytest.raises(FormatError, match="bit depths differ"):
        open_cube(tmp_path / "depth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="no band images"):
        open_cube(tmp_path / "empty")


@pytest.mark.shared
def test_real_cave_scene(shared_data):
    folder = next(p for p in sorted((shared_data / "cave").iterdir()) if p.is_dir())
    with open_cube(folder) as src:
        assert src.shape == (31, 512, 512) and src.dtype == np.uint16
        band = src.read(bands=[6], raw=True)[0]
    with Image.open(folder / f"{folder.name}_07.png") as im:
        ref = np.asarray(im)
    np.testing.assert_array_equal(band, ref)
