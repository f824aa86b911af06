"""Which exported model a feedback command uses, and what it ships with.

A model is named by a registry version (``sightline models list``) or by the path of an
exported SavedModel (a Trainer's ``Format-Serving`` folder, a pushed version folder, a
test export). Class names come from ``assets.extra/hparams.json``; per-class score
thresholds from ``assets.extra/release.json`` (written by the Pusher from the evaluation's
max-F1 thresholds), so an unpushed export has none and ``default_threshold`` applies.
"""

from __future__ import annotations

import dataclasses
import json
import os

from serving.backends import SAVED_MODEL_FILE
from trainer.export import ASSETS_EXTRA, HPARAMS_FILE

RELEASE_FILE = "release.json"


@dataclasses.dataclass(frozen=True)
class ModelDir:
    path: str
    name: str  # the version number, or the folder's name for a bare export
    class_names: tuple[str, ...]
    thresholds: dict[str, float]  # class name -> max-F1 score threshold

    def label_name(self, label: int) -> str:
        """Class name of a 1-based label, ``class <n>`` when the model does not know it."""
        names = self.class_names
        return names[label - 1] if 0 < label <= len(names) else f"class {label}"

    def threshold(self, label: int, default: float) -> float:
        return self.thresholds.get(self.label_name(label), default)


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def open_dir(path: str, name: str | None = None) -> ModelDir:
    """The exported model at ``path``; ValueError naming the path if it is not one."""
    if not os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)):
        raise ValueError(f"{path}: no {SAVED_MODEL_FILE} here; pass a version number or an "
                         "exported SavedModel folder")
    extra = os.path.join(path, ASSETS_EXTRA)
    hparams = _read_json(os.path.join(extra, HPARAMS_FILE))
    release = _read_json(os.path.join(extra, RELEASE_FILE))
    return ModelDir(path, name or os.path.basename(os.path.normpath(path)),
                    tuple(hparams.get("class_names", ())),
                    {k: float(v) for k, v in release.get("score_thresholds", {}).items()})


def resolve(spec: str, registry_factory) -> ModelDir:
    """A version number (looked up with ``registry_factory()``) or a SavedModel folder."""
    if os.path.isdir(spec):
        return open_dir(spec)
    if not spec.isdigit():
        raise ValueError(f"{spec!r} is neither a folder nor a version number")
    registry = registry_factory()
    snap = registry.snapshot()
    pushed = registry.require(snap, spec, "use")
    return open_dir(pushed.custom_properties["pushed_destination"].string_value, spec)
