"""A SavedModel that "detects" by reading each example's GT boxes: known-good and known-bad
models in seconds, for the metric's and the gates' tests (no training involved)."""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf

from data import feature_spec as fs
from tests.detection_outputs import outputs_from_rows

CAMERA = fs.meta_key("camera")


class FakeDetector(tf.Module):
    """A SavedModel whose detections are derived from each example's GT boxes.

    Per GT: a jittered copy (10% with a wrong class) and a shifted false positive, scores
    from a hash of the box; then 3 junk rows past ``num_detections`` (score 0.99 over the whole
    image) that change every number unless the metric truncates.
    """

    def __init__(self, jitter: float, camera_jitter: Mapping[str, float] | None = None):
        """jitter: box noise as a share of the box size; camera_jitter: other values for
        images from these cameras (``meta/camera``), to degrade one slice only."""
        super().__init__()
        self._jitter = jitter
        self._camera_jitter = dict(camera_jitter or {})

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        box_keys = (fs.BBOX_XMIN, fs.BBOX_YMIN, fs.BBOX_XMAX, fs.BBOX_YMAX)
        spec = {k: tf.io.VarLenFeature(tf.float32) for k in box_keys}
        spec[fs.CLASS_LABEL] = tf.io.VarLenFeature(tf.int64)
        spec[CAMERA] = tf.io.FixedLenFeature([], tf.string, default_value="")
        parsed = tf.io.parse_example(examples, spec)
        scale = tf.fill(tf.shape(parsed[CAMERA]), self._jitter)
        for camera, jitter in self._camera_jitter.items():
            scale = tf.where(parsed[CAMERA] == camera, jitter, scale)
        boxes = tf.stack([tf.sparse.to_dense(parsed[k]) for k in box_keys], axis=-1)
        labels = tf.cast(tf.sparse.to_dense(parsed[fs.CLASS_LABEL]), tf.float32)[..., None]
        count = tf.RaggedTensor.from_sparse(parsed[fs.CLASS_LABEL]).row_lengths()
        # An integer hash of the box: tf.sin's last bits depend on the batch shape (SIMD
        # vs scalar paths), and a sin-based hash amplified them into different detections
        # for the same image in TFMA's batches and in a direct call.
        seed = tf.cast(tf.round((boxes[..., :1] * 97.0 + boxes[..., 3:] * 31.0) * 1e4), tf.int64)

        def noise(k: int) -> tf.Tensor:
            modulus = 2**31 - 1  # Park-Miller: h * 48271 stays far inside int64
            h = tf.math.floormod(seed * 2654435761 + k * 97531 + 1, modulus)
            h = tf.math.floormod(tf.math.floormod(h * 48271, modulus) * 48271, modulus)
            return tf.cast(h, tf.float32) / modulus

        size = tf.tile(boxes[..., 2:] - boxes[..., :2], [1, 1, 2])
        jitter = (tf.concat([noise(k) for k in range(4)], -1) - 0.5) * scale[:, None, None] * size
        wrong = tf.math.floormod(labels, 3) + 1
        true = tf.concat([boxes + jitter, tf.where(noise(4) < 0.1, wrong, labels),
                          0.3 + 0.7 * noise(5)], axis=-1)
        false = tf.concat([boxes + 0.5 * size, labels, 0.6 * noise(6)], axis=-1)
        batch = tf.shape(boxes)[0]
        # Rows 2j, 2j+1 belong to GT slot j, so the first 2 * count rows are the real ones.
        dets = tf.reshape(tf.stack([true, false], axis=2), [batch, -1, 6])
        junk = tf.tile(tf.constant([[[0.0, 0.0, 1.0, 1.0, 1.0, 0.99]]]), [batch, 3, 1])
        return outputs_from_rows(tf.concat([dets, junk], axis=1), tf.cast(2 * count, tf.int32),
                                 ops=tf)


def save_fake_detector(
    path: str, jitter: float, camera_jitter: Mapping[str, float] | None = None
) -> None:
    module = FakeDetector(jitter, camera_jitter)
    tf.saved_model.save(module, path, signatures={"serving_examples": module.serve_examples})
