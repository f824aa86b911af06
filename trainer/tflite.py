"""TFLite variants of a trained detector: float32, float16, post-training int8, QAT int8.

Each is one flatbuffer holding the detector *and* ``decode_detections``, so an edge app
gets the SavedModel's outputs (boxes, scores, classes, count) from the file alone, with
no decode to re-implement. The input is one preprocessed image, [1, S, S, 3] RGB in
[0, 1] (float32), or uint8 for the int8 variants (quantized with the input tensor's
scale and zero point). In the int8 variants the detector body is int8; its output
convs and decode run in float (see ``trainer.qat``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tensorflow.lite.python import convert as lite_convert

from data import feature_spec as fs
from trainer.decode import decode_detections
from trainer.input import records_in_id_order
from trainer.preprocess import preprocess_image
from trainer.qat import FLOAT_LAYERS

FLOAT32 = "float32"
FP16 = "fp16"
PTQ_INT8 = "ptq_int8"
QAT_INT8 = "qat_int8"
VARIANTS = (FLOAT32, FP16, PTQ_INT8, QAT_INT8)
INT8_VARIANTS = (PTQ_INT8, QAT_INT8)
INPUT_NAME = "images"
SIGNATURE_KEY = "serving_default"
DECODE_SCOPE = "decode"  # kept float in every variant (int8 only for the detector body)


def _detect_function(detector: keras.Model, input_size: int, max_detections: int):
    spec = tf.TensorSpec([1, input_size, input_size, 3], tf.float32, name=INPUT_NAME)

    @tf.function(input_signature=[spec], autograph=False)
    def detect(images: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = detector(images, training=False)
        with tf.name_scope(DECODE_SCOPE):
            return decode_detections(outputs, max_detections)

    return detect.get_concrete_function()


def _weights_only(detector: keras.Model) -> tf.Module:
    """A trackable holding just the detector's variables, for the converter to save.

    The converter writes the function and this object as a temporary SavedModel and loads
    it back. Given the Keras model itself, that save traces every layer's call functions
    and the load restores them: most of a conversion (the default model's float32: 160 s
    -> 7 s, docs/edge.md), for nothing the function uses. The flatbuffer is
    byte-identical (``tests/test_edge.py``).
    """
    module = tf.Module()
    module.variables_used = list(detector.variables)
    return module


def convert(detector: keras.Model, variant: str, input_size: int, max_detections: int,
            representative_images: Iterable[np.ndarray] | None = None,
            sparse: bool = False) -> bytes:
    """Converts a detector to one TFLite variant.

    Args:
      detector: the float model, or for ``QAT_INT8`` the quantization-aware one from
        ``trainer.qat`` (its learned ranges decide the quantization).
      variant: one of ``VARIANTS``.
      representative_images: for ``PTQ_INT8``: preprocessed [S, S, 3] float32 images
        from the training split, to calibrate activation ranges.
      sparse: store weight tensors that are >= 30 % zeros in TFLite's sparse format
        (``Optimize.EXPERIMENTAL_SPARSITY``; a ``DENSIFY`` op restores each at load time),
        for a pruned detector (``trainer.prune``). Off: the file is byte-identical to
        what this function wrote before the option existed.
    Returns:
      The flatbuffer; only TFLite builtin ops (the converter fails rather than fall back).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}; use one of {VARIANTS}")
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [_detect_function(detector, input_size, max_detections)], _weights_only(detector))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant == FP16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant in INT8_VARIANTS:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.inference_input_type = tf.uint8
    if variant != PTQ_INT8:
        if sparse:
            converter.optimizations = [*converter.optimizations,
                                       tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        return converter.convert()
    if representative_images is None:
        raise ValueError("ptq_int8 needs representative_images from the training split")
    images = list(representative_images)
    converter.representative_dataset = lambda: ([image[None]] for image in images)
    # The converter's own PTQ steps (calibrate, then mlir_quantize, as lite.py does), with
    # the heatmap sigmoid and decode left float, as in the QAT variant: otherwise the
    # quantizer runs them in int8 too (scores in 1/256 steps, boxes in 1/256 of the image).
    converter._experimental_calibrate_only = True  # noqa: SLF001
    calibrated = converter.convert()
    quantized = lite_convert.mlir_quantize(
        calibrated, input_data_type=tf.uint8, output_data_type=tf.float32,
        denylisted_nodes=_float_tensor_names(calibrated))
    # Sparsified after quantizing, as the converter's own path does (lite.py): the
    # calibrate-only conversion stops before its sparsify step.
    return lite_convert.mlir_sparsify(quantized) if sparse else quantized


def _float_tensor_names(flatbuffer: bytes) -> list[str]:
    """Output tensors to keep float: the heatmap sigmoid, decode, and the signature outputs.

    Decode ops are under ``DECODE_SCOPE`` (fused names join parts with ";"); its last ops
    produce the function outputs, named ``StatefulPartitionedCall:<i>``.
    """
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    tensors = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    names = []
    for op in interpreter._get_ops_details():  # noqa: SLF001
        for index in op["outputs"]:
            parts = tensors[index].split(";")
            if any(p.startswith((f"{DECODE_SCOPE}/", "StatefulPartitionedCall:"))
                   or any(f"/{layer}/" in p for layer in FLOAT_LAYERS) for p in parts):
                names.append(tensors[index])
    return names


def representative_images(patterns: list[str], input_size: int, count: int) -> list[np.ndarray]:
    """The first ``count`` training images in image-id order (not file order, which
    varies between pipeline runs), preprocessed exactly as in training."""
    spec = {fs.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string)}
    images = records_in_id_order(patterns).take(count).map(
        lambda s: preprocess_image(tf.io.parse_single_example(s, spec)[fs.IMAGE_ENCODED],
                                   input_size))
    return list(images.as_numpy_iterator())
