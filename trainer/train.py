"""The training loop: strategy, optimizer, callbacks and ``fit``, in labelled sections.

``fit`` drives a thin wrapper model whose ``train_step`` applies the CenterNet loss to
the plain functional detector; only the detector is exported, so QAT and TFLite see a
model with no training-only parts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import tensorflow as tf
import tf_keras as keras
from absl import logging

from trainer.config import TrainConfig
from trainer.input import count_examples, make_dataset
from trainer.losses import detection_loss
from trainer.model import build_model
from trainer.schedule import WarmupCosine

LOSS_NAMES = ("loss", "heatmap_loss", "size_loss", "offset_loss")
GLOBAL_CLIPNORM = 10.0
# Decoupled weight decay shrinks conv kernels only; decaying BN scales and biases hurts.
NO_DECAY = ("_bn/", "bias")
NUM_VALIDATIONS = 3  # evaluate at most 3 times per run (always after the last epoch)
# BackupAndRestore saves every this many steps so a killed run resumes mid-epoch: ~25 s of
# default training per save, and a save costs ~0.2 s.
BACKUP_EVERY_STEPS = 50


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """The trained detector and its final losses (recorded in ``hparams.json``)."""

    detector: keras.Model
    final_train_loss: float
    final_eval_loss: float


class CenterNetTrainer(keras.Model):
    """Adds CenterNet's loss to a functional detector for ``fit``/``evaluate``.

    The steps are ``do_not_convert``: autograph would otherwise transpile tf_keras's own
    layer code (it is not on autograph's skip list), which took ~45 s per traced step.
    """

    def __init__(self, detector: keras.Model):
        super().__init__(name="centernet_trainer")
        self.detector = detector
        self._trackers = {name: keras.metrics.Mean(name) for name in LOSS_NAMES}

    def call(self, images: tf.Tensor, training: bool = False) -> dict[str, tf.Tensor]:
        return self.detector(images, training=training)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return list(self._trackers.values())

    def _record(self, terms: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        for name, tracker in self._trackers.items():
            tracker.update_state(terms[name])
        return {name: tracker.result() for name, tracker in self._trackers.items()}

    @tf.autograph.experimental.do_not_convert
    def train_step(self, data):
        images, targets = data
        with tf.GradientTape() as tape:
            terms = detection_loss(targets, self.detector(images, training=True))
            # The optimizer sums gradients over replicas; divide so the step is the mean.
            scaled = terms["loss"] / tf.distribute.get_strategy().num_replicas_in_sync
        variables = self.detector.trainable_variables
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return self._record(terms)

    @tf.autograph.experimental.do_not_convert
    def test_step(self, data):
        images, targets = data
        return self._record(detection_loss(targets, self.detector(images, training=False)))


class RaiseOnNaN(keras.callbacks.Callback):
    """Stops training with an error naming the step: TerminateOnNaN only logs and stops."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            step = int(self.model.optimizer.iterations.numpy())
            raise FloatingPointError(
                f"Training loss is {loss} at global step {step} (batch {batch} of the epoch); "
                f"last logs: {json.dumps({k: float(v) for k, v in logs.items()})}. "
                "Lower learning_rate or check the input boxes."
            )


class EpochLog(keras.callbacks.Callback):
    """One log line per epoch with its losses; ``sightline run`` shows it on the console."""

    def __init__(self, epochs: int):
        super().__init__()
        self._epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        losses = ", ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items())
                           if k.endswith("loss"))
        logging.info("Epoch %d/%d: %s", epoch + 1, self._epochs, losses)


def make_optimizer(peak_learning_rate: float, weight_decay: float, total_steps: int,
                   warmup_steps: int) -> keras.optimizers.Optimizer:
    """AdamW on a warmup + cosine schedule, clipped, with no decay on BN and biases."""
    optimizer = keras.optimizers.AdamW(
        learning_rate=WarmupCosine(peak_learning_rate, total_steps, warmup_steps),
        weight_decay=weight_decay,
        global_clipnorm=GLOBAL_CLIPNORM,
    )
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY))
    return optimizer


def make_strategy(name: str) -> tf.distribute.Strategy:
    """default: one device; mirrored: all local devices; multi_worker: from TF_CONFIG."""
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief() -> bool:
    """False only on non-chief workers of a TF_CONFIG cluster: they must not export."""
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = tf_config.get("task", {})
    kind = task.get("type", "chief")
    # Without a "chief" entry, worker 0 is the chief (MultiWorkerMirroredStrategy's rule).
    return kind == "chief" or (
        kind == "worker" and task.get("index", 0) == 0 and "chief" not in tf_config["cluster"]
    )


def plan_steps(config: TrainConfig, num_train: int, train_steps: int | None = None
               ) -> tuple[int, int]:
    """(steps per epoch, warmup steps) for ``num_train`` examples, or ``train_steps`` total.

    Raises:
      ValueError: a batch larger than the training split (no step would run).
    """
    if train_steps:
        steps_per_epoch = math.ceil(train_steps / config.epochs)
    else:
        steps_per_epoch = num_train // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size={config.batch_size} exceeds the {num_train} training "
                         "examples; lower batch_size")
    total_steps = steps_per_epoch * config.epochs
    logging.info("Training on %d examples: %d epochs x %d steps of %d", num_train,
                 config.epochs, steps_per_epoch, config.batch_size)
    return steps_per_epoch, min(round(config.warmup_epochs * steps_per_epoch), total_steps)


def train(config: TrainConfig, train_files: list[str], eval_files: list[str], run_dir: str,
          train_steps: int | None = None, eval_steps: int | None = None) -> TrainResult:
    """Trains a detector for ``config.epochs`` epochs (or ``train_steps`` total if set).

    Args:
      train_files, eval_files: GZIP TFRecord glob patterns (TFX split URIs).
      run_dir: TensorBoard logs, per-epoch checkpoints and the BackupAndRestore state,
        so a killed run resumes from its last backup (every BACKUP_EVERY_STEPS steps).
    Returns:
      The trained detector and the final train/eval losses.
    """
    # --- determinism: same seed, same data order, same weights --------------------
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    # Before any op runs: MultiWorkerMirroredStrategy configures collectives at startup.
    strategy = make_strategy(config.strategy)

    # --- data -----------------------------------------------------------------------
    steps_per_epoch, warmup_steps = plan_steps(config, count_examples(train_files), train_steps)
    total_steps = steps_per_epoch * config.epochs

    # --- model and optimizer, built under the strategy ----------------------------------
    with strategy.scope():
        detector = build_model(config.model_size, config.input_size, config.num_classes)
        trainer = CenterNetTrainer(detector)
        trainer.compile(optimizer=make_optimizer(
            config.learning_rate, config.weight_decay, total_steps, warmup_steps))

    # --- callbacks: resume, checkpoints, TensorBoard, loud NaN, progress --------------
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup"),
                                         save_freq=BACKUP_EVERY_STEPS),
        keras.callbacks.ModelCheckpoint(
            os.path.join(run_dir, "checkpoints", "epoch-{epoch:03d}"), save_weights_only=True
        ),
        keras.callbacks.TensorBoard(log_dir=run_dir, update_freq="epoch"),
        RaiseOnNaN(),
        EpochLog(config.epochs),
    ]

    # --- fit; validate <= NUM_VALIDATIONS times, always after the last epoch ----------
    every = math.ceil(config.epochs / NUM_VALIDATIONS)
    validation_epochs = sorted({*range(every, config.epochs + 1, every), config.epochs})
    history = trainer.fit(
        make_dataset(train_files, config, training=True),
        epochs=config.epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=make_dataset(eval_files, config, training=False),
        validation_steps=eval_steps or None,
        validation_freq=validation_epochs,
        callbacks=callbacks,
        verbose=2,
    )
    return TrainResult(
        detector=detector,
        final_train_loss=float(history.history["loss"][-1]),
        final_eval_loss=float(history.history["val_loss"][-1]),
    )
