"""``sightline monitor``: serving traffic against the served model's training data,
evaluation and earlier traffic (docs/monitoring.md)."""
