"""Runs ``trainer.train.train`` in its own process and reports steps and weight hashes.

The distributed, kill/resume and determinism tests need fresh processes (TF_CONFIG,
SIGKILL, a clean TF runtime), so they drive this script:
``python -m tests.train_worker --train GLOB --eval GLOB --run-dir DIR --report FILE``.
It writes ``FILE`` (JSON) when training ends; with ``--pause-after-step N`` it writes
``FILE.paused`` after global step N and then blocks until it is killed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Sequence

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import tensorflow as tf
import tf_keras as keras

from tests.trainer_fixture import CLASS_NAMES
from trainer import train as train_module
from trainer.config import TrainConfig

INPUT_SIZE = 64


def weights_hash(variables: Sequence[tf.Variable]) -> str:
    """sha256 over every weight's bytes, in model order: equal only if bit-identical."""
    digest = hashlib.sha256()
    for variable in variables:
        digest.update(variable.numpy().tobytes())
    return digest.hexdigest()


class Probe(keras.callbacks.Callback):
    """Records the global step and weights ``fit`` starts from (after any restore).

    It runs after ``train``'s own callbacks, so BackupAndRestore has already restored
    (on_train_begin) or backed up (on_train_batch_end) when it looks.
    """

    def __init__(self, pause_after_step: int | None, paused_marker: str):
        super().__init__()
        self.pause_after_step = pause_after_step
        self.paused_marker = paused_marker
        self.replicas = 0
        self.start_step = -1
        self.final_step = -1
        self.initial_hash = ""
        self.steps_run = 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.replicas = self.model.distribute_strategy.num_replicas_in_sync
        self.start_step = int(self.model.optimizer.iterations.numpy())
        self.initial_hash = weights_hash(self.model.detector.weights)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.steps_run += 1
        step = int(self.model.optimizer.iterations.numpy())
        if step == self.pause_after_step:
            with open(f"{self.paused_marker}.tmp", "w") as f:
                json.dump({"step": step}, f)
            os.replace(f"{self.paused_marker}.tmp", self.paused_marker)  # seen whole or not
            while True:  # the test kills the process here, mid-epoch
                time.sleep(1)

    def on_train_end(self, logs: dict | None = None) -> None:
        self.final_step = int(self.model.optimizer.iterations.numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", required=True, help="train split glob")
    parser.add_argument("--eval", required=True, help="eval split glob")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--report", required=True, help="JSON written when training ends")
    parser.add_argument("--strategy", default="default")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=None)
    parser.add_argument("--backup-every", type=int, default=None,
                        help="overrides trainer.train.BACKUP_EVERY_STEPS")
    parser.add_argument("--pause-after-step", type=int, default=None)
    args = parser.parse_args()

    config = TrainConfig(class_names=tuple(CLASS_NAMES), input_size=INPUT_SIZE,
                         epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                         strategy=args.strategy)
    probe = Probe(args.pause_after_step, args.report + ".paused")
    fit = keras.Model.fit

    def fit_with_probe(model: keras.Model, *fit_args, callbacks: list, **kwargs):
        return fit(model, *fit_args, callbacks=[*callbacks, probe], **kwargs)

    # Patched in place, not via train()'s signature: this process trains exactly once.
    keras.Model.fit = fit_with_probe
    if args.backup_every:
        train_module.BACKUP_EVERY_STEPS = args.backup_every
    result = train_module.train(config, [args.train], [args.eval], args.run_dir,
                                train_steps=args.train_steps, eval_steps=1)

    report = {
        "replicas": probe.replicas,
        "start_step": probe.start_step,
        "final_step": probe.final_step,
        "steps_run": probe.steps_run,
        "initial_hash": probe.initial_hash,
        "final_hash": weights_hash(result.detector.weights),
    }
    with open(args.report, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
