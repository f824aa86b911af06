"""CocoExampleGen: COCO detection datasets into tf.Examples, with quarantine and hashes."""

from components.coco_example_gen.component import CocoExampleGen

__all__ = ["CocoExampleGen"]
