"""Crop embeddings from the detector's own features.

A crop's embedding is the ROI average (``tf.image.crop_and_resize`` to ``CROP`` x
``CROP`` cells, then the mean) of two feature maps over its box: the FPN neck's stride-4
output (``merge0``: what every head reads) and the heatmap branch's hidden layer (the
class evidence). Each part is L2-normalized before they are joined, so neither dominates
by scale, and the result is L2-normalized, so inner product is cosine similarity. The
detector is rebuilt from the export (``trainer.export.load_detector``) and fed through
``trainer.preprocess.preprocess_batch``, the served preprocessing; the same forward pass
gives its detections (``trainer.decode.decode_detections``), so a query image without a
box costs one pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from serving.log_reader import Detections, detections_of
from trainer.decode import decode_detections
from trainer.export import load_detector
from trainer.model import HEATMAP, OFFSET, SIZE
from trainer.preprocess import preprocess_batch

FEATURE_LAYERS = ("merge0", f"{HEATMAP}_hidden_relu6")
CROP = 3
BATCH = 16
WHOLE_IMAGE = np.array([[0.0, 0.0, 1.0, 1.0]])


def _normalized(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class Embedder:
    """One exported detector's crop embeddings (and detections)."""

    def __init__(self, export_dir: str):
        detector, config = load_detector(export_dir)
        features = [detector.get_layer(name).output for name in FEATURE_LAYERS]
        heads = [detector.get_layer(name).output for name in (HEATMAP, SIZE, OFFSET)]
        self._model = keras.Model(detector.input, features + heads)
        self.input_size = config.input_size
        self.max_detections = config.max_detections
        self.dim = sum(int(f.shape[-1]) for f in features)

    # One trace for every batch (fixed signature), without autograph: nothing here branches
    # on tensors, and converting tf_keras takes a minute (as in trainer/export.py).
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string),
                                  tf.TensorSpec([None, 4], tf.float32),
                                  tf.TensorSpec([None], tf.int32)], autograph=False)
    def _forward(self, encoded: tf.Tensor, boxes: tf.Tensor, box_images: tf.Tensor):
        outputs = self._model(preprocess_batch(encoded, self.input_size), training=False)
        parts = []
        for fmap in outputs[:len(FEATURE_LAYERS)]:
            cells = tf.image.crop_and_resize(fmap, boxes, box_images, (CROP, CROP))
            parts.append(tf.math.l2_normalize(tf.reduce_mean(cells, axis=[1, 2]), axis=-1))
        heads = dict(zip((HEATMAP, SIZE, OFFSET), outputs[len(FEATURE_LAYERS):], strict=True))
        return tf.math.l2_normalize(tf.concat(parts, -1), -1), decode_detections(
            heads, self.max_detections)

    def embed(self, images: Sequence[bytes], boxes: Sequence[np.ndarray]
              ) -> tuple[list[np.ndarray], list[Detections]]:
        """Per image: [n, dim] float32 embeddings of its boxes (normalized yxyx), and the
        detector's detections on it."""
        vectors: list[np.ndarray] = []
        found: list[Detections] = []
        for start in range(0, len(images), BATCH):
            chunk = list(images[start:start + BATCH])
            chunk_boxes = [np.asarray(b, np.float32).reshape(-1, 4)
                           for b in boxes[start:start + BATCH]]
            counts = [len(b) for b in chunk_boxes]
            flat = np.concatenate(chunk_boxes) if sum(counts) else np.zeros((0, 4), np.float32)
            owner = np.repeat(np.arange(len(chunk), dtype=np.int32), counts)
            embedded, detections = self._forward(tf.constant(chunk, tf.string),
                                                 tf.constant(flat), tf.constant(owner))
            vectors += np.split(embedded.numpy().astype(np.float32), np.cumsum(counts)[:-1])
            found += detections_of({k: v.numpy() for k, v in detections.items()})
        return vectors, found


def image_vector(crops: np.ndarray) -> np.ndarray:
    """One image's vector: the normalized mean of its crops' (for diversity between images)."""
    return _normalized(crops.mean(axis=0))
