"""Pins serving/edge_preprocess.py (numpy + Pillow, for the edge runtime) to the TensorFlow
preprocessing in trainer/preprocess.py, and checks that the edge module never loads TF."""

import io
import pathlib
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from serving.edge_preprocess import preprocess_image
from trainer.preprocess import preprocess_image as tf_preprocess_image

# Max |edge - TF| allowed per output value. Measured on every case below: 0.0 (bit-identical
# with TF 2.16.2 / Pillow 13.0.0 on x86-64). 1e-6 only leaves room for float rounding on
# other builds (a few ulps, e.g. FMA): one decoded pixel off by 1/255 already moves an
# output value by >1e-4 (TF's default IFAST JPEG decode moved values by up to 1.6e-2).
ATOL = 1e-6

REPO = pathlib.Path(__file__).resolve().parents[1]


def _noise(seed: int, shape: tuple[int, ...], dtype=np.uint8, high: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, shape, dtype=dtype)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _palette_png() -> bytes:
    """8-bit palette PNG with a tRNS chunk (per-entry alpha): TF ignores the alpha."""
    image = Image.frombytes("P", (90, 60), _noise(6, (60, 90), high=16).tobytes())
    image.putpalette(_noise(7, (16 * 3,)).tolist())
    return _encode(image, "PNG", transparency=bytes(range(0, 256, 16)))


def _cmyk_jpeg() -> bytes:
    return _encode(Image.frombytes("CMYK", (80, 60), _noise(8, (60, 80, 4)).tobytes()), "JPEG")


# (id, encoded image, input_size); all content is seeded noise, the hardest case for JPEG.
CASES = [
    ("jpeg-420", lambda: _encode(Image.fromarray(_noise(1, (150, 200, 3))), "JPEG",
                                 quality=90), 128),
    ("jpeg-422", lambda: _encode(Image.fromarray(_noise(2, (150, 200, 3))), "JPEG",
                                 subsampling=1), 128),
    ("jpeg-444", lambda: _encode(Image.fromarray(_noise(3, (150, 200, 3))), "JPEG",
                                 subsampling=0), 128),
    ("jpeg-420-odd-size-progressive", lambda: _encode(
        Image.fromarray(_noise(4, (251, 333, 3))), "JPEG", quality=80, progressive=True), 128),
    ("jpeg-grey", lambda: _encode(Image.fromarray(_noise(5, (150, 200))), "JPEG"), 128),
    ("jpeg-cmyk", _cmyk_jpeg, 64),
    ("png-rgb", lambda: _encode(Image.fromarray(_noise(10, (150, 200, 3))), "PNG"), 128),
    ("png-grey", lambda: _encode(Image.fromarray(_noise(11, (150, 200))), "PNG"), 128),
    ("png-grey-16bit", lambda: _encode(Image.fromarray(
        _noise(12, (150, 200), np.uint16, 1 << 16)), "PNG"), 128),
    ("png-grey-alpha", lambda: _encode(Image.fromarray(_noise(13, (150, 200, 2))), "PNG"), 128),
    ("png-rgba", lambda: _encode(Image.fromarray(_noise(14, (150, 200, 4))), "PNG"), 128),
    ("png-palette-trns", _palette_png, 128),
    ("downscale-200x150-to-128", lambda: _encode(Image.fromarray(_noise(20, (150, 200, 3))),
                                                 "PNG"), 128),
    ("upscale-50x70-to-128", lambda: _encode(Image.fromarray(_noise(21, (70, 50, 3))),
                                             "PNG"), 128),
    ("not-a-multiple-517x333-to-320", lambda: _encode(Image.fromarray(_noise(22, (333, 517, 3))),
                                                      "PNG"), 320),
    ("one-axis-up-one-down-300x40-to-128", lambda: _encode(
        Image.fromarray(_noise(23, (40, 300, 3))), "PNG"), 128),
    ("same-size-128", lambda: _encode(Image.fromarray(_noise(24, (128, 128, 3))), "PNG"), 128),
]


@pytest.mark.parametrize("make, input_size", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_matches_training_preprocessing(make, input_size):
    encoded = make()
    expected = tf_preprocess_image(tf.constant(encoded), input_size).numpy()
    actual = preprocess_image(encoded, input_size)
    assert actual.dtype == np.float32 and actual.shape == (input_size, input_size, 3)
    assert 0.0 <= actual.min() and actual.max() <= 1.0
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ATOL)


def _png_with_bad_idat() -> bytes:
    png = bytearray(_encode(Image.fromarray(_noise(30, (40, 40, 3))), "PNG"))
    start = png.index(b"IDAT") + 4
    length = int.from_bytes(png[start - 8:start - 4], "big")
    png[start + 2:start + length] = b"\x00" * (length - 2)  # garbage deflate stream
    crc = zlib.crc32(bytes(png[start - 4:start + length]))
    png[start + length:start + length + 4] = crc.to_bytes(4, "big")  # valid CRC, bad data
    return bytes(png)


@pytest.mark.parametrize("encoded, problem", [
    (b"", "cannot decode"),
    (b"definitely not an image", "cannot decode"),
    (_encode(Image.fromarray(_noise(31, (64, 64, 3))), "JPEG")[:300], "(?i)truncated"),
    (_encode(Image.fromarray(_noise(32, (64, 64, 3))), "PNG")[:300], "(?i)truncated"),
    (_png_with_bad_idat(), "cannot decode"),
    (_encode(Image.fromarray(_noise(33, (8, 8, 3))), "TIFF"), "unsupported image format TIFF"),
], ids=["empty", "text", "truncated-jpeg", "truncated-png", "corrupt-png-data", "tiff"])
def test_bad_bytes_raise_value_error(encoded, problem):
    with pytest.raises(ValueError, match=problem):
        preprocess_image(encoded, 32)


@pytest.mark.parametrize("fmt", ["GIF", "BMP"])
def test_training_and_edge_preprocessing_both_refuse_other_formats(fmt):
    import tensorflow as tf

    from trainer.preprocess import NOT_JPEG_OR_PNG
    from trainer.preprocess import preprocess_image as tf_preprocess

    encoded = _encode(Image.fromarray(_noise(34, (16, 16, 3))), fmt)
    with pytest.raises(ValueError, match=f"unsupported image format {fmt}"):
        preprocess_image(encoded, 32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=NOT_JPEG_OR_PNG):
        tf_preprocess(tf.constant(encoded), 32)


def test_does_not_import_tensorflow():
    code = (
        "import io, sys\n"
        "from PIL import Image\n"
        "import serving.edge_preprocess as ep\n"
        "png = io.BytesIO(); Image.new('RGB', (9, 7)).save(png, 'PNG')\n"
        "ep.preprocess_image(png.getvalue(), 4)\n"
        "assert 'tensorflow' not in sys.modules, 'serving.edge_preprocess imported tensorflow'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
