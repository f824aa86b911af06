"""train_bench's class-agnostic scoring: wrong classes cost mAP, merged classes do not."""

from __future__ import annotations

import pytest

from benchmarks.train_bench import class_agnostic_metrics
from components.coco_eval import offline
from tests.test_coco_offline import CLASSES, _detector, _example


def test_class_agnostic_metrics_ignore_only_the_class():
    examples = [_example(i, "cam-a" if i % 2 else "cam-b") for i in range(20)]
    detect = _detector(examples, wrong_on="cam-b")  # right boxes, swapped classes on cam-b
    aware = offline.evaluate(detect, examples, CLASSES, slice_keys=())["overall"]
    agnostic = class_agnostic_metrics(detect, examples)
    assert aware["mAP"] < 0.9
    assert agnostic["mAP"] == pytest.approx(1.0) and agnostic["mAP50"] == pytest.approx(1.0)
    assert agnostic["num_images"] == 20
