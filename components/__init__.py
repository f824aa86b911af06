"""Custom TFX components (spec + executor each), the exact COCO metric, release facts."""
