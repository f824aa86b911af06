"""Typed pipeline settings: one frozen dataclass per concern, defaults in one place.

Each section validates itself when it is built, so a bad value fails when the config is
loaded (``pipelines.configs.load``), before any component runs. ``create_pipeline`` takes
the sections as they are; the runners only add paths and infrastructure.

Nothing here imports TensorFlow or TFX: parsing a config must stay cheap.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from schemas import DEFAULT_SCHEMA_PATH

ON_DRIFT_CHOICES = ("fail", "warn")
BEAM_MODES = ("in_memory", "multi_processing")
# Beam flags that tell workers where the code comes from; TFX packages itself without one.
BEAM_DEPENDENCY_FLAGS = ("--setup_file", "--extra_package", "--requirements_file",
                         "--sdk_container_image", "--worker_harness_container_image")
DEFAULT_RUN_FN = "trainer.task.run_fn"


def _require(problems: list[str], section: str) -> None:
    if problems:
        raise ValueError(f"invalid {section} settings: " + "; ".join(problems))


@dataclasses.dataclass(frozen=True)
class SyntheticData:
    """The generated dataset used when no data root is given."""

    num_images: int = 3000
    seed: int = 0
    scenario: str = "default"

    def __post_init__(self) -> None:
        _require([] if self.num_images >= 1 else [f"num_images={self.num_images}; must be >= 1"],
                 "data.synthetic")

    @property
    def key(self) -> str:
        return f"{self.scenario}-{self.num_images}-seed{self.seed}"


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """Where the COCO data comes from and how it is split."""

    root: str | None = None  # a COCO dataset folder; None: the synthetic dataset
    annotations_pattern: str = "annotations.json"  # or e.g. 'span-{SPAN}/annotations.json'
    # The folder image 'file_name' entries are relative to; None: the annotations file's
    # folder. Relative to `root`; '{SPAN}' is the annotations pattern's span.
    images_root: str | None = None  # e.g. 'train' beside 'annotations/instances_train.json'
    # Ingest this span of a '{SPAN}' pattern instead of the latest (a re-run by hand; what
    # `sightline run --when-new-span` pins, so a span landing meanwhile waits its turn).
    span: int | None = None
    # Read absolute 'file_name' entries as given (a dataset spread over mounts); relative
    # ones may never leave the images root either way.
    allow_absolute_paths: bool = False
    synthetic: SyntheticData = SyntheticData()
    schema_path: str = DEFAULT_SCHEMA_PATH  # the curated schema; also the label space
    # Hash buckets per split: an image never changes split as the dataset grows.
    split_buckets: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"train": 4, "eval": 1})
    # Stop before training when a split is this small or this share of the listed images
    # was quarantined: a systematic error (a wrong images root) must not reach the Trainer.
    min_examples_per_split: int = 8
    max_quarantined_fraction: float = 0.2

    def __post_init__(self) -> None:
        problems = []
        if self.images_root is not None and not self.images_root:
            problems.append("images_root=''; leave it unset (None) to read images beside the "
                            "annotations file")
        if "{SPAN" in (self.images_root or "") and "{SPAN" not in self.annotations_pattern:
            problems.append(f"images_root={self.images_root!r} has a span, but "
                            f"annotations_pattern={self.annotations_pattern!r} has none to "
                            "take it from")
        if self.span is not None and (self.span < 0 or "{SPAN" not in self.annotations_pattern):
            problems.append(f"span={self.span}; needs a span >= 0 and an annotations_pattern "
                            "with '{SPAN}', e.g. 'span-{SPAN}/annotations.json'")
        if not isinstance(self.allow_absolute_paths, bool):
            problems.append(f"allow_absolute_paths={self.allow_absolute_paths!r}; use true or "
                            "false")
        if set(self.split_buckets) != {"train", "eval"}:
            problems.append(f"split_buckets={dict(self.split_buckets)}; the Trainer and "
                            "Evaluator need exactly the splits 'train' and 'eval'")
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 1
               for n in self.split_buckets.values()):
            problems.append(f"split_buckets={dict(self.split_buckets)}; buckets must be ints >= 1")
        if self.min_examples_per_split < 1:
            problems.append(f"min_examples_per_split={self.min_examples_per_split}; must be >= 1")
        if not 0 <= self.max_quarantined_fraction <= 1:
            problems.append(f"max_quarantined_fraction={self.max_quarantined_fraction}; use a "
                            "share in [0, 1]")
        _require(problems, "data")


@dataclasses.dataclass(frozen=True)
class GateSettings:
    """When the Evaluator blesses a model (see ``pipelines.pipeline.eval_config``)."""

    # A floor that catches a broken model, not a quality bar (docs/evaluation.md).
    map_floor: float = 0.1
    max_map_regression: float = 0.01  # versus the latest blessed model
    # No slice of these features may lose more mAP than this versus the blessed model;
    # slices with fewer than min_slice_images eval images are "too few examples" instead.
    gated_slices: tuple[str, ...] = ("meta/camera", "meta/lighting")
    max_slice_map_regression: float = 0.05
    min_slice_images: int = 20

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.map_floor <= 1:
            problems.append(f"map_floor={self.map_floor}; mAP lies in [0, 1]")
        for name in ("max_map_regression", "max_slice_map_regression"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name}={getattr(self, name)}; use a drop in [0, 1]")
        if self.min_slice_images < 1:
            problems.append(f"min_slice_images={self.min_slice_images}; must be >= 1")
        bad_slices = [s for s in self.gated_slices if not s.startswith("meta/")]
        if bad_slices:
            problems.append(f"gated_slices {bad_slices}: slices are metadata features "
                            "('meta/<field>')")
        _require(problems, "gates")


@dataclasses.dataclass(frozen=True)
class DriftSettings:
    """Drift versus the previous span; L∞ / JS thresholds are the schema's comparators."""

    on_drift: str = "fail"  # "fail" stops the run before training, "warn" records and trains
    psi_threshold: float = 0.25
    box_fit_tolerance: float = 0.3  # per-class median object/box area may move ±30 %

    def __post_init__(self) -> None:
        problems = []
        if self.on_drift not in ON_DRIFT_CHOICES:
            problems.append(f"on_drift={self.on_drift!r}; use one of {ON_DRIFT_CHOICES}")
        if self.psi_threshold <= 0 or self.box_fit_tolerance <= 0:
            problems.append("psi_threshold and box_fit_tolerance must be > 0")
        _require(problems, "drift")


def _teacher_path_problems(teacher: str) -> list[str]:
    """A local ``train.teacher`` path must hold an export now, not when the Trainer starts;
    remote URIs (gs://...) are checked by the Trainer."""
    from trainer.config import export_candidates, is_teacher_path

    if not is_teacher_path(teacher) or "://" in teacher:
        return []
    if any(os.path.isfile(os.path.join(folder, "saved_model.pb"))
           for folder in export_candidates(teacher)):
        return []
    return [f"teacher={teacher!r}: no saved_model.pb there or in its Format-Serving; give a "
            "Trainer Model folder, its Format-Serving or a pushed version folder, or a model "
            "size (e.g. medium) for the latest such Model in ML Metadata"]


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """The Trainer: its ``run_fn`` and that run_fn's hyperparameters (``custom_config``).

    With the default run_fn every hparam is a ``trainer.config.TrainConfig`` field and is
    checked against it at load time; a custom run_fn gets its hparams unchecked.
    """

    run_fn: str = DEFAULT_RUN_FN  # swap in your own model code without touching the DAG
    hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.run_fn == DEFAULT_RUN_FN:
            from trainer.config import TrainConfig  # dataclasses only: no TensorFlow

            # class_names come from the schema at pipeline build time; a placeholder here.
            config = TrainConfig.from_dict({"class_names": ["placeholder"], **self.hparams})
            _require(_teacher_path_problems(config.teacher), "train")

    @staticmethod
    def known_hparams() -> tuple[str, ...]:
        """The hparam names the default run_fn accepts (for "did you mean")."""
        from trainer.config import TrainConfig

        return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "class_names")


@dataclasses.dataclass(frozen=True)
class EdgeSettings:
    """The edge branch: QAT fine-tune, TFLite variants, which one ships."""

    enabled: bool = True  # False leaves the branch out (e.g. a run_fn that is not trainer/'s)
    qat_epochs: int = 1  # measured: one epoch at 1e-4 recovers most of PTQ's loss
    qat_learning_rate: float = 1e-4
    map_tolerance: float = 0.01  # mAP a shipped variant may lose versus float (0.01 = 1 point)

    def __post_init__(self) -> None:
        problems = []
        if self.qat_epochs < 1 or self.qat_learning_rate <= 0:
            problems.append("qat_epochs must be >= 1 and qat_learning_rate > 0")
        if not 0 <= self.map_tolerance <= 1:
            problems.append(f"map_tolerance={self.map_tolerance}; use a drop in [0, 1]")
        _require(problems, "edge")


@dataclasses.dataclass(frozen=True)
class ReleaseSettings:
    """What the release registry (``sightline models``) asks of a canary before stable.

    Not a pipeline setting: ``create_pipeline`` never sees it; ``sightline models`` reads
    it with the same ``--config``/``--set`` as ``sightline run``.
    """

    # A comparison must cover this many candidate answers: shadow pairs (the same request
    # answered by both versions) or, without shadow traffic, canary-routed requests.
    min_compare_requests: int = 200
    # Share of paired images whose detections agree (same classes, boxes at IoU >= 0.5).
    min_agreement: float = 0.9
    # Largest |mean score change| of a class's matched detections (canary - stable).
    max_score_shift: float = 0.05
    # Largest candidate / stable ratio of median latency in the compared logs.
    max_latency_ratio: float = 1.5
    # Detections scoring below this are left out of the comparison (neither shown nor
    # acted on by a client at any sensible threshold).
    compare_min_score: float = 0.3
    # Request logging written into models.config for a model the registry adds there;
    # shadowed requests are always logged. An existing logging_config is kept.
    request_log_sampling_rate: float = 0.1

    def __post_init__(self) -> None:
        problems = []
        if self.min_compare_requests < 1:
            problems.append(f"min_compare_requests={self.min_compare_requests}; must be >= 1")
        for name in ("min_agreement", "compare_min_score", "request_log_sampling_rate"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name}={getattr(self, name)}; use a share in [0, 1]")
        if not 0 <= self.max_score_shift <= 1:
            problems.append(f"max_score_shift={self.max_score_shift}; scores lie in [0, 1]")
        if self.max_latency_ratio <= 0:
            problems.append(f"max_latency_ratio={self.max_latency_ratio}; must be > 0")
        _require(problems, "release")


@dataclasses.dataclass(frozen=True)
class FeedbackSettings:
    """How ``sightline select`` ranks logged images for labelling (pipelines/feedback)."""

    # Weights of the three terms, each in [0, 1] (select.py's docstring).
    uncertainty_weight: float = 1.0
    disagreement_weight: float = 1.0
    novelty_weight: float = 1.0
    # Penalty per unit of cosine similarity to an image already picked.
    redundancy_weight: float = 0.5
    # Share of the budget reserved for detected classes, split by inverse frequency.
    class_quota_share: float = 0.5
    # Share of the budget reserved for drifted meta slices (select.drifted_slices), and
    # how many times its training share a slice's logged share must be to count.
    slice_quota_share: float = 0.25
    slice_min_ratio: float = 1.5
    # Neighbours in the novelty's density estimate (select.log_density_share).
    novelty_neighbours: int = 10
    # Detections below this are not considered at all (decode's floor is lower).
    min_score: float = 0.05
    # A class's threshold when the model has none (an export never evaluated).
    default_threshold: float = 0.3
    # Detections counted when two versions' answers are compared.
    disagreement_min_score: float = 0.3

    def __post_init__(self) -> None:
        problems = [f"{name}={getattr(self, name)}; use a share in [0, 1]"
                    for name in ("class_quota_share", "slice_quota_share", "min_score",
                                 "default_threshold", "disagreement_min_score")
                    if not 0 <= getattr(self, name) <= 1]
        if self.class_quota_share + self.slice_quota_share > 1:
            problems.append(f"class_quota_share + slice_quota_share = "
                            f"{self.class_quota_share + self.slice_quota_share}; at most 1")
        if self.novelty_neighbours < 1:
            problems.append(f"novelty_neighbours={self.novelty_neighbours}; must be >= 1")
        if self.slice_min_ratio < 1:
            problems.append(f"slice_min_ratio={self.slice_min_ratio}; use >= 1 (a slice "
                            "must be more common in the logs than in training)")
        problems += [f"{name}={getattr(self, name)}; must be >= 0"
                     for name in ("uncertainty_weight", "disagreement_weight",
                                  "novelty_weight", "redundancy_weight")
                     if getattr(self, name) < 0]
        _require(problems, "feedback")


@dataclasses.dataclass(frozen=True)
class MonitorSettings:
    """What ``sightline monitor`` alarms on (docs/monitoring.md); not a pipeline setting.

    Defaults are the span-over-span drift thresholds, which same-distribution traffic of
    a few hundred images stays below (measured in docs/monitoring.md); below
    ``min_window_images`` images a window's distances are shown but never alarm.
    """

    # Serving inputs vs training (skew) and window vs previous window (drift).
    linf_threshold: float = 0.15  # categorical features (meta/camera, meta/lighting)
    js_threshold: float = 0.1  # numeric features (brightness, contrast, width, height)
    psi_threshold: float = 0.25
    # Predictions vs the model's evaluation-time predictions (and the previous window).
    prediction_js_threshold: float = 0.1  # detection scores
    prediction_psi_threshold: float = 0.25  # detections per image, scores
    class_mix_linf_threshold: float = 0.15
    empty_share_tolerance: float = 0.1  # share of images with nothing above threshold
    # Labelled sample vs the Evaluator's metrics.
    max_map_drop: float = 0.1
    max_dece_rise: float = 0.05
    min_window_images: int = 100
    # A slice is judged with this many images in the window and in training (labelled
    # images, for the labelled sample): PSI on 50-80 images passed 0.8 by chance.
    min_slice_images: int = 100
    # The meta field a request's client id stands for when the request carries none.
    client_id_field: str = "camera"

    def __post_init__(self) -> None:
        problems = [f"{name}={getattr(self, name)}; must be > 0" for name in (
            "linf_threshold", "js_threshold", "psi_threshold", "prediction_js_threshold",
            "prediction_psi_threshold", "class_mix_linf_threshold", "empty_share_tolerance",
            "max_map_drop", "max_dece_rise") if getattr(self, name) <= 0]
        problems += [f"{name}={getattr(self, name)}; must be >= 1" for name in (
            "min_window_images", "min_slice_images") if getattr(self, name) < 1]
        _require(problems, "monitor")


@dataclasses.dataclass(frozen=True)
class BeamSettings:
    """Beam for the data and evaluation stages: local DirectRunner, or any runner's args."""

    # "in_memory" is fastest at the default size (worker start-up dominates).
    direct_running_mode: str = "in_memory"
    direct_num_workers: int = 2
    # Reach any runner, e.g. ["--runner=DataflowRunner", "--project=..."].
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if self.direct_running_mode not in BEAM_MODES:
            problems.append(f"direct_running_mode={self.direct_running_mode!r}; "
                            f"use one of {BEAM_MODES}")
        if self.direct_num_workers < 1:
            problems.append(f"direct_num_workers={self.direct_num_workers}; must be >= 1")
        _require(problems, "beam")

    def with_setup_file(self, setup_file: str | None) -> BeamSettings:
        """These settings plus ``--setup_file``, unless a dependency flag is set already.

        Why: without one, TFX copies its whole installation into a new temp folder at
        every Beam stage (a ~50 MB ``tfx_ephemeral`` sdist, never removed) for workers
        that then still lack Sightline's own DoFns and metric. The DirectRunner ignores
        the flag; a portable or Dataflow runner ships Sightline's sdist (~180 KB).
        """
        if not setup_file or any(arg.startswith(BEAM_DEPENDENCY_FLAGS)
                                 for arg in self.extra_args):
            return self
        return dataclasses.replace(self, extra_args=(*self.extra_args,
                                                     f"--setup_file={setup_file}"))

    def pipeline_args(self) -> list[str]:
        """The DirectRunner's flags, unless ``extra_args`` picks another ``--runner``."""
        if any(arg.startswith("--runner") for arg in self.extra_args):
            return list(self.extra_args)
        return [
            f"--direct_running_mode={self.direct_running_mode}",
            f"--direct_num_workers={self.direct_num_workers}",
            *self.extra_args,
        ]
