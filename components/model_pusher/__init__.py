"""ModelPusher: TFX's Pusher that also ships the release metadata serving needs."""

from components.model_pusher.component import ModelPusher

__all__ = ["ModelPusher"]
