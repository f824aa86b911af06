"""The training/serving image preprocessing, in numpy + Pillow, for the edge runtime.

An edge device runs the TFLite model with ai-edge-litert / tflite-runtime and cannot
import TensorFlow, so this module re-implements ``trainer.preprocess.preprocess_image``
(``tf.io.decode_image`` -> ``convert_image_dtype`` -> antialiased bilinear
``tf.image.resize`` -> clip) without it. ``tests/test_edge_preprocess.py`` pins it to
``trainer/preprocess.py`` image by image; it must never import TensorFlow.

It reproduces TensorFlow's resize kernel (scale_and_translate_op.cc: same spans, same
float32 weights, same accumulation order, rows then columns), so the result is bit for
bit the same. JPEGs decode alike because training decodes them with libjpeg's accurate
IDCT, as Pillow does.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

_F32 = np.float32
_JPEG = ("JPEG", "MPO")  # MPO (camera multi-picture) files are JPEGs; TF decodes frame 0
_FORMATS = (*_JPEG, "PNG")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def preprocess_image(encoded: bytes, input_size: int) -> np.ndarray:
    """Encoded JPEG/PNG bytes -> float32 [input_size, input_size, 3] in [0, 1].

    Same values as ``trainer.preprocess.preprocess_image`` (stretched to the square,
    no letterbox), so the TFLite model sees what the SavedModel sees.

    Raises:
      ValueError: the bytes are not a decodable JPEG/PNG, or input_size < 1.
    """
    if input_size < 1:
        raise ValueError(f"input_size must be >= 1, got {input_size}")
    image = _decode_rgb(encoded).astype(_F32) * _F32(1.0 / 255)  # convert_image_dtype
    return np.clip(_resize(image, input_size), 0.0, 1.0)


def _decode_rgb(encoded: bytes) -> np.ndarray:
    """uint8 [H, W, 3] exactly as ``tf.io.decode_image(channels=3)`` returns it."""
    try:
        image = Image.open(io.BytesIO(encoded))
        if image.format not in _FORMATS:
            raise ValueError(f"unsupported image format {image.format}; expected JPEG or PNG")
        image.load()
    except _DECODE_ERRORS as e:
        problem = "not an image Pillow recognises" if isinstance(e, UnidentifiedImageError) else e
        raise ValueError(f"cannot decode image ({len(encoded)} bytes): {problem}") from e
    if image.mode in ("I", "I;16", "I;16B"):  # 16-bit grey: libpng keeps the high byte
        grey = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode == "CMYK":  # Pillow inverts Adobe CMYK; this is TF's jpeg_mem.cc formula
        cmyk = np.asarray(image).astype(np.int32)
        cmy, k = cmyk[..., :3], cmyk[..., 3:]
        rgb = (255 - k) * (255 - cmy) // 255 if "adobe" in image.info else k * cmy // 255
        return rgb.astype(np.uint8)
    image.info.pop("transparency", None)  # TF drops alpha and tRNS; grey/palette -> RGB
    return np.asarray(image.convert("RGB"))


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """``tf.image.resize(bilinear, antialias=True)``: rows first, then columns, as TF does."""
    rows = _weighted_rows(image, *_spans(image.shape[0], size))
    cols = _weighted_rows(np.ascontiguousarray(rows.transpose(1, 0, 2)),
                          *_spans(image.shape[1], size))
    return np.ascontiguousarray(cols.transpose(1, 0, 2))


def _spans(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """ComputeSpansCore (triangle kernel, antialias, no translation) in float32.

    Returns source indices and weights, both [out_size, span]; padding entries have
    weight 0 (TF adds them too). Every float op mirrors the C++ so weights are equal bits.
    """
    scale = _F32(out_size) / _F32(in_size)
    inv_scale = _F32(1.0 / float(scale))  # C++: const float inv_scale = 1.0 / scale
    kernel_scale = max(inv_scale, _F32(1.0))  # widen the kernel only when downscaling
    sample = (np.arange(out_size, dtype=_F32) + _F32(0.5)) * inv_scale
    start = np.clip(np.ceil(sample - kernel_scale - _F32(0.5)), 0, in_size - 1).astype(np.int64)
    end = np.clip(np.floor(sample + kernel_scale - _F32(0.5)), 0, in_size - 1).astype(np.int64) + 1
    source = start[:, None] + np.arange(int((end - start).max()))
    position = (source.astype(_F32) + _F32(0.5)) - sample[:, None]
    weights = np.maximum(_F32(1.0) - np.abs(position * (_F32(1.0) / kernel_scale)), _F32(0.0))
    weights[source >= end[:, None]] = 0.0
    total = np.zeros(out_size, _F32)
    for k in range(weights.shape[1]):  # C++ sums in span order; float addition order matters
        total += weights[:, k]
    weights *= (_F32(1.0) / total)[:, None]
    return np.minimum(source, in_size - 1), weights


def _weighted_rows(image: np.ndarray, source: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """out[i] = sum_k weights[i, k] * image[source[i, k]], accumulated in k order like TF."""
    out = np.zeros((source.shape[0], *image.shape[1:]), _F32)
    term = np.empty_like(out)
    for k in range(source.shape[1]):
        np.take(image, source[:, k], axis=0, out=term)
        term *= weights[:, k, None, None]
        out += term
    return out
