"""EdgePusher: the edge bundle (TFLite model, labels, thresholds, input spec, metadata)."""

from components.edge_pusher.component import EdgeBundle, EdgePusher

__all__ = ["EdgeBundle", "EdgePusher"]
