"""CocoExampleGen component: a FileBasedExampleGen whose input is a COCO dataset."""

from __future__ import annotations

from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2

from components.coco_example_gen import executor
from data import feature_spec as fs


class CocoExampleGen(FileBasedExampleGen):
    """Ingests ``<input_base>/<annotations_pattern>`` (COCO) into hash-split tf.Examples.

    Splits are deterministic: the hash of each image's id decides its split, so an image
    never moves between train and eval when the dataset grows. ``{SPAN}`` in the pattern
    (e.g. ``span-{SPAN}/annotations.json``) makes scheduled runs pick the latest span.
    """

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(
        self,
        input_base: str,
        annotations_pattern: str = "annotations.json",
        split_buckets: dict[str, int] | None = None,
    ):
        """
        Args:
          input_base: folder of the dataset (local path or a filesystem URI like gs://).
          annotations_pattern: the annotations file relative to input_base; image
            ``file_name`` entries are relative to the folder of this file.
          split_buckets: output split name -> hash buckets; default train 4 : eval 1.
        """
        if not input_base:
            raise ValueError("CocoExampleGen needs input_base: the folder of the COCO dataset")
        if not annotations_pattern.endswith(".json"):
            raise ValueError(
                f"annotations_pattern {annotations_pattern!r} must name the COCO annotations "
                "JSON file, e.g. 'annotations.json' or 'span-{SPAN}/annotations.json'"
            )
        split_buckets = split_buckets or {"train": 4, "eval": 1}
        if set(split_buckets) - {"train", "eval"} or not all(n > 0 for n in split_buckets.values()):
            raise ValueError(
                f"split_buckets {split_buckets} must map 'train'/'eval' to positive bucket counts"
            )
        super().__init__(
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
        )
