"""Beam executor of CocoExampleGen.

It reuses TFX's ExampleGen machinery (hash splits, span resolution, TFRecord writing)
and adds what a COCO source needs: per-record validation with a quarantine report,
a content hash per split recorded on the Examples artifact in ML Metadata, and a hint
when most image files are missing (the images root is probably wrong).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from typing import Any

import apache_beam as beam
import tensorflow as tf
from tfx import types
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.types import artifact_utils, standard_component_specs

from components import release
from data import coco
from data import feature_spec as fs

# Files written into the Examples artifact, beside the Split-* folders.
QUARANTINE_FILE = "quarantine.jsonl"
SPLIT_DIGEST_DIR = "split_digests"
SUMMARY_FILE = "ingestion_summary.json"
LABEL_MAP_FILE = "label_map.json"
INPUT_FILE = "ingestion_input.json"  # what was read: annotations, images root, listed images
# Execution parameters CocoExampleGen adds to FileBasedExampleGen's.
IMAGES_ROOT_KEY = "images_root"
ALLOW_ABSOLUTE_PATHS_KEY = "allow_absolute_paths"
# Custom properties on the Examples artifact (MLMD); the per-split ones are
# ``components.release``'s (CONTENT_HASH_PROPERTY, NUM_EXAMPLES_PROPERTY).
QUARANTINED_PROPERTY = "quarantined"  # quarantine rows (images, and annotations of no image)
QUARANTINE_REASONS_PROPERTY = "quarantine_reasons"  # JSON {primary reason: rows}
LABEL_MAP_PROPERTY = "label_map"
LISTED_IMAGES_PROPERTY = "listed_images"  # entries in the file's 'images' list
QUARANTINED_IMAGES_PROPERTY = "quarantined_images"  # of those, how many were quarantined
IMAGES_ROOT_PROPERTY = "images_root"  # where the image files were looked for
INGESTION_HINT_PROPERTY = "ingestion_hint"  # set only when there is one (a sentence)

_REPORT_DIR_KEY = "_sightline_report_dir"  # private exec property, set by Do()


class _ToExample(beam.DoFn):
    """Reads one image record; unusable ones go to the quarantine output."""

    QUARANTINE = "quarantine"

    def __init__(self, images_root: str, label_map: coco.LabelMap, allow_absolute_paths: bool):
        self._images_root = images_root
        self._label_map = label_map
        self._allow_absolute_paths = allow_absolute_paths

    def process(self, record: coco.ImageRecord):
        try:
            yield coco.record_to_example(record, self._images_root, self._label_map,
                                         self._allow_absolute_paths)
        except coco.RecordError as e:
            row = coco.quarantine_row(record, e)
            yield beam.pvalue.TaggedOutput(self.QUARANTINE, row.to_json())


def images_root_of(exec_properties: dict[str, Any], annotations_path: str) -> str:
    """The folder image ``file_name`` entries are relative to, for this execution.

    Unset: the annotations file's folder. ``{SPAN}`` (or ``{SPAN:width}``) takes the span
    the driver resolved for the annotations pattern; a relative root is relative to
    ``input_base``.
    """
    root = exec_properties.get(IMAGES_ROOT_KEY)
    if not root:
        return os.path.dirname(annotations_path) or "."
    if re.search(example_gen_utils.SPAN_FULL_REGEX, root):
        span = exec_properties.get(example_gen_utils.SPAN_PROPERTY_NAME)
        if span is None:
            raise ValueError(f"images_root {root!r} names a span, but no span was resolved: "
                             "the annotations pattern needs '{SPAN}' too")
        root = example_gen_utils.get_pattern_for_span_version(
            root, is_match_span=True, is_match_date=False, is_match_version=False,
            span=int(span), version=None)
    return coco.join_path(exec_properties[standard_component_specs.INPUT_BASE_KEY], root)


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
def _CocoToExample(  # noqa: N802  (Beam PTransform naming)
    pipeline: beam.Pipeline, exec_properties: dict[str, Any], split_pattern: str
) -> beam.pvalue.PCollection:
    """A COCO annotations file (and its images) -> tf.Examples; bad records quarantined."""
    annotations_path = os.path.join(exec_properties[standard_component_specs.INPUT_BASE_KEY],
                                    split_pattern)
    dataset = coco.load_annotations(annotations_path)  # malformed file: fail the component
    label_map = coco.label_map_of(dataset, annotations_path)
    records, planned_quarantine = coco.plan_records(dataset, label_map)
    images_root = images_root_of(exec_properties, annotations_path)
    report_dir = exec_properties[_REPORT_DIR_KEY]
    tf.io.gfile.makedirs(report_dir)
    with tf.io.gfile.GFile(os.path.join(report_dir, LABEL_MAP_FILE), "w") as f:
        f.write(json.dumps(list(label_map.names)))
    with tf.io.gfile.GFile(os.path.join(report_dir, INPUT_FILE), "w") as f:
        f.write(json.dumps({"annotations": annotations_path, "images_root": images_root,
                            "listed_images": len(dataset["images"])}))
    allow_absolute_paths = bool(exec_properties.get(ALLOW_ABSOLUTE_PATHS_KEY))
    converted = (
        pipeline
        | "Records" >> beam.Create(records, reshuffle=True)
        | "ToExample" >> beam.ParDo(
            _ToExample(images_root, label_map, allow_absolute_paths)
        ).with_outputs(_ToExample.QUARANTINE, main="examples")
    )
    planned = pipeline | "PlannedQuarantine" >> beam.Create(
        [q.to_json() for q in planned_quarantine]
    )
    (
        (planned, converted[_ToExample.QUARANTINE])
        | "AllQuarantine" >> beam.Flatten()
        | "WriteQuarantine" >> beam.io.WriteToText(
            os.path.join(report_dir, QUARANTINE_FILE),
            shard_name_template="",
        )
    )
    return converted.examples


def _digest_of(example: tf.train.Example) -> str:
    return example.features.feature[fs.IMAGE_SHA256].bytes_list.value[0].decode()


class Executor(BaseExampleGenExecutor):
    """Generates hash-split tf.Examples from a COCO dataset."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:  # noqa: N802 (TFX API)
        return _CocoToExample

    def GenerateExamplesByBeam(  # noqa: N802 (TFX API)
        self, pipeline: beam.Pipeline, exec_properties: dict[str, Any]
    ) -> dict[str, beam.pvalue.PCollection]:
        """Adds, per output split, the sorted per-image digests the content hash is made of."""
        splits = super().GenerateExamplesByBeam(pipeline, exec_properties)
        digest_dir = os.path.join(exec_properties[_REPORT_DIR_KEY], SPLIT_DIGEST_DIR)
        for name, examples in splits.items():
            _ = (
                examples
                | f"Digest[{name}]" >> beam.Map(_digest_of)
                | f"Collect[{name}]" >> beam.combiners.ToList()
                | f"Sort[{name}]" >> beam.Map(lambda digests: json.dumps(sorted(digests)))
                | f"WriteDigests[{name}]" >> beam.io.WriteToText(
                    os.path.join(digest_dir, f"{name}.json"), shard_name_template=""
                )
            )
        return splits

    def Do(
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        examples = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.EXAMPLES_KEY]
        )
        exec_properties = {**exec_properties, _REPORT_DIR_KEY: examples.uri}
        super().Do(input_dict, output_dict, exec_properties)
        summary = _summarize(examples.uri, artifact_utils.decode_split_names(examples.split_names))
        _record_summary(examples, summary)


def _summarize(uri: str, split_names: list[str]) -> dict[str, Any]:
    """Reads what the Beam pipeline wrote: per-split hashes/counts, quarantine by reason.

    ``quarantine_reasons`` counts rows by their primary reason: a row is one listed image
    (or one annotation of no listed image), however many rules it broke.
    """
    splits = {}
    for name in split_names:
        with tf.io.gfile.GFile(os.path.join(uri, SPLIT_DIGEST_DIR, f"{name}.json")) as f:
            digests = json.loads(f.read() or "[]")
        splits[name] = {"num_examples": len(digests), "content_hash": coco.content_hash(digests)}
    with tf.io.gfile.GFile(os.path.join(uri, QUARANTINE_FILE)) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    reasons = Counter(row["reason"] for row in rows)
    with tf.io.gfile.GFile(os.path.join(uri, LABEL_MAP_FILE)) as f:
        label_map = json.loads(f.read())
    with tf.io.gfile.GFile(os.path.join(uri, INPUT_FILE)) as f:
        read = json.loads(f.read())
    missing = [row["file"] for row in rows if row["reason"] == coco.IMAGE_FILE_MISSING]
    return {
        "label_map": label_map,
        "splits": splits,
        "annotations": read["annotations"],
        "images_root": read["images_root"],
        "listed_images": read["listed_images"],
        "quarantined_images": sum(row["record"] == coco.IMAGE_RECORD for row in rows),
        "quarantined": len(rows),
        "quarantine_reasons": dict(sorted(reasons.items())),
        "quarantine_report": os.path.join(uri, QUARANTINE_FILE),
        "ingestion_hint": coco.missing_images_hint(missing, read["listed_images"],
                                                   read["images_root"]),
    }


def _record_summary(examples: types.Artifact, summary: dict[str, Any]) -> None:
    """Stores the summary beside the splits and as custom properties in MLMD."""
    for name, split in summary["splits"].items():
        examples.set_string_custom_property(
            release.CONTENT_HASH_PROPERTY.format(split=name), split["content_hash"]
        )
        examples.set_int_custom_property(
            release.NUM_EXAMPLES_PROPERTY.format(split=name), split["num_examples"]
        )
    examples.set_int_custom_property(QUARANTINED_PROPERTY, summary["quarantined"])
    examples.set_string_custom_property(
        QUARANTINE_REASONS_PROPERTY, json.dumps(summary["quarantine_reasons"])
    )
    examples.set_string_custom_property(LABEL_MAP_PROPERTY, json.dumps(summary["label_map"]))
    examples.set_int_custom_property(LISTED_IMAGES_PROPERTY, summary["listed_images"])
    examples.set_int_custom_property(QUARANTINED_IMAGES_PROPERTY, summary["quarantined_images"])
    examples.set_string_custom_property(IMAGES_ROOT_PROPERTY, summary["images_root"])
    if summary["ingestion_hint"]:
        examples.set_string_custom_property(INGESTION_HINT_PROPERTY, summary["ingestion_hint"])
    with tf.io.gfile.GFile(os.path.join(examples.uri, SUMMARY_FILE), "w") as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True))
