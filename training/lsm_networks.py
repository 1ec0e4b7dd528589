"""Susceptibility networks (Keras 3): the window 3D-CNNs and their fast form, a dense network.

**Window 3D-CNN** (the paper's). Input ``windows`` ``[channels, 12, 12, scales]``: the factor
channels are the depth of the 3D volume and the scales (12, 17 and 22 windows resampled to 12 x 12
by :mod:`slidemap.compute.maps.windows`) are its channels, so every 3 x 3 x 3 kernel sees all scales at
once. VGG-like: a block of two and a block of three 3 x 3 x 3 convolutions (ReLU), each block
followed by batch normalisation and 2 x 2 x 2 max pooling (``same`` padding so a stack of only a
few channels still pools), then a dense layer, dropout and a sigmoid output. Single-scale models
(small = 12, medium = 17, large = 22) are the same network with one channel. Beside the
convolutional features the dense head gets ``centre``: the sample cell's own encoded factor values
(every channel, categorical one-hots included), which the pooled convolutions would otherwise blur.

**Centre-linear path** (``centre_linear``; the ``demo``/``default`` presets, not ``paper``). The output
logit is the sum of the convolutional head's logit and a linear function of the centre values (a
wide-and-deep network). The trainer starts the linear part at a logistic regression fitted on the same
training fold and the head's last layer at zero, so the network starts as that logistic regression and
the convolutions learn what the neighbourhood adds; early stopping on validation keeps the start when
nothing is added. On small sample sets (real point inventories) a 3D-CNN trained from scratch cannot
even find the per-cell trends a logistic regression finds; this is what lets it keep them.

**Fast form** (a dense, fully convolutional network). Per-cell window inference recomputes the
convolutions of every overlapping window. The fast form is fully convolutional with ``valid``
padding and no stride, so its receptive field is exactly 23 x 23 cells (a 22-cell window plus the
centre row/column): 3 x 3 convolutions at dilations 1, 1, 2, 4, 3; the mean of every channel over 5,
11 and 23 cells around the cell; the cell's own values; mixed by 1 x 1 convolutions. On a block padded
by 11 cells it returns the whole map in one pass. It is trained to reproduce a window model on every
valid cell of the region (distillation, :mod:`slidemap.training.lsm_distil`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

DENSE_PATCH = 23
DENSE_HALO = DENSE_PATCH // 2
# Keras' default 0.99 leaves the moving statistics near their initial values after a few hundred
# steps, and inference (which uses them) is then garbage; 0.9 converges in ~30 steps.
BN_MOMENTUM = 0.9
CENTRE_LINEAR = "centre_linear"


def _keras() -> Any:
    from slidemap.compute.models.runtime import configure_tensorflow

    configure_tensorflow()
    import keras

    return keras


def build_window_cnn(
    n_channels: int,
    n_scales: int,
    n_centre: int,
    widths: tuple[int, int] = (32, 64),
    dense: int = 64,
    dropout: float = 0.3,
    name: str = "multiscale",
    seed: int = 0,
    centre_linear: bool = False,
) -> Any:
    keras = _keras()
    from keras import layers

    init = keras.initializers.HeUniform(seed=seed)
    windows = keras.Input((n_channels, 12, 12, n_scales), name="windows")
    centre = keras.Input((n_centre,), name="centre")
    x = windows
    for n_convs, width in ((2, widths[0]), (3, widths[1])):
        for _ in range(n_convs):
            x = layers.Conv3D(width, 3, padding="same", activation="relu", kernel_initializer=init)(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
        x = layers.MaxPooling3D(pool_size=2, padding="same")(x)
    x = layers.Flatten()(x)
    x = layers.Concatenate()([x, centre])
    x = layers.Dense(dense, activation="relu", kernel_initializer=init)(x)
    x = layers.Dropout(dropout, seed=seed)(x)
    if not centre_linear:
        out = layers.Dense(1, activation="sigmoid", name="probability")(x)
        return keras.Model([windows, centre], out, name=name)
    deep = layers.Dense(1, kernel_initializer="zeros", name="deep_logit")(x)
    linear = layers.Dense(1, name=CENTRE_LINEAR)(centre)
    out = layers.Activation("sigmoid", name="probability")(layers.Add()([deep, linear]))
    return keras.Model([windows, centre], out, name=name)


def build_dense_fcn(
    n_channels: int, width: int = 32, dense: int = 64, name: str = "fast", seed: int = 0, centre_linear: bool = False
) -> Any:
    """The fast form. With ``centre_linear`` it has the window model's linear path too (a 1 x 1
    convolution of the cell's own values added to the logit), which the distillation copies from the
    window model, so the student only has to learn what the neighbourhood adds."""
    keras = _keras()
    from keras import layers

    init = keras.initializers.HeUniform(seed=seed)
    inp = keras.Input((None, None, n_channels), name="channels")
    x = inp
    for dilation in (1, 1, 2, 4, 3):  # receptive field 3, 5, 9, 17, 23
        x = layers.Conv2D(width, 3, dilation_rate=dilation, padding="valid", activation="relu", kernel_initializer=init)(x)
    branches = [x, layers.Cropping2D(DENSE_HALO)(inp)]
    for size in (5, 11, 23):
        # a box mean is separable: a row mean then a column mean costs 2 x size adds per cell and
        # channel instead of size^2 (the 23-cell mean was half the fast form's work)
        rows = layers.AveragePooling2D(pool_size=(1, size), strides=1, padding="valid")(inp)
        pooled = layers.AveragePooling2D(pool_size=(size, 1), strides=1, padding="valid")(rows)
        crop = DENSE_HALO - size // 2
        branches.append(layers.Cropping2D(crop)(pooled) if crop else pooled)
    x = layers.Concatenate()(branches)
    x = layers.Conv2D(dense, 1, activation="relu", kernel_initializer=init)(x)
    x = layers.Conv2D(dense, 1, activation="relu", kernel_initializer=init)(x)
    if not centre_linear:
        out = layers.Conv2D(1, 1, activation="sigmoid", name="probability")(x)
        return keras.Model(inp, out, name=name)
    deep = layers.Conv2D(1, 1, kernel_initializer="zeros", name="deep_logit")(x)
    linear = layers.Conv2D(1, 1, name=CENTRE_LINEAR)(branches[1])
    out = layers.Activation("sigmoid", name="probability")(layers.Add()([deep, linear]))
    return keras.Model(inp, out, name=name)


def centre_linear_weights(model: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """``(kernel [n_centre], bias)`` of a model's centre-linear path (the mean over the members of
    a seed ensemble); None when it has none."""
    found = [layer.get_weights() for layer in _leaf_layers(model) if layer.name == CENTRE_LINEAR]
    if not found:
        return None
    return (np.mean([k.reshape(-1) for k, _ in found], axis=0), np.mean([b.reshape(-1) for _, b in found], axis=0))


def set_centre_linear(model: Any, kernel: np.ndarray, bias: float | np.ndarray) -> None:
    layer = model.get_layer(CENTRE_LINEAR)
    shape = layer.kernel.shape
    layer.set_weights([np.asarray(kernel, np.float32).reshape(shape), np.asarray(bias, np.float32).reshape(1)])


def average_models(models: list[Any], name: str) -> Any:
    """One Keras model whose output is the mean of ``models``' outputs (a seed ensemble), so an
    ensemble is one weights file, one version and one call."""
    if len(models) == 1:
        return models[0]
    keras = _keras()
    inputs = [keras.Input(t.shape[1:], name=t.name.split(":")[0].split("/")[-1]) for t in models[0].inputs]
    outs = [m(inputs) for m in models]
    return keras.Model(inputs, keras.layers.Average(name="probability")(outs), name=name)


def flops_window_cnn(model: Any) -> float:
    """Multiply-adds x 2 of one forward pass of a window model (convs and dense layers)."""
    total = 0.0
    for layer in _leaf_layers(model):
        cls = type(layer).__name__
        if cls in ("Conv3D", "Conv2D"):
            spatial = float(np.prod([d for d in layer.output.shape[1:-1] if d is not None]))
            total += 2.0 * spatial * float(np.prod(layer.kernel.shape))
        elif cls == "Dense":
            total += 2.0 * float(np.prod(layer.kernel.shape))
    return total


def flops_dense_per_cell(model: Any) -> float:
    """Multiply-adds x 2 per output cell of the fast form (convolutions as if unpadded)."""
    total = 0.0
    for layer in _leaf_layers(model):
        if type(layer).__name__ == "Conv2D":
            total += 2.0 * float(np.prod(layer.kernel.shape))
        elif type(layer).__name__ == "AveragePooling2D":
            total += float(np.prod(layer.pool_size)) * float(layer.input.shape[-1])
    return total


def _leaf_layers(model: Any) -> list[Any]:
    out = []
    for layer in model.layers:
        out.extend(_leaf_layers(layer) if hasattr(layer, "layers") and layer.layers else [layer])
    return out
