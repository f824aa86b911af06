"""AnomalyGate's data-volume gate: too few examples or too much quarantined stops the run,
naming the counts, the top quarantine reasons, the report and CocoExampleGen's hint."""

from __future__ import annotations

import json

from tfx.types import standard_artifacts

from components import release
from components.anomaly_gate import executor
from components.coco_example_gen import executor as coco_executor


def _examples(counts: dict[str, int], quarantined: int, reasons: dict[str, int],
              hint: str = "") -> standard_artifacts.Examples:
    examples = standard_artifacts.Examples()
    examples.uri = "/data/examples/7"
    examples.split_names = json.dumps(sorted(counts))
    for split, n in counts.items():
        examples.set_int_custom_property(release.NUM_EXAMPLES_PROPERTY.format(split=split), n)
        examples.set_string_custom_property(
            release.CONTENT_HASH_PROPERTY.format(split=split), "h")
    examples.set_int_custom_property(coco_executor.QUARANTINED_PROPERTY, quarantined)
    examples.set_int_custom_property(coco_executor.QUARANTINED_IMAGES_PROPERTY, quarantined)
    examples.set_int_custom_property(coco_executor.LISTED_IMAGES_PROPERTY,
                                     quarantined + sum(counts.values()))
    examples.set_string_custom_property(coco_executor.QUARANTINE_REASONS_PROPERTY,
                                        json.dumps(reasons))
    if hint:
        examples.set_string_custom_property(coco_executor.INGESTION_HINT_PROPERTY, hint)
    return examples


def test_enough_clean_data_passes():
    examples = _examples({"train": 40, "eval": 9}, 2, {"image_size_mismatch": 2})
    assert executor.describe_data_volume(examples, ["train", "eval"], 8, 0.2) == ""


def test_a_wrong_images_root_stops_the_run_naming_why():
    hint = "Most image files are missing under /data/annotations: pass --images DIR"
    examples = _examples({"train": 0, "eval": 0}, 48,
                         {"image_file_missing": 47, "image_size_mismatch": 1}, hint)
    message = executor.describe_data_volume(examples, ["train", "eval"], 8, 0.2)
    assert message.startswith("Too little usable data to train on:")
    assert "split 'train' has 0 examples; at least 8 are needed" in message
    assert "48 of 48 listed images (100%) were quarantined; at most 20% may be" in message
    assert "Top quarantine reasons: image_file_missing (47), image_size_mismatch (1)" in message
    assert "/data/examples/7/quarantine.jsonl" in message and hint in message


def test_a_small_eval_split_alone_stops_the_run():
    examples = _examples({"train": 40, "eval": 3}, 0, {})
    message = executor.describe_data_volume(examples, ["train", "eval"], 8, 0.2)
    assert "split 'eval' has 3 examples" in message and "train" not in message.split("\n")[1]
