"""Quantization-aware fine-tuning of a trained detector with tfmot.

tfmot's default 8-bit scheme covers the backbone, neck and hidden head convs; the input
``Rescaling`` gets a small QuantizeConfig that quantizes its output. The three 1x1
output convs and their activations (``FLOAT_LAYERS``, 0.1 % of the FLOPs) stay float,
and so does decode: on the default model, int8 heads cost 1.4 mAP points after QAT
(0.248 vs 0.262; scores in 1/256 steps, box sizes in ~0.2-cell steps), float heads 0.5.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from trainer import train
from trainer.config import TrainConfig
from trainer.model import HEATMAP, OFFSET, SIZE

_quantization = tfmot.quantization.keras
HEAD_OUTPUTS = (HEATMAP, SIZE, OFFSET)  # the model's output Activation layers
FLOAT_LAYERS = (*HEAD_OUTPUTS, *(f"{name}_logits" for name in HEAD_OUTPUTS))


class OutputQuantizeConfig(_quantization.QuantizeConfig):
    """Quantizes a weightless layer's output only (the input ``Rescaling``)."""

    def get_weights_and_quantizers(self, layer: keras.layers.Layer) -> list:
        return []

    def get_activations_and_quantizers(self, layer: keras.layers.Layer) -> list:
        return []

    def set_quantize_weights(self, layer: keras.layers.Layer, quantize_weights: list) -> None:
        pass

    def set_quantize_activations(self, layer: keras.layers.Layer,
                                 quantize_activations: list) -> None:
        pass

    def get_output_quantizers(self, layer: keras.layers.Layer) -> list:
        return [_quantization.quantizers.MovingAverageQuantizer(
            num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

    def get_config(self) -> dict:
        return {}


def _annotate(layer: keras.layers.Layer) -> keras.layers.Layer:
    # The head activations stay float (the converter puts a dequantize before them): an
    # int8 sigmoid output has 256 score levels, too coarse to rank detections by.
    if isinstance(layer, keras.layers.InputLayer) or layer.name in FLOAT_LAYERS:
        return layer
    if isinstance(layer, keras.layers.Rescaling):
        return _quantization.quantize_annotate_layer(layer, OutputQuantizeConfig())
    return _quantization.quantize_annotate_layer(layer)


def quantize_detector(detector: keras.Model) -> keras.Model:
    """The detector with fake-quant ops (weights copied), ready for QAT and int8 conversion."""
    # Not quantize_annotate_model: it would annotate the layers left float here too.
    annotated = keras.models.clone_model(detector, clone_function=_annotate)
    annotated.set_weights(detector.get_weights())
    with _quantization.quantize_scope({"OutputQuantizeConfig": OutputQuantizeConfig}):
        return _quantization.quantize_apply(annotated)


def _layer_extremes(probe: keras.Model, images: np.ndarray,
                    batch_size: int = 32) -> list[tuple[float, float]]:
    """(min, max) of each of ``probe``'s outputs over ``images``, reduced batch by batch.

    What ``probe.predict`` then ``.min()``/``.max()`` gave (min and max are exact in
    any order), without holding every layer's activations for every image (~GBs).
    """
    @tf.function(autograph=False)
    def batch_extremes(batch: tf.Tensor) -> list[tf.Tensor]:
        return [tf.stack([tf.reduce_min(out), tf.reduce_max(out)])
                for out in tf.nest.flatten(probe(batch, training=False))]

    per_batch = np.stack([np.stack([t.numpy() for t in batch_extremes(images[i:i + batch_size])])
                          for i in range(0, len(images), batch_size)])
    return [(float(low), float(high))
            for low, high in zip(per_batch[..., 0].min(axis=0), per_batch[..., 1].max(axis=0),
                                 strict=True)]


def calibrate_ranges(qat_model: keras.Model, detector: keras.Model,
                     images: np.ndarray) -> None:
    """Sets every activation range of ``qat_model`` to what ``detector`` produces on images.

    tfmot starts activation ranges at [-6, 6] and moves them by an EMA with decay 0.999,
    so a short fine-tune ends with ranges still ~[-6, 6]: box sizes (up to ~30 cells)
    were clipped at 6 and QAT mAP fell from 0.26 to 0.05. Calibrating first (the float
    layers' min/max on training images, widened to include 0 as TFLite requires) lets
    the fine-tune start from the post-training-quantization point.
    """
    layers = [layer for layer in detector.layers
              if not isinstance(layer, keras.layers.InputLayer)]
    extremes = _layer_extremes(keras.Model(detector.inputs, [layer.output for layer in layers]),
                               images)
    ranges = {layer.name: (min(low, 0.0), max(high, 0.0))
              for layer, (low, high) in zip(layers, extremes, strict=True)}
    input_range = (min(float(images.min()), 0.0), max(float(images.max()), 0.0))
    for layer in qat_model.layers:
        inner = getattr(layer, "layer", layer)  # QuantizeWrapper holds the float layer
        low, high = ranges.get(inner.name, input_range)
        for variable in layer.non_trainable_weights:
            name = variable.name.split("/")[-1].split(":")[0]
            if "kernel" in name or "depthwise" in name:
                continue  # weight ranges follow the weights at every training step
            if name.endswith("_min"):
                variable.assign(tf.fill(variable.shape, low))
            elif name.endswith("_max"):
                variable.assign(tf.fill(variable.shape, high))


def fine_tune(detector: keras.Model, config: TrainConfig, train_files: list[str],
              representative_images: list[np.ndarray], run_dir: str, epochs: int,
              learning_rate: float, steps_per_epoch: int | None = None) -> keras.Model:
    """Quantizes ``detector`` and fine-tunes it with the training loss and input pipeline.

    Args:
      detector: the trained float model (left unchanged).
      config: its TrainConfig (input size, batch, augmentation seed, weight decay).
      representative_images: preprocessed training images for ``calibrate_ranges``.
      run_dir: TensorBoard logs of the fine-tune.
      epochs / learning_rate: the fine-tune budget; the rate decays by a cosine to 0, no
        warmup (the weights are already trained).
      steps_per_epoch: default: one pass over the training examples.
    Returns:
      The quantization-aware model (fake-quant ops with learned ranges).
    """
    keras.utils.set_random_seed(config.seed)
    qat_model = quantize_detector(detector)
    calibrate_ranges(qat_model, detector, np.stack(representative_images))
    train.fine_tune(qat_model, config, train_files, run_dir, epochs, learning_rate,
                    steps_per_epoch or train.epoch_steps(config, train_files),
                    name="QAT fine-tune")
    return qat_model
