"""Attention U-Net (Oktay et al. 2018) for landslide segmentation, in Keras 3.

Four encoder levels (two 3x3 conv + batch norm + ReLU, then 2x2 max pooling), a bottleneck,
and four decoder levels (2x2 transposed conv, concatenation with the skip, two 3x3 convs).
Every skip connection passes an additive attention gate driven by the coarser decoder signal
before it is concatenated. With ``attention=False`` the same network is a plain U-Net
(the baseline in the reports). With ``side_outputs=True`` each decoder level also gives a
one-channel logit map, upsampled to full size, and the output is a 1x1 convolution over the four
(Oktay et al.'s deep-supervision head, ``dsv1..4`` fused by ``final``): the coarse levels, where the
gates' signals come from, then get a gradient straight from the loss.

Only stock Keras layers are used, so a saved ``.keras`` file loads without custom objects.
The network is fully convolutional: any tile whose sides are multiples of 16 (four 2x2 poolings)
goes through, and the output has the input's height and width.
"""

from __future__ import annotations

import math
from typing import Any

TILE_MULTIPLE = 16  # 2 ** number of poolings
DEPTH = 4


def _conv_block(keras: Any, x: Any, filters: int, batch_norm: bool, name: str) -> Any:
    for i in (1, 2):
        x = keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=not batch_norm, kernel_initializer="he_normal",
            name=f"{name}_conv{i}",
        )(x)
        if batch_norm:
            # momentum 0.9, not 0.99: short runs (a few dozen steps) must still leave usable moving statistics
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
        x = keras.layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def attention_gate(keras: Any, skip: Any, gating: Any, inter_channels: int, name: str) -> Any:
    """Additive attention gate: ``skip * sigmoid(psi(relu(W_x skip + W_g gating)))``.

    ``gating`` is the decoder signal at half the skip's resolution (Oktay et al., Fig. 2): the
    skip is brought down with a strided 2x2 conv, the attention map is computed at the coarse
    scale and upsampled back. The coefficient map is the layer named ``<name>_coeff`` (values in
    [0, 1], one channel); the multiplication broadcasts it over the skip's channels.
    """
    theta_x = keras.layers.Conv2D(inter_channels, 2, strides=2, padding="same", name=f"{name}_theta")(skip)
    phi_g = keras.layers.Conv2D(inter_channels, 1, padding="same", name=f"{name}_phi")(gating)
    f = keras.layers.Activation("relu", name=f"{name}_relu")(keras.layers.Add(name=f"{name}_add")([theta_x, phi_g]))
    psi = keras.layers.Conv2D(1, 1, padding="same", name=f"{name}_psi")(f)
    coeff = keras.layers.Activation("sigmoid", name=f"{name}_coeff")(psi)
    coeff_up = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_up")(coeff)
    return keras.layers.Multiply(name=f"{name}_gated")([skip, coeff_up])


def build_unet(
    bands: int,
    base_width: int = 16,
    attention: bool = True,
    batch_norm: bool = True,
    name: str | None = None,
    prior: float = 0.01,
    side_outputs: bool = False,
) -> Any:
    """Build an (attention) U-Net taking ``[N, H, W, bands]`` and returning ``[N, H, W, 1]`` probabilities.

    Widths double at each level: base, 2x, 4x, 8x, and 16x in the bottleneck (the paper's 64
    gives 64..1024). H and W must be multiples of :data:`TILE_MULTIPLE`.
    """
    import keras

    if bands < 1:
        raise ValueError("bands must be >= 1")
    if base_width < 1:
        raise ValueError("base_width must be >= 1")
    inputs = keras.Input(shape=(None, None, bands), name="image")
    x = inputs
    skips = []
    for level in range(DEPTH):
        x = _conv_block(keras, x, base_width * 2**level, batch_norm, f"enc{level + 1}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{level + 1}")(x)
    x = _conv_block(keras, x, base_width * 2**DEPTH, batch_norm, "bottleneck")
    sides = []
    for level in reversed(range(DEPTH)):
        width = base_width * 2**level
        skip = skips[level]
        if attention:
            skip = attention_gate(keras, skip, x, max(1, width // 2), f"att{level + 1}")
        x = keras.layers.Conv2DTranspose(width, 2, strides=2, padding="same", name=f"up{level + 1}")(x)
        x = keras.layers.Concatenate(name=f"concat{level + 1}")([x, skip])
        x = _conv_block(keras, x, width, batch_norm, f"dec{level + 1}")
        if side_outputs:
            side = keras.layers.Conv2D(1, 1, dtype="float32", name=f"side{level + 1}")(x)
            if level:
                side = keras.layers.UpSampling2D(2**level, interpolation="nearest", name=f"side{level + 1}_up")(side)
            sides.append(side)
    if side_outputs:
        x = keras.layers.Concatenate(name="sides", dtype="float32")(sides)
    # float32 output even under mixed precision: losses and thresholds need the full range.
    bias = keras.initializers.Constant(math.log(prior / (1.0 - prior)))
    outputs = keras.layers.Conv2D(
        1, 1, activation="sigmoid", bias_initializer=bias, dtype="float32", name="probability"
    )(x)
    default = "attention_unet" if attention else "unet"
    return keras.Model(inputs, outputs, name=name or default)


def attention_maps(model: Any) -> Any:
    """A model returning every attention gate's coefficient map (for inspection and tests)."""
    import keras

    outputs = [layer.output for layer in model.layers if layer.name.endswith("_coeff")]
    if not outputs:
        raise ValueError(f"{model.name} has no attention gates")
    return keras.Model(model.inputs[0], outputs)


def flops_per_tile(model: Any, tile: int) -> float:
    """Forward-pass floating-point operations for one ``tile x tile`` input (2 per multiply-add).

    Counted from the layers' shapes (convolutions and transposed convolutions dominate; the
    element-wise layers are added at one op per output value).
    """
    import keras

    total = 0.0
    bands = model.inputs[0].shape[-1]
    probe = keras.Model(model.inputs, [layer.output for layer in model.layers[1:]])
    import numpy as np

    outs = probe([np.zeros((1, tile, tile, bands), dtype="float32")], training=False)
    for layer, out in zip(model.layers[1:], outs, strict=True):
        out_elems = float(np.prod(out.shape[1:]))
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            if isinstance(layer, keras.layers.Conv2DTranspose):
                # each output value gathers cin * kh*kw / (sh*sw) multiply-adds
                sh, sw = layer.strides
                total += 2.0 * out_elems * cin * kh * kw / (sh * sw)
            else:
                total += 2.0 * out_elems * cin * kh * kw
        else:
            total += out_elems
    return total
