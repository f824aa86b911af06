"""sightline index + similar: the nearest training and logged crops of a query crop."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from tensorflow.core.example import example_pb2

from data import feature_spec as fs
from pipelines.cli import main
from tests.feedback_fixture import shared_untrained, synth_examples, write_examples


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("similar")
    model = shared_untrained()
    examples = synth_examples(root, "default", 8, seed=1)
    train = write_examples(root / "train.tfrecord.gz", examples)
    home = root / "home"
    result = CliRunner().invoke(main, ["index", "--home", str(home), "--model", model,
                                       "--examples", str(train)])
    assert result.exit_code == 0, result.output
    features = example_pb2.Example.FromString(examples[0]).features.feature
    image = root / "query.jpg"
    image.write_bytes(features[fs.IMAGE_ENCODED].bytes_list.value[0])
    box = [features[k].float_list.value[0] for k in (fs.BBOX_YMIN, fs.BBOX_XMIN, fs.BBOX_YMAX,
                                                       fs.BBOX_XMAX)]
    return {"home": home, "image": image, "box": box,
            "label": features[fs.CLASS_TEXT].bytes_list.value[0].decode(),
            "source_id": features[fs.IMAGE_SOURCE_ID].bytes_list.value[0].decode()}


@pytest.mark.slow  # the `indexed` fixture: an export and an index (~15 s idle, 30 s loaded)
def test_a_training_crop_finds_itself_first_and_a_bad_image_is_named(indexed, tmp_path):
    box = ",".join(f"{v:.6f}" for v in indexed["box"])
    result = CliRunner().invoke(main, ["similar", str(indexed["image"]), "--home",
                                       str(indexed["home"]), "--box", box, "-k", "5", "--json"])
    assert result.exit_code == 0, result.output
    (query,) = json.loads(result.stdout)["queries"]
    first = query["train"][0]
    assert first["image"] == indexed["source_id"] and first["class"] == indexed["label"]
    assert first["similarity"] > 0.999 and len(query["train"]) == 5
    assert [h["similarity"] for h in query["train"]] == sorted(
        (h["similarity"] for h in query["train"]), reverse=True)
    assert query["logs"] == []  # no logs were indexed
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    result = CliRunner().invoke(main, ["similar", str(junk), "--home", str(indexed["home"])])
    assert result.exit_code == 1 and str(junk) in result.output


def test_bad_box_and_missing_index_are_one_line_errors(tmp_path):
    image = tmp_path / "query.jpg"
    image.write_bytes(b"unread: both errors come first")
    runner = CliRunner()
    result = runner.invoke(main, ["similar", str(image), "--home", str(tmp_path), "--box",
                                  "0.5,0.5,0.1,0.9"])
    assert result.exit_code == 2 and "ymin,xmin,ymax,xmax" in result.output
    result = runner.invoke(main, ["similar", str(image), "--home", str(tmp_path)])
    assert result.exit_code == 1 and "sightline index --model" in result.output
