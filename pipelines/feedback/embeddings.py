"""Crop and image embeddings from the detector's own features.

**Crops** (``sightline similar``, the crop index): a CenterNet classifies an object from
the feature vector at its centre on the stride-4 map the heads read, so that is where a
crop's embedding is read: bilinearly, at the box centre, from the neck output
(``merge0``, the input of both head branches) and from the heatmap branch's hidden layer
(the vector the class logits are a 1x1 projection of). Each part is L2-normalized before
they are joined, so neither dominates by scale, and the result is L2-normalized, so inner
product is cosine similarity. ``VARIANTS`` keeps the alternatives measured with
``benchmarks/retrieval_bench.py`` (docs/feedback.md); ``DEFAULT_VARIANT`` is the one the
index, ``similar`` and ``select`` use.

**Images** (``sightline select``'s novelty): the global average of the last backbone
stage (what the scene looks like to the model), L2-normalized, joined with the image's
brightness and contrast computed by ingestion's own ``data.coco.image_statistics`` (the
statistics the drift check watches): normalizing features undoes a global darkening, the
statistics keep it.

The detector is rebuilt from the export (``trainer.export.load_detector``) and fed
through ``trainer.preprocess.preprocess_batch``, the served preprocessing; the same
forward pass gives its detections (``trainer.decode.decode_detections``), so a query
image without a box costs one pass.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from serving.log_reader import Detections, detections_of
from trainer.decode import decode_detections
from trainer.export import load_detector
from trainer.model import HEATMAP, OFFSET, SIZE
from trainer.preprocess import preprocess_batch

NECK, HEAD_HIDDEN, HEAD_LOGITS = "merge0", f"{HEATMAP}_hidden_relu6", f"{HEATMAP}_logits"
CENTER, ROI = "center", "roi"
# name -> the (layer, sampling) parts joined into a crop vector; ROI = mean of a 3x3
# crop_and_resize over the box, CENTER = bilinear sample at the box centre.
VARIANTS: dict[str, tuple[tuple[str, str], ...]] = {
    "roi": ((NECK, ROI), (HEAD_HIDDEN, ROI)),
    "center-neck": ((NECK, CENTER),),
    "center": ((NECK, CENTER), (HEAD_HIDDEN, CENTER)),
    "center+roi": ((NECK, CENTER), (HEAD_HIDDEN, CENTER), (NECK, ROI)),
    "center+logits": ((NECK, CENTER), (HEAD_HIDDEN, CENTER), (HEAD_LOGITS, CENTER)),
}
DEFAULT_VARIANT = "center"
CROP = 3
BATCH = 16
WHOLE_IMAGE = np.array([[0.0, 0.0, 1.0, 1.0]])
# Brightness and contrast are in [0, 1] (day ~0.45, night ~0.1 on the synthetic world):
# doubled, a day/night gap weighs about as much as unrelated scenes do in the unit-norm
# feature part (cosine distance ~0.5), so neither half of the image vector is ignored.
STATS_WEIGHT = 2.0


def _normalized(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class Embedded(NamedTuple):
    crops: list[np.ndarray]  # per image [n_boxes, dim], unit norm
    detections: list[Detections]
    images: np.ndarray  # [n_images, image_dim]


def image_statistics(encoded: bytes) -> tuple[float, float]:
    """(brightness, contrast) of an encoded image, as ingestion computes them."""
    from PIL import Image

    from data import coco
    from data import feature_spec as fs

    with Image.open(io.BytesIO(encoded)) as decoded:
        stats = coco.image_statistics(np.asarray(decoded.convert("RGB")))
    return stats[fs.STATS_BRIGHTNESS], stats[fs.STATS_CONTRAST]


def _center_boxes(boxes: tf.Tensor, size: int) -> tf.Tensor:
    """Degenerate boxes at each box's centre, in ``crop_and_resize``'s coordinates (which
    put 0 and 1 on the first and last cell centres), so a 1x1 crop samples the stride-4
    map bilinearly at the object's centre in pixel-centre convention."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    cell = tf.clip_by_value((centre * size - 0.5) / (size - 1), 0.0, 1.0)
    return tf.concat([cell, cell], axis=-1)


class Embedder:
    """One exported detector's crop and image embeddings (and detections)."""

    def __init__(self, export_dir: str, variant: str = DEFAULT_VARIANT):
        if variant not in VARIANTS:
            raise ValueError(f"embedding variant {variant!r}; use one of {sorted(VARIANTS)}")
        detector, config = load_detector(export_dir)
        self.variant, self.parts = variant, VARIANTS[variant]
        self._layers = sorted({layer for layer, _ in self.parts})
        lateral = max((layer.name for layer in detector.layers
                       if layer.name.startswith("lateral") and layer.name.endswith("_conv")),
                      key=lambda name: int(name[len("lateral"):-len("_conv")]))
        backbone = detector.get_layer(lateral).input  # the last backbone stage
        features = [detector.get_layer(name).output for name in self._layers]
        heads = [detector.get_layer(name).output for name in (HEATMAP, SIZE, OFFSET)]
        self._model = keras.Model(detector.input, [backbone, *features, *heads])
        self.input_size = config.input_size
        self.max_detections = config.max_detections
        self.dim = sum(int(detector.get_layer(layer).output.shape[-1])
                       for layer, _ in self.parts)
        self.image_dim = int(backbone.shape[-1]) + 2

    # One trace for every batch (fixed signature), without autograph: nothing here branches
    # on tensors, and converting tf_keras takes a minute (as in trainer/export.py).
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string),
                                  tf.TensorSpec([None, 4], tf.float32),
                                  tf.TensorSpec([None], tf.int32)], autograph=False)
    def _forward(self, encoded: tf.Tensor, boxes: tf.Tensor, box_images: tf.Tensor):
        backbone, *outputs = self._model(preprocess_batch(encoded, self.input_size),
                                         training=False)
        fmaps = dict(zip(self._layers, outputs[:len(self._layers)], strict=True))
        parts = []
        for layer, sampling in self.parts:
            fmap = fmaps[layer]
            if sampling == CENTER:
                cells = tf.image.crop_and_resize(
                    fmap, _center_boxes(boxes, int(fmap.shape[1])), box_images, (1, 1))
            else:
                cells = tf.image.crop_and_resize(fmap, boxes, box_images, (CROP, CROP))
            parts.append(tf.math.l2_normalize(tf.reduce_mean(cells, axis=[1, 2]), axis=-1))
        heads = dict(zip((HEATMAP, SIZE, OFFSET), outputs[len(self._layers):], strict=True))
        scene = tf.math.l2_normalize(tf.reduce_mean(backbone, axis=[1, 2]), axis=-1)
        return (tf.math.l2_normalize(tf.concat(parts, -1), -1), scene,
                decode_detections(heads, self.max_detections))

    def embed(self, images: Sequence[bytes], boxes: Sequence[np.ndarray]) -> Embedded:
        """Per image: the embeddings of its boxes (normalized yxyx), the detector's
        detections, and the image's own vector."""
        vectors: list[np.ndarray] = []
        found: list[Detections] = []
        scenes: list[np.ndarray] = []
        for start in range(0, len(images), BATCH):
            chunk = list(images[start:start + BATCH])
            chunk_boxes = [np.asarray(b, np.float32).reshape(-1, 4)
                           for b in boxes[start:start + BATCH]]
            counts = [len(b) for b in chunk_boxes]
            flat = np.concatenate(chunk_boxes) if sum(counts) else np.zeros((0, 4), np.float32)
            owner = np.repeat(np.arange(len(chunk), dtype=np.int32), counts)
            embedded, scene, detections = self._forward(
                tf.constant(chunk, tf.string), tf.constant(flat), tf.constant(owner))
            vectors += np.split(embedded.numpy().astype(np.float32), np.cumsum(counts)[:-1])
            found += detections_of({k: v.numpy() for k, v in detections.items()})
            stats = STATS_WEIGHT * np.array([image_statistics(e) for e in chunk], np.float32)
            scenes.append(np.concatenate([scene.numpy().astype(np.float32), stats], axis=-1))
        images_out = (np.concatenate(scenes) if scenes
                      else np.zeros((0, self.image_dim), np.float32))
        return Embedded(vectors, found, images_out)


def image_vector(crops: np.ndarray) -> np.ndarray:
    """One image's vector: the normalized mean of its crops' (for diversity between images)."""
    return _normalized(crops.mean(axis=0))
