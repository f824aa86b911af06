"""CocoExampleGen component: a FileBasedExampleGen whose input is a COCO dataset."""

from __future__ import annotations

import re

from tfx import types
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.proto import example_gen_pb2, range_config_pb2
from tfx.types import component_spec, standard_artifacts, standard_component_specs

from components.coco_example_gen import executor
from data import feature_spec as fs


class CocoExampleGenSpec(standard_component_specs.FileBasedExampleGenSpec):
    """FileBasedExampleGen's parameters plus where the images are and how they may be named."""

    PARAMETERS = {
        **standard_component_specs.FileBasedExampleGenSpec.PARAMETERS,
        executor.IMAGES_ROOT_KEY: component_spec.ExecutionParameter(type=str, optional=True),
        # 0/1: an int, because every orchestrator's parameter types include ints.
        executor.ALLOW_ABSOLUTE_PATHS_KEY: component_spec.ExecutionParameter(
            type=int, optional=True),
    }


class CocoExampleGen(FileBasedExampleGen):
    """Ingests ``<input_base>/<annotations_pattern>`` (COCO) into hash-split tf.Examples.

    Splits are deterministic: the hash of each image's id decides its split, so an image
    never moves between train and eval when the dataset grows. ``{SPAN}`` in the pattern
    (e.g. ``span-{SPAN}/annotations.json``) makes scheduled runs pick the latest span.
    """

    SPEC_CLASS = CocoExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(
        self,
        input_base: str,
        annotations_pattern: str = "annotations.json",
        split_buckets: dict[str, int] | None = None,
        images_root: str | None = None,
        allow_absolute_paths: bool = False,
        span: int | None = None,
    ):
        """
        Args:
          input_base: folder of the dataset (local path or a filesystem URI like gs://).
          annotations_pattern: the annotations file relative to input_base.
          split_buckets: output split name -> hash buckets; default train 4 : eval 1.
          images_root: the folder image ``file_name`` entries are relative to; None: the
            folder of the annotations file. Relative to input_base unless absolute; may
            hold ``{SPAN}``, resolved to the annotations pattern's span (the standard
            layout ``annotations/instances_train.json`` + ``train/`` needs ``"train"``).
          allow_absolute_paths: read absolute ``file_name`` entries as given (a dataset
            spread over mounts); otherwise only files under the images root are read.
          span: ingest this span of a ``{SPAN}`` pattern; None: the latest.
        """
        split_buckets = split_buckets or {"train": 4, "eval": 1}
        _check_arguments(input_base, annotations_pattern, split_buckets, images_root)
        coco_parameters = {executor.ALLOW_ABSOLUTE_PATHS_KEY: int(allow_absolute_paths)}
        if images_root:
            coco_parameters[executor.IMAGES_ROOT_KEY] = images_root
        if span is not None:  # TFX's driver resolves the pattern for exactly this span
            only = range_config_pb2.StaticRange(start_span_number=span, end_span_number=span)
            coco_parameters[standard_component_specs.RANGE_CONFIG_KEY] = (
                range_config_pb2.RangeConfig(static_range=only))
        spec = CocoExampleGenSpec(
            input_base=input_base,
            input_config=example_gen_pb2.Input(
                splits=[example_gen_pb2.Input.Split(name="coco", pattern=annotations_pattern)]
            ),
            output_config=example_gen_pb2.Output(
                split_config=example_gen_pb2.SplitConfig(
                    splits=[
                        example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=buckets)
                        for name, buckets in split_buckets.items()
                    ],
                    partition_feature_name=fs.IMAGE_SOURCE_ID,
                )
            ),
            output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
            output_file_format=example_gen_pb2.FORMAT_TFRECORDS_GZIP,
            examples=types.Channel(type=standard_artifacts.Examples),
            **coco_parameters,
        )
        # FileBasedExampleGen.__init__ would build TFX's own spec, which has no room for the
        # COCO parameters: the spec is built above and handed to the base component directly.
        base_beam_component.BaseBeamComponent.__init__(self, spec=spec)


def _check_arguments(input_base: str, annotations_pattern: str, split_buckets: dict[str, int],
                     images_root: str | None) -> None:
    """Fix-it errors for arguments that would only fail later, inside the executor."""
    if not input_base:
        raise ValueError("CocoExampleGen needs input_base: the folder of the COCO dataset")
    if not annotations_pattern.endswith(".json"):
        raise ValueError(
            f"annotations_pattern {annotations_pattern!r} must name the COCO annotations "
            "JSON file, e.g. 'annotations.json' or 'span-{SPAN}/annotations.json'"
        )
    if images_root is not None and not images_root:
        raise ValueError("images_root='' names no folder: pass None to read images "
                         "relative to the annotations file's folder")
    if images_root and re.search(example_gen_utils.SPAN_FULL_REGEX, images_root) and not (
            re.search(example_gen_utils.SPAN_FULL_REGEX, annotations_pattern)):
        raise ValueError(
            f"images_root {images_root!r} has a span but annotations_pattern "
            f"{annotations_pattern!r} has none to take it from; add '{{SPAN}}' to both, "
            "e.g. 'span-{SPAN}/annotations.json' and 'span-{SPAN}/images'"
        )
    if set(split_buckets) - {"train", "eval"} or not all(n > 0 for n in split_buckets.values()):
        raise ValueError(
            f"split_buckets {split_buckets} must map 'train'/'eval' to positive bucket counts"
        )
