"""The training loop: strategy, optimizer, callbacks and ``fit``, in labelled sections.

``fit`` drives a thin wrapper model whose ``train_step`` applies the CenterNet loss to
the plain functional detector; only the detector is exported, so QAT and TFLite see a
model with no training-only parts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Iterator, Sequence

import tensorflow as tf
import tf_keras as keras
from absl import logging

from trainer import distill
from trainer.config import TrainConfig
from trainer.hardware import cpu_flags, resolve_precision
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
# --- time budget (train.time_budget_s) ---------------------------------------------------
# Global steps timed: after tracing (step 1) and the thread pools' warm-up. They run in the
# first epoch, whose steps also decode the images into the cache, so the estimate errs long
# (106 vs ~80 ms per `small` step on the AMX Xeon): the same steps of the second epoch,
# just after the one-epoch warmup, are timed again and the plan made again from them.
MEASURE_STEPS = (5, 25)
# Left for what follows the last step: the final validation's tail, export (~10 s for
# `small`) and the executor's bookkeeping.
EXPORT_RESERVE_S = 30.0
# Share of the remaining time not planned for steps: epoch checkpoints, backups every
# BACKUP_EVERY_STEPS, and step-time noise on a shared CPU.
BUDGET_MARGIN = 0.05
# A validation batch (forward only) costs about this share of a training step.
EVAL_STEP_FRACTION = 1 / 3
# fit's epoch count when the budget decides: the StepBudget callback stops training first.
UNBOUNDED_EPOCHS = 1_000_000


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """The trained detector and its final losses (recorded in ``hparams.json``)."""

    detector: keras.Model  # always float32, whatever precision it was trained in
    final_train_loss: float
    final_eval_loss: float
    steps: int  # optimizer steps taken
    step_seconds: float  # mean wall time of the last timed steps (StepBudget; 0 if shorter)
    train_seconds: float
    precision: str  # float32 or bfloat16: what "auto" resolved to
    teacher_uri: str | None = None  # the export distilled from
    final_distill_loss: float | None = None  # its distillation terms (before the weight)

    def records(self) -> dict[str, float | int | str]:
        """What ``hparams.json`` (and so the Model artifact in MLMD) records of the run."""
        records = {"final_train_loss": self.final_train_loss,
                   "final_eval_loss": self.final_eval_loss, "train_steps": self.steps,
                   "step_seconds": round(self.step_seconds, 4),
                   "train_seconds": round(self.train_seconds, 1),
                   "compute_precision": self.precision}
        if self.teacher_uri:
            records.update(teacher_uri=self.teacher_uri,
                           final_distill_loss=self.final_distill_loss)
        return records


class _Untracked:
    """Holds the frozen teacher out of Keras's tracking, so out of the trainer's weights,
    epoch checkpoints and backups: it is loaded again, never trained."""

    def __init__(self, model: keras.Model):
        self.model = model


class CenterNetTrainer(keras.Model):
    """Adds CenterNet's loss to a functional detector for ``fit``/``evaluate``.

    With a ``teacher``, each training step also runs it (frozen, inference mode) on the
    same augmented batch and adds ``distill_weight`` x its distillation terms
    (``trainer.distill``) to the loss. Validation reports the ground-truth terms alone, so
    ``val_loss`` compares with runs without a teacher.

    The steps are ``do_not_convert``: autograph would otherwise transpile tf_keras's own
    layer code (it is not on autograph's skip list), which took ~45 s per traced step.
    """

    def __init__(self, detector: keras.Model, teacher: keras.Model | None = None,
                 distill_weight: float = 1.0):
        super().__init__(name="centernet_trainer")
        self.detector = detector
        self._teacher = _Untracked(teacher) if teacher is not None else None
        self._distill_weight = distill_weight
        names = LOSS_NAMES + (distill.DISTILL_NAMES if teacher is not None else ())
        self._trackers = {name: keras.metrics.Mean(name) for name in names}

    def call(self, images: tf.Tensor, training: bool = False) -> dict[str, tf.Tensor]:
        return self.detector(images, training=training)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return list(self._trackers.values())

    def _record(self, terms: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Updates the trackers of ``terms``; returns their running means."""
        trackers = {name: t for name, t in self._trackers.items() if name in terms}
        for name, tracker in trackers.items():
            tracker.update_state(terms[name])
        return {name: tracker.result() for name, tracker in trackers.items()}

    def _train_loss(self, images: tf.Tensor, targets: dict[str, tf.Tensor],
                    outputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        terms = detection_loss(targets, outputs)
        if self._teacher is None:
            return terms
        soft = distill.distillation_loss(
            distill.teacher_outputs(self._teacher.model, images), outputs, targets)
        return {**terms, **soft,
                "loss": terms["loss"] + self._distill_weight * soft["distill_loss"]}

    @tf.autograph.experimental.do_not_convert
    def train_step(self, data):
        images, targets = data
        with tf.GradientTape() as tape:
            terms = self._train_loss(images, targets, self.detector(images, training=True))
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


@dataclasses.dataclass
class Plan:
    """How long training runs: fixed up front, or by ``StepBudget`` after its measuring
    steps. ``validation_epochs`` is the very list ``fit`` got as ``validation_freq`` (Keras
    reads it at each epoch end), so a plan fixed mid-run moves the validations with it."""

    steps_per_epoch: int
    total_steps: int | None  # None until a time budget has been measured
    validation_epochs: list[int]

    @property
    def epochs(self) -> int | None:
        return None if self.total_steps is None else math.ceil(
            self.total_steps / self.steps_per_epoch)

    def fix(self, total_steps: int) -> None:
        self.total_steps = total_steps
        self.validation_epochs[:] = validation_epochs(self.epochs)


def validation_epochs(epochs: int) -> list[int]:
    """<= NUM_VALIDATIONS evenly spaced 1-based epochs, always including the last."""
    every = math.ceil(epochs / NUM_VALIDATIONS)
    return sorted({*range(every, epochs + 1, every), epochs})


def budget_steps(step: int, step_seconds: float, seconds_left: float, eval_batches: int
                 ) -> int:
    """Total optimizer steps that fit: the ``step`` already taken plus as many more as the
    time left allows, after NUM_VALIDATIONS validations and a BUDGET_MARGIN.

    Args:
      step_seconds: measured wall time per training step.
      seconds_left: until the deadline (export already reserved).
      eval_batches: batches per validation pass.
    """
    eval_seconds = NUM_VALIDATIONS * eval_batches * step_seconds * EVAL_STEP_FRACTION
    more = (seconds_left - eval_seconds) * (1 - BUDGET_MARGIN) / step_seconds
    return step + max(0, math.floor(more))


class StepBudget(keras.callbacks.Callback):
    """Times global steps MEASURE_STEPS, and the same steps of the second epoch; with a
    deadline, fixes the run's length after each.

    Once the step time is known it sets the plan's total steps (``budget_steps``), the LR
    schedule's length (so the cosine ends at ~0 on the last step rather than being cut)
    and ``planned_steps``, a variable in the backups so a resumed run keeps its plan; it
    stops ``fit`` at that step.
    """

    def __init__(self, plan: Plan, schedule: WarmupCosine, planned_steps: tf.Variable,
                 deadline: float | None, eval_batches: int):
        super().__init__()
        self._plan, self._schedule, self._planned = plan, schedule, planned_steps
        self._deadline, self._eval_batches = deadline, eval_batches
        self._started: float | None = None
        self.step_seconds = 0.0

    def on_train_begin(self, logs: dict | None = None) -> None:
        restored = int(self._planned.numpy())  # BackupAndRestore ran before this callback
        if self._deadline is not None and restored:
            self._plan.fix(restored)

    def _windows(self) -> list[tuple[int, int]]:
        """The timed steps: MEASURE_STEPS, then the same steps of the second epoch (when
        an epoch is long enough for the two windows not to overlap)."""
        second = tuple(self._plan.steps_per_epoch + s for s in MEASURE_STEPS)
        return [MEASURE_STEPS] + ([second] if second[0] > MEASURE_STEPS[1] else [])

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        step = int(self.model.optimizer.iterations.numpy())
        for first, last in self._windows():
            if step == first:
                self._started = time.perf_counter()
            elif step == last and self._started is not None:
                self.step_seconds = (time.perf_counter() - self._started) / (last - first)
                self._started = None
                # The second plan moves the cosine's end a few dozen steps after warmup,
                # where that changes the rate by well under 1 %.
                if self._deadline is not None and step < (self._plan.total_steps or step + 1):
                    self._fix(step)
        if self._plan.total_steps is not None and step >= self._plan.total_steps:
            self.model.stop_training = True

    def _fix(self, step: int) -> None:
        total = budget_steps(step, self.step_seconds, self._deadline - time.perf_counter(),
                             self._eval_batches)
        warmup = min(self._schedule.warmup_steps, total)
        self._schedule.set_length(total, warmup)
        self._planned.assign(total)
        self._plan.fix(total)
        logging.info("Time budget: %.3f s per step, %d steps fit (%d epochs of %d), warmup %d",
                     self.step_seconds, total, self._plan.epochs, self._plan.steps_per_epoch,
                     warmup)


class EpochLog(keras.callbacks.Callback):
    """One log line per epoch with its losses; ``sightline run`` shows it on the console."""

    def __init__(self, plan: Plan):
        super().__init__()
        self._plan = plan

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        losses = ", ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items())
                           if k.endswith("loss"))
        logging.info("Epoch %d/%s: %s", epoch + 1, self._plan.epochs or "?", losses)


def make_optimizer(peak_learning_rate: float, weight_decay: float, total_steps: int,
                   warmup_steps: int) -> keras.optimizers.Optimizer:
    """AdamW on a warmup + cosine schedule, clipped, with no decay on BN and biases."""
    return _adamw(WarmupCosine(peak_learning_rate, total_steps, warmup_steps), weight_decay)


def _adamw(schedule: WarmupCosine, weight_decay: float) -> keras.optimizers.Optimizer:
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule,
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
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    if config.time_budget_s:
        logging.info("Training on %d examples in steps of %d for %.0f s", num_train,
                     config.batch_size, config.time_budget_s)
        # The measuring steps must fall in warmup: the cosine's length is not known yet.
        return steps_per_epoch, max(warmup_steps, MEASURE_STEPS[1])
    logging.info("Training on %d examples: %d epochs x %d steps of %d", num_train,
                 config.epochs, steps_per_epoch, config.batch_size)
    return steps_per_epoch, min(warmup_steps, total_steps)


@contextlib.contextmanager
def precision_policy(precision: str) -> Iterator[None]:
    """Builds models inside under Keras ``mixed_bfloat16`` (bf16 compute, float32 weights;
    the detector's outputs and so the losses stay float32) or ``float32``; float32 after."""
    keras.mixed_precision.set_global_policy(
        "mixed_bfloat16" if precision == "bfloat16" else "float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _float32_copy(detector: keras.Model, config: TrainConfig) -> keras.Model:
    """The detector rebuilt under the float32 policy with the trained weights (which
    mixed precision keeps in float32): export, QAT and TFLite take float32 models."""
    copy = build_model(config.model_size, config.input_size, config.num_classes)
    copy.set_weights(detector.get_weights())
    return copy


def _teacher(teacher_dir: str | None, config: TrainConfig) -> keras.Model | None:
    """The frozen teacher at ``teacher_dir`` (None without one), logged."""
    if not teacher_dir:
        return None
    teacher = distill.load_teacher(teacher_dir, config)
    logging.info("Distilling from %s (%s, weight %g)", teacher_dir, teacher.name,
                 config.distill_weight)
    return teacher


def _callbacks(run_dir: str, budget: StepBudget, plan: Plan) -> list[keras.callbacks.Callback]:
    """Resume, checkpoints, TensorBoard, a loud NaN, the time budget, progress lines."""
    return [
        keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup"),
                                         save_freq=BACKUP_EVERY_STEPS),
        keras.callbacks.ModelCheckpoint(
            os.path.join(run_dir, "checkpoints", "epoch-{epoch:03d}"), save_weights_only=True),
        keras.callbacks.TensorBoard(log_dir=run_dir, update_freq="epoch"),
        RaiseOnNaN(),
        budget,
        EpochLog(plan),
    ]


def train(config: TrainConfig, train_files: list[str], eval_files: list[str], run_dir: str,
          train_steps: int | None = None, eval_steps: int | None = None,
          teacher_dir: str | None = None) -> TrainResult:
    """Trains a detector for ``config.epochs`` epochs (or ``train_steps`` total if set), or
    for as many steps as ``config.time_budget_s`` allows; with ``config.teacher``, distils.

    Args:
      train_files, eval_files: GZIP TFRecord glob patterns (TFX split URIs).
      run_dir: TensorBoard logs, per-epoch checkpoints and the BackupAndRestore state,
        so a killed run resumes from its last backup (every BACKUP_EVERY_STEPS steps).
      teacher_dir: the teacher's export (``distill.teacher_dir``); by default
        ``config.teacher`` read as a path. Loading it counts against the time budget.
    Returns:
      The trained detector (float32), the final train/eval losses, what the run took.
    """
    started = time.perf_counter()
    # --- determinism: same seed, same data order, same weights --------------------
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    # Before any op runs: MultiWorkerMirroredStrategy configures collectives at startup.
    strategy = make_strategy(config.strategy)
    precision = resolve_precision(config.precision, cpu_flags())
    teacher_dir = teacher_dir or distill.teacher_dir(config.teacher, None)

    # --- data -----------------------------------------------------------------------
    steps_per_epoch, warmup_steps = plan_steps(config, count_examples(train_files), train_steps)
    deadline = eval_batches = None
    if config.time_budget_s:
        deadline = started + config.time_budget_s - EXPORT_RESERVE_S
        eval_batches = eval_steps or math.ceil(count_examples(eval_files) / config.batch_size)
        plan = Plan(steps_per_epoch, None, [])
    else:
        total = steps_per_epoch * config.epochs
        plan = Plan(steps_per_epoch, total, validation_epochs(config.epochs))

    # --- model and optimizer, built under the strategy and the precision policy ---------
    with precision_policy(precision):
        with strategy.scope():
            detector = build_model(config.model_size, config.input_size, config.num_classes)
            # Same policy as the student: bf16 compute where it is native, float32 outputs.
            trainer = CenterNetTrainer(detector, _teacher(teacher_dir, config),
                                       config.distill_weight)
            # Without a plan yet (a budget), the provisional length is all warmup.
            schedule = WarmupCosine(config.learning_rate, plan.total_steps or warmup_steps,
                                    warmup_steps)
            optimizer = _adamw(schedule, config.weight_decay)
            trainer.compile(optimizer=optimizer)
            # Tracked by the backups: a resumed budgeted run keeps its plan and schedule.
            trainer.planned_steps = tf.Variable(0, dtype=tf.int64, trainable=False)
            trainer.schedule_length = list(schedule.length_variables)
        budget = StepBudget(plan, schedule, trainer.planned_steps, deadline, eval_batches or 0)

        # --- fit; validate <= NUM_VALIDATIONS times, always after the last epoch ----------
        history = trainer.fit(
            make_dataset(train_files, config, training=True),
            epochs=plan.epochs or UNBOUNDED_EPOCHS,
            steps_per_epoch=steps_per_epoch,
            validation_data=make_dataset(eval_files, config, training=False),
            validation_steps=eval_steps or None,
            validation_freq=plan.validation_epochs,
            callbacks=_callbacks(run_dir, budget, plan),
            verbose=2,
        )
    return TrainResult(
        detector=detector if precision == "float32" else _float32_copy(detector, config),
        final_train_loss=float(history.history["loss"][-1]),
        final_eval_loss=float(history.history["val_loss"][-1]),
        steps=int(optimizer.iterations.numpy()),
        step_seconds=budget.step_seconds,
        train_seconds=time.perf_counter() - started,
        precision=precision,
        teacher_uri=teacher_dir,
        final_distill_loss=(float(history.history["distill_loss"][-1]) if teacher_dir
                            else None),
    )


# --- fine-tuning a trained detector (QAT, pruning) --------------------------------------
def epoch_steps(config: TrainConfig, train_files: list[str]) -> int:
    """Optimizer steps in one pass over the training examples (at least 1)."""
    return max(count_examples(train_files) // config.batch_size, 1)


def fine_tune(model: keras.Model, config: TrainConfig, train_files: list[str], run_dir: str,
              epochs: int, learning_rate: float, steps_per_epoch: int,
              callbacks: Sequence[keras.callbacks.Callback] = (), name: str = "Fine-tune"
              ) -> None:
    """Fine-tunes an already trained ``model`` in place with the training loss and input
    pipeline: what ``trainer.qat`` and ``trainer.prune`` share.

    Args:
      model: the detector to update (e.g. with fake-quant ops or pruning wrappers).
      config: its TrainConfig (input size, batch, augmentation seed, weight decay).
      run_dir: TensorBoard logs.
      epochs / learning_rate / steps_per_epoch: the budget; the rate decays by a cosine
        to 0 with no warmup (the weights are already trained).
      callbacks: added after TensorBoard and ``RaiseOnNaN`` (e.g. tfmot's
        ``UpdatePruningStep``).
      name: what the log line calls this fine-tune.
    """
    logging.info("%s: %d epochs x %d steps at lr %g", name, epochs, steps_per_epoch,
                 learning_rate)
    trainer = CenterNetTrainer(model)
    trainer.compile(optimizer=make_optimizer(
        learning_rate, config.weight_decay, total_steps=steps_per_epoch * epochs,
        warmup_steps=0))
    trainer.fit(
        make_dataset(train_files, config, training=True),
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=[keras.callbacks.TensorBoard(log_dir=run_dir), RaiseOnNaN(), *callbacks],
        verbose=2,
    )
