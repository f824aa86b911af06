"""SavedModel export: two signatures sharing one preprocessing and one decode.

``serving_default`` takes encoded image bytes (TF Serving REST sends ``{"b64": ...}``);
``serving_examples`` takes serialized tf.Examples for TFMA. Both run
``preprocess_batch`` -> detector -> ``decode_detections``, so they agree bit for bit.
Saved with ``tf.saved_model.save`` (not Keras) so TFMA and TF Serving load the plain
signatures without Keras.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import tensorflow as tf
import tf_keras as keras

from data import feature_spec as fs
from trainer.config import TrainConfig
from trainer.decode import decode_detections
from trainer.model import build_model
from trainer.preprocess import preprocess_batch

SERVING_DEFAULT = "serving_default"
SERVING_EXAMPLES = "serving_examples"
ASSETS_EXTRA = "assets.extra"
HPARAMS_FILE = "hparams.json"
LABELS_FILE = "labels.json"


class _DetectionModule(tf.Module):
    """Holds the detector and the two serving functions."""

    def __init__(self, detector: keras.Model, input_size: int, max_detections: int):
        super().__init__()
        # Track only the variables: tracking the Keras model makes tf.saved_model.save run
        # Keras's own serialization (re-traces every layer; ~60 s for `small`), which
        # nothing reads since consumers use the signatures.
        self.weights = list(detector.variables)
        self._forward = functools.partial(detector, training=False)
        self._input_size = input_size
        self._max_detections = max_detections

    def _detect(self, encoded: tf.Tensor) -> dict[str, tf.Tensor]:
        images = preprocess_batch(encoded, self._input_size)
        return decode_detections(self._forward(images), self._max_detections)

    # autograph=False: nothing here branches on tensors, and converting tf_keras is slow.
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")],
                 autograph=False)
    def serve_images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._detect(images)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")],
                 autograph=False)
    def serve_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(examples, fs.serving_spec())
        return self._detect(parsed[fs.IMAGE_ENCODED])


def export_saved_model(detector: keras.Model, export_dir: str, input_size: int,
                       max_detections: int, hparams: dict[str, Any],
                       class_names: list[str]) -> None:
    """Writes the SavedModel plus ``assets.extra/{hparams,labels}.json``.

    Args:
      hparams: ``TrainConfig.to_dict()`` plus final losses, saved with the model so a
        served version always says how it was trained.
      class_names: label i+1 = class_names[i].
    """
    module = _DetectionModule(detector, input_size, max_detections)
    signatures = {SERVING_DEFAULT: module.serve_images, SERVING_EXAMPLES: module.serve_examples}
    tf.saved_model.save(module, export_dir, signatures=signatures)
    extra = os.path.join(export_dir, ASSETS_EXTRA)
    tf.io.gfile.makedirs(extra)
    for name, content in ((HPARAMS_FILE, hparams), (LABELS_FILE, list(class_names))):
        with tf.io.gfile.GFile(os.path.join(extra, name), "w") as f:
            json.dump(content, f, indent=2, sort_keys=True)


def load_detector(export_dir: str) -> tuple[keras.Model, TrainConfig]:
    """The inverse of ``export_saved_model``: the Keras detector and its TrainConfig.

    Rebuilds the model from ``hparams.json`` and copies the SavedModel's variables into
    it (export saves variables, not Keras objects), for QAT and TFLite conversion.
    """
    with tf.io.gfile.GFile(os.path.join(export_dir, ASSETS_EXTRA, HPARAMS_FILE)) as f:
        hparams = json.load(f)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig.from_dict({k: v for k, v in hparams.items() if k in known})
    detector = build_model(config.model_size, config.input_size, config.num_classes)
    saved = tf.saved_model.load(export_dir).weights
    expected = [v.name for v in detector.variables]
    if [v.name for v in saved] != expected:
        raise ValueError(f"{export_dir}: its variables do not match a {config.model_size!r} "
                         f"detector rebuilt from hparams.json ({len(saved)} vs {len(expected)})")
    for variable, value in zip(detector.variables, saved, strict=True):
        variable.assign(value)
    return detector, config
