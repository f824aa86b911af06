"""The one image preprocessing function, used by tf.data and by every export signature.

Training, ``serving_default`` and ``serving_examples`` all call ``preprocess_image``, so
training/serving skew in preprocessing is impossible by construction.
"""

from __future__ import annotations

import tensorflow as tf

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NOT_JPEG_OR_PNG = ("Unknown image file format: expected JPEG or PNG, the formats Sightline "
                   "trains on and its edge runtime reads")


def preprocess_image(encoded: tf.Tensor, input_size: int) -> tf.Tensor:
    """Encoded JPEG/PNG bytes (scalar string) -> float32 [input_size, input_size, 3] in [0, 1].

    The image is stretched to the square input (no letterbox), so normalized boxes are
    unchanged by preprocessing and decoded boxes map straight back to the original image.
    """
    # JPEG with the accurate integer IDCT: decode_image's default (IFAST) differs from
    # libjpeg's standard decode by up to 12/255 per pixel, which Pillow on an edge device
    # (serving/edge_preprocess.py) would then have to imitate. Only JPEG and PNG, as there:
    # a GIF or BMP must get the same refusal from every backend.
    is_jpeg = tf.io.is_jpeg(encoded)
    is_png = tf.equal(tf.strings.substr(encoded, 0, len(_PNG_MAGIC)), _PNG_MAGIC)
    known = tf.debugging.Assert(tf.logical_or(is_jpeg, is_png), [NOT_JPEG_OR_PNG])
    with tf.control_dependencies([known]):
        image = tf.cond(
            is_jpeg,
            lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_png(encoded, channels=3),
        )
    image = tf.image.convert_image_dtype(image, tf.float32)
    image = tf.image.resize(image, (input_size, input_size), method="bilinear", antialias=True)
    image = tf.clip_by_value(image, 0.0, 1.0)  # antialiased resampling can overshoot
    return tf.ensure_shape(image, (input_size, input_size, 3))


def preprocess_batch(encoded: tf.Tensor, input_size: int) -> tf.Tensor:
    """A [B] batch of encoded images -> float32 [B, input_size, input_size, 3]."""
    return tf.map_fn(
        lambda e: preprocess_image(e, input_size),
        encoded,
        fn_output_signature=tf.TensorSpec((input_size, input_size, 3), tf.float32),
    )
