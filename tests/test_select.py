"""sightline index + select: logged images ranked for labelling, written as a COCO set."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner
from tensorflow.core.example import example_pb2

from data import feature_spec as fs
from pipelines.cli import main
from serving import log_reader
from tests.fake_detector import save_fake_detector
from tests.feedback_fixture import (
    batches,
    shared_untrained,
    synth_examples,
    write_examples,
    write_log,
)

RARE = "ring"  # the generator's rarest class (5 % of objects)
BUDGET = 24
DEFAULT_TRAFFIC, NIGHT_TRAFFIC = 60, 36  # logged default-world and night_heavy images


def _digest_of(example: bytes) -> str:
    features = example_pb2.Example.FromString(example).features.feature
    return hashlib.sha256(features[fs.IMAGE_ENCODED].bytes_list.value[0]).hexdigest()


def _classes_of(example: bytes) -> set[str]:
    features = example_pb2.Example.FromString(example).features.feature
    return {t.decode() for t in features[fs.CLASS_TEXT].bytes_list.value}


def _lighting_of(example: bytes) -> str:
    features = example_pb2.Example.FromString(example).features.feature
    return features[fs.meta_key("lighting")].bytes_list.value[0].decode()


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    """A crop index over 32 default-world training images; logs of 60 default and 36
    night_heavy images served by the GT-derived fake detector; `select --budget 24`."""

    root = tmp_path_factory.mktemp("select")
    model = shared_untrained()
    train = synth_examples(root, "default", 32, seed=0)
    train_file = write_examples(root / "train.tfrecord.gz", train)
    traffic = (synth_examples(root, "default", DEFAULT_TRAFFIC, seed=5, first_image_id=1000)
               + synth_examples(root, "night_heavy", NIGHT_TRAFFIC, seed=6,
                                first_image_id=2000))
    fake = str(root / "fake")
    save_fake_detector(fake, 0.05)
    mixed = [traffic[i] for i in np.random.default_rng(0).permutation(len(traffic))]
    logs = root / "logs"
    write_log(fake, batches("examples", mixed, 8), str(logs / "det"),
              signature="serving_examples")
    home = root / "home"
    runner = CliRunner()
    built = runner.invoke(main, ["index", "--home", str(home), "--model", model,
                                 "--examples", str(train_file)])
    assert built.exit_code == 0, built.output
    out = root / "picked"
    result = runner.invoke(main, ["select", "--home", str(home), "--logs", str(logs),
                                  "--budget", str(BUDGET), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    picked = json.loads((out / "selection.json").read_text())["picked"]
    return {"out": out, "summary": json.loads(result.stdout), "traffic": traffic,
            "picked": [p["sha256"] for p in picked], "reasons": [p["reasons"] for p in picked]}


def _beats_random(selected, member) -> tuple[int, float, float]:
    """(picked members, random selection's expected count, its standard deviation):
    a random ``BUDGET`` of the logged images is hypergeometric."""
    members = {_digest_of(e) for e in selected["traffic"] if member(e)}
    n, k = len(selected["traffic"]), len(members)
    mean = BUDGET * k / n
    sd = np.sqrt(BUDGET * (k / n) * (1 - k / n) * (n - BUDGET) / (n - 1))
    return sum(d in members for d in selected["picked"]), mean, sd


@pytest.mark.slow  # the shared `selected` fixture: ~20 s idle, ~50 s loaded
def test_selection_picks_far_more_of_the_rare_class_than_random(selected):
    assert len(selected["picked"]) == BUDGET
    assert selected["summary"]["candidates"] == DEFAULT_TRAFFIC + NIGHT_TRAFFIC
    got, mean, sd = _beats_random(selected, lambda e: RARE in _classes_of(e))
    assert got >= mean + 2 * sd, (got, mean, sd)  # measured 8 vs 3.75 +- 1.55
    assert any(any(r.startswith(f"class quota: {RARE}") for r in reasons)
               for reasons in selected["reasons"])


@pytest.mark.slow  # the shared `selected` fixture: ~20 s idle, ~50 s loaded
def test_selection_picks_far_more_of_the_drifted_slice_than_random(selected):
    """Night is ~15 % of the training images and ~35 % of the logged ones: drifted."""
    got, mean, sd = _beats_random(selected, lambda e: _lighting_of(e) == "night")
    assert got >= mean + 3 * sd, (got, mean, sd)  # measured 14 vs 6.75 +- 1.86
    assert any("drifted slice: lighting=night" in r for reasons in selected["reasons"]
               for r in reasons)


@pytest.mark.slow  # the shared `selected` fixture: ~20 s idle, ~50 s loaded
def test_the_coco_file_loads_and_carries_reasons_and_pre_annotations(selected):
    from pycocotools.coco import COCO

    path = selected["out"] / "annotations.json"
    dataset = COCO(str(path))
    assert len(dataset.imgs) == BUDGET and dataset.anns
    for image in dataset.imgs.values():
        assert (selected["out"] / image["file_name"]).is_file()
        assert image["sightline_selection"]["reasons"]
        assert image["lighting"] in ("day", "dusk", "night")
    for ann in dataset.anns.values():  # served boxes overhang; ingestion would refuse them
        x, y, w, h = ann["bbox"]
        image = dataset.imgs[ann["image_id"]]
        assert x >= 0 and y >= 0 and w > 0 and h > 0
        assert x + w <= image["width"] + 0.01 and y + h <= image["height"] + 0.01
    csv_lines = (selected["out"] / "selection.csv").read_text().splitlines()
    assert len(csv_lines) == BUDGET + 1


@pytest.mark.slow  # a Beam pipeline run (~30 s)
def test_the_picked_batch_ingests_as_the_latest_span(selected, tmp_path):
    """As docs/feedback.md says to: the folder dropped beside an earlier span is the span
    CocoExampleGen resolves, every pick becomes a record, none is quarantined."""
    import shutil

    from tests.test_coco_example_gen import _read_split, _run_executor

    data = tmp_path / "data"
    shutil.copytree(selected["out"], data / "span-2")
    earlier = json.loads((selected["out"] / "annotations.json").read_text())
    earlier["images"] = earlier["images"][:3]
    earlier["annotations"] = [a for a in earlier["annotations"] if a["image_id"] <= 3]
    shutil.copytree(selected["out"] / "images", data / "span-1" / "images")
    (data / "span-1" / "annotations.json").write_text(json.dumps(earlier))

    examples = _run_executor(str(data), str(tmp_path / "out"),
                             pattern="span-{SPAN}/annotations.json")
    records = _read_split(examples, "train") + _read_split(examples, "eval")
    assert len(records) == BUDGET  # span 2 (all picks), not span 1 (3 of them)
    digests = {hashlib.sha256(r.features.feature[fs.IMAGE_ENCODED].bytes_list.value[0])
               .hexdigest() for r in records}
    assert digests == set(selected["picked"])
    lighting = [r.features.feature[fs.meta_key("lighting")].bytes_list.value[0].decode()
                for r in records]
    assert set(lighting) <= {"day", "dusk", "night"} and "night" in lighting
    picked = json.loads((selected["out"] / "annotations.json").read_text())
    assert sum(len(r.features.feature[fs.CLASS_LABEL].int64_list.value)
               for r in records) == len(picked["annotations"])


def test_without_an_index_select_says_how_to_build_one(tmp_path):
    result = CliRunner().invoke(main, ["select", "--home", str(tmp_path), "--logs",
                                       str(tmp_path), "--budget", "3", "--out",
                                       str(tmp_path / "o")])
    assert result.exit_code == 1 and "sightline index --model" in result.output


def _request(request_id: str, role: str, digest: str, boxes: list[list[float]],
             classes: list[int]) -> log_reader.LoggedRequest:
    found = log_reader.Detections(np.array(boxes, float).reshape(-1, 4),
                                  np.full(len(classes), 0.9), np.array(classes, int))
    image = log_reader.LoggedImage(0, digest, 3, b"img", {}, found)
    return log_reader.LoggedRequest("det", 1 if role == log_reader.PRIMARY else 2,
                                    "serving_default", 0, "", request_id, role, "stable",
                                    1.0, [image], {})


def test_versions_disagreeing_on_an_image_rank_it_above_one_they_agree_on():
    """Shadow logs pair each image with a second version's answer: where it moved a box
    and dropped another, the image outranks the one both versions answered alike."""
    from pipelines.feedback import select
    from pipelines.feedback.models import ModelDir
    from pipelines.settings import FeedbackSettings

    box, other = [0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9]
    moved = [0.6, 0.6, 0.95, 0.95]
    requests = [_request("a", log_reader.PRIMARY, "agree", [box, other], [1, 2]),
                _request("a", log_reader.SHADOW, "agree", [box, other], [1, 2]),
                _request("b", log_reader.PRIMARY, "differ", [box, other], [1, 2]),
                _request("b", log_reader.SHADOW, "differ", [moved], [2]),
                _request("c", log_reader.PRIMARY, "alone", [box], [1])]
    model = ModelDir("m", "1", ("a", "b"), {})
    settings = FeedbackSettings(novelty_weight=0.0, class_quota_share=0.0,
                                slice_quota_share=0.0)
    pool, skipped = select.candidates(requests, model, settings)
    by_digest = {c.image.digest: c for c in pool}
    assert set(by_digest) == {"agree", "differ", "alone"}  # shadows are partners only
    assert by_digest["agree"].disagreement == 0.0 and by_digest["alone"].disagreement is None
    assert by_digest["differ"].disagreement == 1.0  # 3 detections, none matched
    for c in pool:
        c.vector = np.array([1.0, 0.0])
    (first, *_) = select.select(pool, 3, settings)
    assert first.image.digest == "differ"
    assert any("versions disagree on 100%" in r for r in first.reasons)


def test_slices_over_represented_in_the_logs_get_quota_and_others_none():
    from pipelines.feedback.select import drifted_slices
    from pipelines.settings import FeedbackSettings

    trained = [{"lighting": "night"}] * 15 + [{"lighting": "day"}] * 85
    logged = ([{"lighting": "night"}] * 40 + [{"lighting": "day"}] * 50
              + [{"lighting": "day", "camera": "new"}] * 10)
    quotas = drifted_slices(logged, trained, FeedbackSettings(), 10)
    # night: 40 % vs 15 % (excess .25); camera=new: 10 % vs 0 % (excess .10); day: fewer.
    assert quotas == {("lighting", "night"): (7, 0.4, 0.15), ("camera", "new"): (3, 0.1, 0.0)}
    assert drifted_slices(logged, [], FeedbackSettings(), 10) == {}


def test_novelty_is_high_where_traffic_is_new_or_over_represented():
    """Training: 90 images in one cluster, 10 in a second; traffic: half in each, plus
    images far from both. The density share ranks new > over-represented > as-trained."""
    from pipelines.feedback import index as crop_index
    from pipelines.feedback.select import log_density_share

    rng = np.random.default_rng(0)

    def cluster(centre: float, n: int) -> np.ndarray:
        return (centre + 0.01 * rng.standard_normal((n, 2))).astype(np.float32)

    index = crop_index.CropIndex(2, 2, {})
    index.add(crop_index.TRAIN_IMAGES, np.concatenate([cluster(0, 90), cluster(1, 10)]),
              [{"image": str(i), "meta": {}} for i in range(100)])
    logged = np.concatenate([cluster(0, 45), cluster(1, 45), cluster(5, 10)])
    share = log_density_share(logged, index, 10)
    common, rare_in_training, new = share[:45].mean(), share[45:90].mean(), share[90:].mean()
    assert new >= 0.9 and new > rare_in_training > 0.75 > 0.4 > common, share
