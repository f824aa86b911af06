"""CenterNet-style anchor-free detector as a plain functional tf_keras model.

Only Conv2D / BatchNormalization / ReLU6 / Add / UpSampling2D / Activation layers, so
``tfmot.quantization.keras.quantize_model`` and the TFLite converter accept it as is.
The backbone uses fused inverted-residual blocks (dense 3x3 expand + 1x1 project)
instead of MobileNet's depthwise convs: on the 2-core x86 CPUs measured, a depthwise 3x3
ran ~10x less efficiently per FLOP than a dense one (docs/training.md), so dense blocks
buy more accuracy per ms.
"""

from __future__ import annotations

import dataclasses

import tf_keras as keras

HEATMAP = "heatmap"  # [B, H/4, W/4, C] per-class centre probability
SIZE = "size"  # [B, H/4, W/4, 2] box (width, height) in output-grid cells
OFFSET = "offset"  # [B, H/4, W/4, 2] sub-cell centre offset (x, y)
OUTPUT_STRIDE = 4
# sigmoid(-2.19) ~= 0.1: the CenterNet prior so the focal loss starts stable.
HEATMAP_BIAS_INIT = -2.19


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One detector size; ``stages`` are (channels, blocks) at strides 4, 8, 16, 32."""

    stem: int
    stages: tuple[tuple[int, int], ...]
    expand: int
    neck: int
    head: int


SIZES: dict[str, ModelSpec] = {
    "small": ModelSpec(stem=16, stages=((24, 1), (40, 2), (80, 2), (128, 1)), expand=2,
                       neck=48, head=32),
    "medium": ModelSpec(stem=24, stages=((32, 2), (64, 2), (128, 3), (192, 2)), expand=3,
                        neck=64, head=64),
}


def _conv_bn(x: keras.layers.Layer, filters: int, kernel: int, stride: int, name: str,
             activate: bool = True) -> keras.layers.Layer:
    x = keras.layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False,
                            name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu6")(x) if activate else x


def _fused_block(x: keras.layers.Layer, filters: int, stride: int, expand: int,
                 name: str) -> keras.layers.Layer:
    """Fused-MBConv: 3x3 expand (+stride) then linear 1x1 projection, residual if shapes match."""
    in_filters = x.shape[-1]
    y = _conv_bn(x, in_filters * expand, 3, stride, f"{name}_expand")
    y = _conv_bn(y, filters, 1, 1, f"{name}_project", activate=False)
    if stride == 1 and in_filters == filters:
        y = keras.layers.Add(name=f"{name}_add")([x, y])
    return y


def _output(x: keras.layers.Layer, outputs: int, name: str, bias_init: float = 0.0,
            activation: str = "linear") -> keras.layers.Layer:
    y = keras.layers.Conv2D(outputs, 1, name=f"{name}_logits",
                            bias_initializer=keras.initializers.Constant(bias_init))(x)
    # float32 outputs keep the losses and decode exact under a mixed-precision policy.
    return keras.layers.Activation(activation, dtype="float32", name=name)(y)


def build_model(model_size: str, input_size: int, num_classes: int) -> keras.Model:
    """Builds the detector: [B, S, S, 3] in [0, 1] -> {heatmap, size, offset} at stride 4.

    Args:
      model_size: a key of ``SIZES``.
      input_size: square input side, a multiple of 32.
      num_classes: heatmap channels (class i+1 is channel i).
    Returns:
      An uncompiled functional model with outputs named ``HEATMAP``, ``SIZE``, ``OFFSET``.
    """
    if model_size not in SIZES:
        raise ValueError(f"model_size={model_size!r}; use one of {sorted(SIZES)}")
    spec = SIZES[model_size]
    images = keras.Input((input_size, input_size, 3), name="images")
    # Map [0, 1] to [-1, 1] with a Rescaling layer (quantizable, unlike a Lambda).
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="normalize")(images)
    x = _conv_bn(x, spec.stem, 3, 2, "stem")

    # --- backbone: one stride-2 fused block per stage, then stride-1 blocks ---------
    features = []
    for s, (filters, blocks) in enumerate(spec.stages):
        for b in range(blocks):
            x = _fused_block(x, filters, 2 if b == 0 else 1, spec.expand, f"stage{s}_block{b}")
        features.append(x)

    # --- neck: FPN-lite top-down path back to stride 4 ------------------------------
    x = _conv_bn(features[-1], spec.neck, 1, 1, f"lateral{len(features) - 1}")
    for level in range(len(features) - 2, -1, -1):
        x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"up{level}")(x)
        lateral = _conv_bn(features[level], spec.neck, 1, 1, f"lateral{level}")
        x = keras.layers.Add(name=f"merge{level}")([x, lateral])

    # --- heads: a hidden 3x3 conv per branch, size and offset sharing one ---------------
    # At stride 4 these convs dominate a train step (measured), hence the shared branch.
    heat = _conv_bn(x, spec.head, 3, 1, f"{HEATMAP}_hidden")
    box = _conv_bn(x, spec.head, 3, 1, "box_hidden")
    outputs = {
        HEATMAP: _output(heat, num_classes, HEATMAP, HEATMAP_BIAS_INIT, "sigmoid"),
        SIZE: _output(box, 2, SIZE),
        OFFSET: _output(box, 2, OFFSET),
    }
    return keras.Model(images, outputs, name=f"centernet_{model_size}")
