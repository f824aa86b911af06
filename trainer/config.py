"""The one typed training config, parsed from the Trainer's ``custom_config``.

Run: ``Trainer(run_fn="trainer.task.run_fn", custom_config=TrainConfig(...).to_dict())``.
Budget of the defaults (``python -m benchmarks.train_bench``; figures, CPUs and dates in
docs/training.md): ``small`` at 128 px, batch 16, 2,413 images x 32 epochs takes ~5.5
minutes on a 2-core AVX-512 EPYC and about twice that on AVX2-only CPUs. At this budget
epochs beat pixels (128 px x 32 epochs beat 160 px x 20 epochs at equal time).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from typing import Any

MODEL_SIZES = ("small", "medium")
STRATEGIES = ("default", "mirrored", "multi_worker")
PRECISIONS = ("auto", "float32", "bfloat16")


SERVING_SUBDIR = "Format-Serving"  # a Trainer Model artifact's export folder


def is_teacher_path(teacher: str) -> bool:
    """A ``teacher`` naming an export (a path or URI), not a model size to resolve."""
    return "/" in teacher or os.sep in teacher


def export_candidates(path: str) -> list[str]:
    """Where an export named by ``path`` may hold its saved_model.pb: the folder itself (an
    export, a pushed version) or its ``Format-Serving`` (a Trainer's Model folder)."""
    return [path, os.path.join(path, SERVING_SUBDIR)]


def _teacher_problems(teacher: Any) -> list[str]:
    if not isinstance(teacher, str):
        return [f"teacher={teacher!r}; use a model size {MODEL_SIZES} or an export's path"]
    if not teacher or teacher in MODEL_SIZES or is_teacher_path(teacher):
        return []
    close = difflib.get_close_matches(teacher, MODEL_SIZES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return [f"teacher={teacher!r}{hint}; use a model size {MODEL_SIZES} (the latest such Model "
            "in ML Metadata) or an exported model's path (e.g. ./teacher or gs://b/teacher)"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a trained model; saved with it as ``hparams.json``."""

    class_names: tuple[str, ...]
    model_size: str = "small"
    input_size: int = 128
    epochs: int = 32
    batch_size: int = 16
    learning_rate: float = 8e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    seed: int = 42
    max_detections: int = 100
    strategy: str = "default"
    # Repeat-factor sampling for the long tail (LVIS, Gupta et al. 2019): an image is shown
    # max(1, sqrt(t / f_c)) times per pass for its rarest class c, f_c being the share of
    # training images containing c. 0 turns it off; e.g. 0.3 repeats classes in < 30 %.
    repeat_factor_threshold: float = 0.0
    # Seconds the whole Trainer may take (training, validation, export); 0 turns it off
    # and trains ``epochs`` epochs. When set, ``epochs`` is ignored: the Trainer times its
    # steps 5-25 of the first two epochs and fixes the number of steps (and the LR
    # schedule's length) that fits.
    time_budget_s: float = 0.0
    # Compute precision: "auto" is Keras mixed_bfloat16 where the CPU does bf16 natively
    # (AMX or AVX-512 BF16), float32 elsewhere; weights, heads, losses and export stay
    # float32 either way.
    precision: str = "auto"
    # Knowledge distillation (docs/training.md#distillation): "" trains on the ground
    # truth alone; a model size ("medium") distils from the latest Model of that size
    # recorded in ML Metadata (the DAG resolves it); a path distils from that export (a
    # Trainer's Format-Serving dir or a pushed version dir). The teacher runs frozen.
    teacher: str = ""
    # Weight of the distillation terms (trainer/distill.py) next to the ground-truth loss,
    # whose weight stays 1. 1.0 weighs teacher and ground truth equally, the 50/50 mix of
    # hard and soft targets that heatmap distillation (Zhang et al. 2019, Fast Pose
    # Distillation, alpha=0.5) and detector distillation (Chen et al. 2017, mu=0.5) use.
    distill_weight: float = 1.0

    def __post_init__(self) -> None:
        # Lists arrive from JSON; a tuple keeps the config hashable and immutable.
        object.__setattr__(self, "class_names", tuple(self.class_names))
        problems = []
        if not self.class_names or not all(isinstance(n, str) and n for n in self.class_names):
            problems.append("class_names must be a non-empty list of non-empty strings")
        if len(set(self.class_names)) != len(self.class_names):
            problems.append(f"class_names has duplicates: {list(self.class_names)}")
        if self.model_size not in MODEL_SIZES:
            problems.append(f"model_size={self.model_size!r}; use one of {MODEL_SIZES}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision={self.precision!r}; use one of {PRECISIONS}")
        if self.time_budget_s < 0:
            problems.append(f"time_budget_s={self.time_budget_s}; use 0 (off) or seconds > 0")
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy={self.strategy!r}; use one of {STRATEGIES}")
        # The detector downsamples by 32 before upsampling back to stride 4.
        if self.input_size < 32 or self.input_size % 32:
            problems.append(f"input_size={self.input_size}; use a multiple of 32, e.g. 128")
        for name in ("epochs", "batch_size", "max_detections"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)}; must be >= 1")
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            problems.append("learning_rate must be > 0, weight_decay and warmup_epochs >= 0")
        if not 0 <= self.repeat_factor_threshold <= 1:
            problems.append(f"repeat_factor_threshold={self.repeat_factor_threshold}; use 0 "
                            "(off) up to 1")
        problems += _teacher_problems(self.teacher)
        if self.distill_weight <= 0:
            problems.append(f"distill_weight={self.distill_weight}; must be > 0 (leave teacher "
                            "empty to train without one)")
        if problems:
            raise ValueError("Invalid TrainConfig: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Parses ``custom_config``; unknown keys are errors so a typo never goes unused."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, fields, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(
                f"Unknown custom_config keys: {', '.join(hints)}. Known keys: {sorted(fields)}"
            )
        if "class_names" not in values:
            raise ValueError("custom_config needs 'class_names' (label i+1 = class_names[i])")
        coerced = {}
        for key, value in values.items():
            kind = fields[key].type
            # JSON gives ints for floats ("1" for 1.0); reject bools posing as numbers.
            if kind in ("int", "float") and (isinstance(value, bool) or value is None):
                raise ValueError(f"custom_config[{key!r}]={value!r}; expected {kind}")
            if kind == "int" and (not isinstance(value, int)):
                raise ValueError(f"custom_config[{key!r}]={value!r}; expected an integer")
            coerced[key] = float(value) if kind == "float" else value
        return cls(**coerced)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``from_dict(to_dict())`` round-trips."""
        values = dataclasses.asdict(self)
        values["class_names"] = list(self.class_names)
        return values

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
