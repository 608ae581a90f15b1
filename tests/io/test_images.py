"""Depth, label/instance and colour image files: exact round trips and clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pri3d.io.images import (
    read_depth_png,
    read_label_png,
    read_rgb,
    write_depth_png,
    write_jpeg,
    write_label_png,
)


def _smooth_rgb(height: int = 30, width: int = 40) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([rows * 7, cols * 6, 200 - rows - cols], axis=-1).astype(np.uint8)


def test_depth_png_round_trips_full_uint16_range(tmp_path: Path) -> None:
    depth = np.random.default_rng(0).integers(0, 65536, size=(60, 80), dtype=np.uint16)
    depth[0, :4] = [0, 1, 255, 65535]
    path = tmp_path / "000000.png"
    write_depth_png(path, depth)
    with Image.open(path) as image:  # stored as a real 16-bit greyscale PNG, not 8-bit or RGB
        assert image.format == "PNG" and image.mode.startswith("I")
    read = read_depth_png(path)
    assert read.dtype == np.uint16
    np.testing.assert_array_equal(read, depth)


@pytest.mark.parametrize(
    "image",
    [np.zeros((6, 8), np.uint8), np.zeros((6, 8, 3), np.uint8)],
    ids=["8-bit grey", "rgb"],
)
def test_depth_png_refuses_other_pixel_formats(tmp_path: Path, image: np.ndarray) -> None:
    path = tmp_path / "not_depth.png"
    Image.fromarray(image).save(path)
    with pytest.raises(ValueError, match=r"not_depth\.png: expected a 16-bit single-channel PNG"):
        read_depth_png(path)


def test_depth_png_refuses_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "depth.jpg"
    write_jpeg(path, _smooth_rgb())
    with pytest.raises(ValueError, match=r"depth\.jpg: expected a 16-bit single-channel PNG .* got JPEG"):
        read_depth_png(path)


@pytest.mark.parametrize(
    "depth",
    [
        np.zeros((6, 8), np.float32),
        np.zeros((6, 8), np.uint8),
        np.zeros((6, 8, 1), np.uint16),
        np.zeros((0, 8), np.uint16),
    ],
    ids=["float32", "uint8", "3-d", "empty"],
)
def test_write_depth_png_validates(tmp_path: Path, depth: np.ndarray) -> None:
    path = tmp_path / "bad.png"
    with pytest.raises(ValueError, match=r"bad\.png: expected a non-empty uint16 \[H, W\] array"):
        write_depth_png(path, depth)
    assert not path.exists()


def test_label_png_keeps_uint8(tmp_path: Path) -> None:
    labels = np.random.default_rng(1).integers(0, 41, size=(30, 40), dtype=np.uint8)
    path = tmp_path / "label.png"
    write_label_png(path, labels)
    read = read_label_png(path)
    assert read.dtype == np.uint8
    np.testing.assert_array_equal(read, labels)


def test_instance_png_keeps_uint16(tmp_path: Path) -> None:
    # ScanNet instance images: NYU40 label * 1000 + instance index.
    rng = np.random.default_rng(2)
    instances = (rng.integers(0, 41, size=(30, 40)) * 1000 + rng.integers(0, 50, size=(30, 40))).astype(
        np.uint16
    )
    instances[0, 0] = 65535
    path = tmp_path / "instance.png"
    write_label_png(path, instances)
    read = read_label_png(path)
    assert read.dtype == np.uint16
    np.testing.assert_array_equal(read, instances)


def test_label_png_refuses_wider_dtypes(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"labels\.png: expected a non-empty uint8 or uint16 \[H, W\] array, got int64"
    ):
        write_label_png(tmp_path / "labels.png", np.zeros((4, 4), np.int64))


def test_palette_label_png_reads_indices(tmp_path: Path) -> None:
    indices = np.array([[0, 1, 2], [3, 40, 0]], np.uint8)
    image = Image.frombytes("P", (3, 2), indices.tobytes())
    image.putpalette([value for i in range(256) for value in (i, 255 - i, 0)])
    path = tmp_path / "palette.png"
    image.save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == "P"
    np.testing.assert_array_equal(read_label_png(path), indices)


def test_label_png_refuses_rgb(tmp_path: Path) -> None:
    path = tmp_path / "rgb_label.png"
    Image.fromarray(_smooth_rgb()).save(path)
    with pytest.raises(ValueError, match=r"rgb_label\.png: expected a single-channel .* got mode 'RGB'"):
        read_label_png(path)


def test_jpeg_round_trip_is_close(tmp_path: Path) -> None:
    rgb = _smooth_rgb()
    path = tmp_path / "000000.jpg"
    write_jpeg(path, rgb, quality=90)
    read = read_rgb(path)
    assert read.dtype == np.uint8 and read.shape == rgb.shape
    assert np.abs(read.astype(int) - rgb.astype(int)).mean() < 2.0
    # Lower quality must still decode but be no closer than high quality.
    write_jpeg(tmp_path / "low.jpg", rgb, quality=10)
    low_error = np.abs(read_rgb(tmp_path / "low.jpg").astype(int) - rgb.astype(int)).mean()
    assert low_error >= np.abs(read.astype(int) - rgb.astype(int)).mean()


def test_read_rgb_expands_grey_and_refuses_depth(tmp_path: Path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey).save(tmp_path / "grey.png")
    rgb = read_rgb(tmp_path / "grey.png")
    assert rgb.shape == (3, 4, 3)
    np.testing.assert_array_equal(rgb[..., 1], grey)
    write_depth_png(tmp_path / "depth.png", np.full((3, 4), 1234, np.uint16))
    with pytest.raises(ValueError, match=r"depth\.png: 'I(;16)?' image is not 8-bit colour"):
        read_rgb(tmp_path / "depth.png")


def test_write_jpeg_validates(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"a\.jpg: expected a non-empty uint8 \[H, W, 3\] array, got uint8 \[30, 40\]"
    ):
        write_jpeg(tmp_path / "a.jpg", _smooth_rgb()[..., 0])
    with pytest.raises(ValueError, match=r"b\.jpg: JPEG quality must be in 1\.\.100, got 0"):
        write_jpeg(tmp_path / "b.jpg", _smooth_rgb(), quality=0)


def test_missing_file_error_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.png"):
        read_depth_png(tmp_path / "nowhere.png")
