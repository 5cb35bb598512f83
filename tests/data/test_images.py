import numpy as np
import pytest
import torch
from conftest import shared_data, tiny_config
from PIL import Image

from protomdm.data.images import box_to_original, read_image, to_model_input
from protomdm.errors import ImageError


def test_png_grey_and_16_bit(tmp_path):
    a = (np.arange(12, dtype=np.uint8) * 20).reshape(3, 4)
    Image.fromarray(a).save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.size == (3, 4) and np.allclose(img.pixels, a / 255.0)
    b = (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)
    Image.fromarray(b).save(tmp_path / "g16.png")
    assert np.allclose(read_image(tmp_path / "g16.png").pixels, b / 65535.0, atol=1e-6)


def test_rgb_jpeg_and_npy(tmp_path):
    rgb = np.zeros((8, 10, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=100)
    img = read_image(tmp_path / "c.jpg")
    assert img.pixels.shape == (8, 10, 3) and img.pixels[..., 0].min() > 0.95
    np.save(tmp_path / "a.npy", np.array([[0.0, 500.0], [1000.0, 250.0]]))
    assert np.allclose(read_image(tmp_path / "a.npy").pixels, [[0, 0.5], [1, 0.25]])
    np.save(tmp_path / "chw.npy", np.random.rand(3, 5, 6).astype(np.float32))
    assert read_image(tmp_path / "chw.npy").pixels.shape == (5, 6, 3)


@pytest.mark.parametrize("content,message", [
    (b"", "empty"), (b"not an image at all", "not a readable image"),
])
def test_bad_files(tmp_path, content, message):
    p = tmp_path / "x.png"
    p.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        read_image(p)


def test_bad_arrays(tmp_path):
    np.save(tmp_path / "nan.npy", np.array([[np.nan, 1.0]]))
    with pytest.raises(ImageError, match="NaN"):
        read_image(tmp_path / "nan.npy")
    np.save(tmp_path / "zero.npy", np.zeros((0, 5)))
    with pytest.raises(ImageError, match="empty"):
        read_image(tmp_path / "zero.npy")
    np.save(tmp_path / "4d.npy", np.zeros((2, 2, 2, 2)))
    with pytest.raises(ImageError, match="shape"):
        read_image(tmp_path / "4d.npy")


def test_huge_image_is_refused_before_decoding(tmp_path):
    p = tmp_path / "huge.png"
    Image.new("L", (20000, 4000)).save(p)  # 80 MP of zeros compresses to a small file
    with pytest.raises(ImageError, match="too large"):
        read_image(p)


def test_model_input_resizes_normalises_and_matches_channels():
    cfg = tiny_config(img_size=(16, 20))
    x = to_model_input(np.full((32, 40), 0.5, np.float32), cfg)
    assert x.shape == (1, 3, 16, 20)
    assert torch.allclose(x[0, :, 0, 0], (0.5 - torch.tensor(cfg.mean)) / torch.tensor(cfg.std))
    grey = tiny_config(in_channels=1, mean=(0.5,), std=(0.25,))
    assert to_model_input(np.ones((10, 10, 3), np.float32), grey).shape == (1, 1, 48, 48)


def test_box_to_original_rounds_outwards():
    assert box_to_original((0, 0, 224, 224), (224, 224), (1024, 1024)) == (0, 0, 1024, 1024)
    assert box_to_original((10, 20, 11, 21), (100, 100), (1000, 500)) == (50, 200, 55, 210)


def test_real_nih_png():
    root = shared_data("nih-sample")
    img = read_image(root / "images" / "00001933_000.png")
    assert img.size == (1024, 1024) and img.pixels.ndim == 2 and 0 <= img.pixels.min() < img.pixels.max() <= 1


def test_real_cub_jpeg():
    root = shared_data("cub-sample")
    path = next((root / "images").rglob("*.jpg"))
    img = read_image(path)
    assert img.pixels.ndim == 3 and img.pixels.shape[2] == 3
