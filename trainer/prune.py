"""Magnitude pruning of a trained detector with tfmot, fine-tuned with the training loss.

Which layers: every ``Conv2D`` with at least ``MIN_PRUNED_WEIGHTS`` weights except the
stem and the three 1x1 output convs (``KEEP_DENSE``). In the ``small`` detector that is
17 of 22 convs holding 99.6 % of the conv weights; the ones left dense hold 1,424:

* the stem (3x3x3x16, 432 weights) sees the raw pixels: every output channel depends on
  27 weights, so zeroing half of them removes whole colour/edge filters, and it is 0.1 %
  of the bytes (the usual advice: leave the first layer dense);
* the output convs (``*_logits``, 64-96 weights each) produce the heatmap scores and box
  sizes directly, with no later layer to compensate for a zeroed weight;
* ``stage0_block0_project`` (768 weights) falls under ``MIN_PRUNED_WEIGHTS``: pruning
  layers this small saves no size to speak of and costs accuracy per weight removed.

Why 3x3 convs are pruned too, though XNNPACK's sparse kernels only ever run 1x1 convs:
pruning here buys *size* (zeros compress; the converter can store them sparse), not
speed. XNNPACK's sparse (NCHW) inference needs (a) weights stored sparse in the
flatbuffer (``DENSIFY`` ops: ``trainer.tflite.convert(..., sparse=True)``), (b) a
subgraph starting at a 3x3 stride-2 conv with 3 input channels and padding 1 on each
side, made only of 1x1 stride-1 unpadded convs, 3x3/5x5 *depthwise* convs, ADD/MUL,
bilinear resizes and elementwise ops, and ending in a spatial MEAN, global pooling or
DEPTH_TO_SPACE, with >= 2/3 of the 1x1 weights zero, and (c) an ARM/WASM CPU or x86
*without* AVX (it is disabled on AVX CPUs: its x86 kernels are SSE only). This detector
fails (b) (dense 3x3 stride-1 convs in every block, nearest-neighbour upsampling, no
pooling/MEAN exit; the stem's TF "same" padding on an even input is 0 before / 1 after)
and the x86 CPUs measured here fail (c). ``benchmarks/prune_bench.py`` measures what
does change; docs/edge.md.
"""

from __future__ import annotations

import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from absl import logging

from trainer.config import TrainConfig
from trainer.model import HEATMAP, OFFSET, SIZE
from trainer.train import epoch_steps, fine_tune

_sparsity = tfmot.sparsity.keras
MIN_PRUNED_WEIGHTS = 1024
KEEP_DENSE = ("stem_conv", *(f"{name}_logits" for name in (HEATMAP, SIZE, OFFSET)))
# The sparsity ramps from 0 to the target over this share of the fine-tune's steps, in
# MASK_UPDATES steps; the remaining steps train at the target sparsity to recover.
RAMP_FRACTION = 0.6
MASK_UPDATES = 10
DEFAULT_LEARNING_RATE = 1e-3  # 1/8 of training's peak; cosine to 0, no warmup


def pruned_layer_names(detector: keras.Model) -> list[str]:
    """The convs ``prune_detector`` prunes, in model order (see the module docstring)."""
    return [layer.name for layer in detector.layers
            if isinstance(layer, keras.layers.Conv2D) and layer.name not in KEEP_DENSE
            and layer.kernel.shape.num_elements() >= MIN_PRUNED_WEIGHTS]


def _conv_kernels(detector: keras.Model, layer_names: list[str] | None) -> dict[str, np.ndarray]:
    """{conv name: its kernel} for those convs, every conv by default."""
    return {layer.name: layer.kernel.numpy() for layer in detector.layers
            if isinstance(layer, keras.layers.Conv2D)
            and (layer_names is None or layer.name in layer_names)}


def kernel_sparsity(detector: keras.Model, layer_names: list[str] | None = None
                    ) -> dict[str, float]:
    """{conv name: share of its kernel that is exactly 0}; every conv by default."""
    return {name: float(np.mean(kernel == 0))
            for name, kernel in _conv_kernels(detector, layer_names).items()}


def overall_sparsity(detector: keras.Model, layer_names: list[str] | None = None) -> float:
    """Zero weights over all weights of those convs' kernels (every conv by default)."""
    kernels = _conv_kernels(detector, layer_names).values()
    return float(sum(np.sum(k == 0) for k in kernels) / sum(k.size for k in kernels))


def schedule(target_sparsity: float, total_steps: int) -> _sparsity.PolynomialDecay:
    """0 -> ``target_sparsity`` (cubic, tfmot's default) over RAMP_FRACTION of the steps.

    The mask is recomputed every ``frequency`` steps; the ramp ends on such a step, so the
    target is reached exactly (tfmot prunes on steps ``k * frequency <= end_step``).
    """
    ramp = max(1, round(total_steps * RAMP_FRACTION))
    frequency = max(1, ramp // MASK_UPDATES)
    return _sparsity.PolynomialDecay(initial_sparsity=0.0, final_sparsity=target_sparsity,
                                     begin_step=0, end_step=frequency * (ramp // frequency),
                                     frequency=frequency)


def prune_detector(detector: keras.Model, config: TrainConfig, train_files: list[str],
                   target_sparsity: float, run_dir: str, epochs: int = 1,
                   learning_rate: float = DEFAULT_LEARNING_RATE,
                   steps_per_epoch: int | None = None) -> keras.Model:
    """Prunes ``pruned_layer_names`` to ``target_sparsity`` while fine-tuning.

    Args:
      detector: the trained float model (left unchanged).
      config: its TrainConfig (input size, batch, augmentation seed, weight decay).
      target_sparsity: share of each pruned conv's weights set to 0, in (0, 1).
      run_dir: TensorBoard logs of the fine-tune.
      epochs / learning_rate: the fine-tune budget (``trainer.train.fine_tune``).
      steps_per_epoch: default: one pass over the training examples.
    Returns:
      A plain detector (the pruning wrappers stripped): the same layers, names and
      variables as ``detector``, its pruned kernels ``target_sparsity`` zero.
    Raises:
      ValueError: a target outside (0, 1).
    """
    if not 0 < target_sparsity < 1:
        raise ValueError(f"target_sparsity={target_sparsity}; use a share in (0, 1), e.g. 0.5")
    keras.utils.set_random_seed(config.seed)
    steps = steps_per_epoch or epoch_steps(config, train_files)
    names = set(pruned_layer_names(detector))
    # A copy, so fitting the wrapped layers leaves the caller's detector as it was.
    copy = keras.models.clone_model(detector)
    copy.set_weights(detector.get_weights())
    pruning = schedule(target_sparsity, steps * epochs)

    def wrap(layer: keras.layers.Layer) -> keras.layers.Layer:
        if layer.name in names:
            return _sparsity.prune_low_magnitude(layer, pruning_schedule=pruning)
        return layer

    pruned = keras.models.clone_model(copy, clone_function=wrap)
    logging.info("Pruning %d convs to sparsity %g (%s)", len(names), target_sparsity,
                 pruning.get_config()["config"])
    fine_tune(pruned, config, train_files, run_dir, epochs, learning_rate, steps,
              callbacks=[_sparsity.UpdatePruningStep()], name="Pruning fine-tune")
    return _sparsity.strip_pruning(pruned)
