"""Knowledge distillation from a frozen teacher detector: its loss terms and its loading.

The student learns from the ground truth as before (``trainer.losses``) plus the
teacher's outputs on the same augmented batch:

* heatmap: quality focal loss (GFL, Li et al. 2020, beta=2) with the teacher's sigmoid
  heatmap as a soft target, on every cell and class. CenterNet's focal loss needs exact
  1.0 peaks and only down-weights negatives, so it cannot take a soft target; QFL is its
  soft-target form: BCE scaled by |teacher - student|^2, exactly zero where the student
  matches the teacher. Summed and divided by the batch's ground-truth objects, like
  ``focal_loss``, so both heatmap terms have one scale.
* size and offset: L1 to the teacher's outputs at the teacher's confident peaks (3x3
  local maxima of its class-max heatmap >= BOX_THRESHOLD), per peak, weighted like the
  ground-truth terms. Elsewhere the teacher's box heads were never trained (their loss
  only sees object centres), so imitating them there would teach noise.
"""

from __future__ import annotations

import os

import tensorflow as tf
import tf_keras as keras

from trainer.config import MODEL_SIZES, TrainConfig, export_candidates
from trainer.export import ASSETS_EXTRA, HPARAMS_FILE, load_detector
from trainer.losses import OFFSET_WEIGHT, PROB_EPS, SIZE_WEIGHT, masked_l1
from trainer.model import HEATMAP, OFFSET, SIZE
from trainer.targets import MASK

QFL_BETA = 2.0  # GFL's beta
# A teacher peak this confident gets its box imitated: the low end of the per-class
# score thresholds calibrated on these models, so these are boxes the teacher reports.
BOX_THRESHOLD = 0.3
DISTILL_NAMES = ("distill_loss", "heatmap_distill_loss", "size_distill_loss",
                 "offset_distill_loss")


def soft_focal_loss(teacher: tf.Tensor, student: tf.Tensor, num_objects: tf.Tensor
                    ) -> tf.Tensor:
    """Quality focal loss of ``student`` against the soft target ``teacher``.

    Args:
      teacher, student: sigmoid heatmaps [B, H, W, C].
      num_objects: ground-truth objects in the batch (the divisor of ``focal_loss``).
    Returns:
      Scalar, zero when ``student == teacher``.
    """
    teacher = tf.cast(teacher, tf.float32)
    student = tf.clip_by_value(tf.cast(student, tf.float32), PROB_EPS, 1.0 - PROB_EPS)
    bce = -(teacher * tf.math.log(student) + (1.0 - teacher) * tf.math.log(1.0 - student))
    loss = tf.reduce_sum(tf.abs(teacher - student) ** QFL_BETA * bce)
    return loss / tf.maximum(tf.cast(num_objects, tf.float32), 1.0)


def teacher_peaks(heatmap: tf.Tensor, threshold: float = BOX_THRESHOLD) -> tf.Tensor:
    """[B, H, W] 1.0 where the class-max heatmap is a 3x3 local max >= ``threshold``
    (decode's peak rule), else 0."""
    best = tf.reduce_max(tf.cast(heatmap, tf.float32), axis=-1, keepdims=True)
    peak = tf.equal(best, tf.nn.max_pool2d(best, 3, 1, "SAME")) & (best >= threshold)
    return tf.cast(peak[..., 0], tf.float32)


def distillation_loss(teacher: dict[str, tf.Tensor], student: dict[str, tf.Tensor],
                      targets: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """The distillation terms and their weighted sum ``distill_loss`` (before the
    config's ``distill_weight``). ``teacher`` must come from ``teacher_outputs``."""
    peaks = teacher_peaks(teacher[HEATMAP])
    terms = {
        "heatmap_distill_loss": soft_focal_loss(teacher[HEATMAP], student[HEATMAP],
                                                tf.reduce_sum(targets[MASK])),
        "size_distill_loss": masked_l1(teacher[SIZE], student[SIZE], peaks),
        "offset_distill_loss": masked_l1(teacher[OFFSET], student[OFFSET], peaks),
    }
    terms["distill_loss"] = (terms["heatmap_distill_loss"]
                             + SIZE_WEIGHT * terms["size_distill_loss"]
                             + OFFSET_WEIGHT * terms["offset_distill_loss"])
    return terms


def teacher_outputs(teacher: keras.Model, images: tf.Tensor) -> dict[str, tf.Tensor]:
    """The frozen teacher's float32 outputs, inference mode, cut from the gradient."""
    return {name: tf.stop_gradient(tf.cast(value, tf.float32))
            for name, value in teacher(images, training=False).items()}


def teacher_dir(teacher: str, base_model: str | None) -> str | None:
    """The export folder to distil from, or None without a teacher.

    Args:
      teacher: ``TrainConfig.teacher``: "", a model size or a path.
      base_model: the Trainer's ``fn_args.base_model`` (the DAG's resolved or imported
        teacher Model; its ``Format-Serving`` folder), else None.
    Raises:
      ValueError: a model size with no Model resolved, or no SavedModel where pointed.
    """
    if not teacher:
        return None
    if base_model:
        # TFX appends Format-Serving (serving_model_dir for an imported Model, which has no
        # TFX version) to the artifact's URI; an imported export is that URI itself.
        candidates = [base_model, os.path.dirname(base_model.rstrip("/"))]
    elif teacher in MODEL_SIZES:
        raise ValueError(missing_teacher_message(teacher))
    else:
        candidates = export_candidates(teacher)
    for candidate in candidates:
        if tf.io.gfile.exists(os.path.join(candidate, "saved_model.pb")):
            return candidate
    raise ValueError(f"train.teacher={teacher!r}: no SavedModel in {candidates}; give a "
                     "Trainer Model's folder (or its Format-Serving) or a pushed version")


def missing_teacher_message(model_size: str) -> str:
    """What to do when ML Metadata has no Model of ``model_size`` to distil from."""
    return (f"train.teacher={model_size!r}, but ML Metadata holds no {model_size!r} Model of "
            "this pipeline with the same input_size and class_names to distil from. Train "
            f"the teacher once with `sightline run --set train.model_size={model_size}` (the "
            "same --config and data settings; its Model is recorded in ML Metadata), and "
            f"every later run with train.teacher={model_size} reuses the latest one.")


def load_teacher(export_dir: str, student: TrainConfig) -> keras.Model:
    """The exported detector at ``export_dir``, frozen, built under the current precision
    policy (its output layers stay float32).

    Raises:
      ValueError: not a Sightline export, a teacher of another model size than the one
        asked for by name, or of another input size or class list than the student.
    """
    if not tf.io.gfile.exists(os.path.join(export_dir, ASSETS_EXTRA, HPARAMS_FILE)):
        raise ValueError(f"teacher {export_dir} is not a Sightline export: it has no "
                         f"{ASSETS_EXTRA}/{HPARAMS_FILE}")
    teacher, config = load_detector(export_dir)
    if student.teacher in MODEL_SIZES and config.model_size != student.teacher:
        raise ValueError(f"train.teacher={student.teacher!r}, but the teacher at "
                         f"{export_dir} is a {config.model_size!r} model")
    if (config.input_size, config.class_names) != (student.input_size, student.class_names):
        raise ValueError(
            f"The teacher at {export_dir} was trained at input_size={config.input_size} on "
            f"classes {list(config.class_names)}; the student trains at input_size="
            f"{student.input_size} on classes {list(student.class_names)}. Distillation "
            "needs the same input size and class list: pick a teacher trained on them.")
    teacher.trainable = False
    return teacher
