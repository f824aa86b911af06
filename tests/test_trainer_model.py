"""Detector structure: output shapes per size, quantizable layer types."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from trainer.model import (
    HEATMAP,
    HEATMAP_BIAS_INIT,
    OFFSET,
    OUTPUT_STRIDE,
    SIZE,
    SIZES,
    build_model,
)

# What tfmot's default 8-bit scheme and the TFLite converter handle without custom code.
ALLOWED_LAYERS = {"InputLayer", "Rescaling", "Conv2D", "BatchNormalization", "ReLU", "Add",
                  "UpSampling2D", "Activation"}


@pytest.mark.parametrize("model_size", sorted(SIZES))
def test_output_shapes_and_layers(model_size):
    model = build_model(model_size, 64, num_classes=5)
    outputs = model(tf.zeros((2, 64, 64, 3)))
    grid = 64 // OUTPUT_STRIDE
    assert {k: v.shape for k, v in outputs.items()} == {
        HEATMAP: (2, grid, grid, 5), SIZE: (2, grid, grid, 2), OFFSET: (2, grid, grid, 2)}
    assert float(tf.reduce_min(outputs[HEATMAP])) >= 0.0  # sigmoid probabilities
    assert {type(layer).__name__ for layer in model.layers} <= ALLOWED_LAYERS


@pytest.mark.parametrize("model_size, params", [("small", 394_906), ("medium", 3_062_098)])
def test_parameter_counts_are_the_documented_ones(model_size, params):
    # docs/training.md states these (6 classes); a change to the architecture must update
    # the docs and the measurements made with it.
    assert build_model(model_size, 128, 6).count_params() == params


def test_heatmap_starts_at_the_centernet_prior():
    model = build_model("small", 64, 3)
    bias = model.get_layer(f"{HEATMAP}_logits").bias.numpy()
    np.testing.assert_allclose(bias, HEATMAP_BIAS_INIT)
    # Random kernels move it around sigmoid(-2.19) ~= 0.1, but it starts low, not at 0.5.
    assert 0.02 < float(tf.reduce_mean(model(tf.zeros((1, 64, 64, 3)))[HEATMAP])) < 0.3


def test_unknown_size_is_rejected():
    with pytest.raises(ValueError, match="model_size='large'"):
        build_model("large", 64, 3)
