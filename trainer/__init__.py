"""The detector: model, targets, losses, decode, input pipeline, training, export, QAT, TFLite."""
