"""What a release carries, owned in one place: headline metrics, per-class score
thresholds, the per-split dataset record and the code version.

The ModelPusher (``release.json``), the EdgePusher (``metadata.json``, ``thresholds.json``),
the EdgeOptimizer (custom properties per variant), the run summary and the release
registry all read these through this module, so they cannot disagree.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from typing import Any

from ml_metadata.proto import metadata_store_pb2

from components.coco_eval import metric as coco_metric

# The numbers that stand for a model in summaries, release files and ML Metadata.
HEADLINE_METRICS = ("mAP", "mAP50", "mAP75", "AR100", coco_metric.DECE, coco_metric.NUM_IMAGES)
# Custom properties of an Examples artifact, written by CocoExampleGen.
CONTENT_HASH_PROPERTY = "content_hash_{split}"
NUM_EXAMPLES_PROPERTY = "num_examples_{split}"
# Custom property of a PushedModel (and a key of release.json): the code that built it.
CODE_VERSION_PROPERTY = "code_version"
CODE_VERSION_ENV = "SIGHTLINE_CODE_VERSION"  # set by a container build, where no .git is


def headline(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The headline metrics present in one slice's metrics, as floats."""
    return {k: float(metrics[k]) for k in HEADLINE_METRICS if k in metrics}


def score_thresholds(metrics: Mapping[str, Any]) -> dict[str, float]:
    """{class: score} keeping a class's detections scoring at least that (max F1).

    A class without eval objects has no entry: apply no class-specific threshold to it.
    """
    prefix = coco_metric.THRESHOLD_PREFIX
    return {k.removeprefix(prefix): float(v) for k, v in sorted(metrics.items())
            if k.startswith(prefix)}


def dataset_record(examples: metadata_store_pb2.Artifact) -> dict[str, dict[str, Any]]:
    """{split: {num_examples, content_hash}} of an Examples artifact, as recorded in MLMD.

    Takes the MLMD proto; from a TFX ``types.Artifact`` pass ``artifact.mlmd_artifact``.
    """
    props = examples.custom_properties
    splits = json.loads(examples.properties["split_names"].string_value or "[]")

    def value(name: str, kind: str) -> Any:
        return getattr(props[name], kind) if name in props else None

    return {
        split: {
            "num_examples": value(NUM_EXAMPLES_PROPERTY.format(split=split), "int_value"),
            "content_hash": value(CONTENT_HASH_PROPERTY.format(split=split), "string_value"),
        }
        for split in splits
    }


def code_version() -> str:
    """The code that is running: ``$SIGHTLINE_CODE_VERSION``, else ``git describe`` of the
    source tree (``-dirty`` with uncommitted changes), else the installed package version.

    Recorded with every push so a model card can name the code behind a model; a run
    from a container has no ``.git``, hence the variable its image build sets.
    """
    if os.environ.get(CODE_VERSION_ENV):
        return os.environ[CODE_VERSION_ENV]
    source = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        described = subprocess.run(
            ["git", "-C", source, "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        if described:
            return f"git {described}"
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib import metadata

    try:
        return f"sightline {metadata.version('sightline')} (no git checkout)"
    except metadata.PackageNotFoundError:
        return "unknown (no git checkout, no installed package)"
