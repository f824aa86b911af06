"""Serving: ``sightline serve`` (TF Serving's REST and gRPC APIs), the TFLite runner."""
