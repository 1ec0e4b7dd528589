"""Susceptibility networks (Keras 3): the window 3D-CNNs and the dense fully convolutional model.

**Window 3D-CNN** (the paper's). Input ``[factors, 12, 12, scales]``: the factors are the depth of
the 3D volume and the scales (12, 17 and 22 windows resampled to 12 x 12 by
:mod:`slidemap.compute.windows`) are its channels, so every 3 x 3 x 3 kernel sees all scales at once
(fusion at the input, "channels of the 3D volume"). VGG-like: a block of two and a block of three
3 x 3 x 3 convolutions (ReLU), each block followed by batch normalisation and 2 x 2 x 2 max pooling
(``same`` padding so a stack of only a few factors still pools), then a dense layer of 64, dropout
and a sigmoid output. Single-scale models (small = 12, medium = 17, large = 22) are the same network
with one channel.

**Dense model** (``multiscale_dense``). Per-cell window inference recomputes the convolutions of
every overlapping window. This network is fully convolutional with ``valid`` padding and no stride,
so its receptive field is exactly 23 x 23 cells (the 22-cell window plus the centre row/column):

* local features: 3 x 3 convolutions at dilations 1, 1, 2, 4, 3 (receptive field 3, 5, 9, 17, 23),
* a pooled pyramid: the mean of every factor over 5 x 5, 11 x 11 and 23 x 23 cells around the cell
  (the coarse context the 17 and 22 windows give the window model),
* the centre cell's own factor values,

concatenated and mixed by 1 x 1 convolutions (a dense layer of 64 applied per cell). It is trained
on 23 x 23 patches (output 1 x 1) from the same extractor and samples as the window models; on a
block padded by 11 cells it returns the whole H x W map in one pass, and cell for cell it equals
what the patch gives (tested), so training and dense inference are the same function.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DENSE_PATCH = 23
# Keras' default 0.99 leaves the moving statistics near their initial values after the few dozen
# steps of the quick/demo presets, and inference (which uses them) is then garbage; 0.9 converges
# in ~30 steps and is still smooth for the paper's long runs.
BN_MOMENTUM = 0.9
DENSE_HALO = DENSE_PATCH // 2


def _keras() -> Any:
    from slidemap.compute.inference import configure_tensorflow

    configure_tensorflow()
    import keras

    return keras


def build_window_cnn(
    n_factors: int,
    n_scales: int,
    widths: tuple[int, int] = (32, 64),
    dense: int = 64,
    dropout: float = 0.3,
    lr: float = 0.01,
    name: str = "multiscale",
) -> Any:
    keras = _keras()
    from keras import layers

    inp = keras.Input((n_factors, 12, 12, n_scales), name="windows")
    x = inp
    for n_convs, width in ((2, widths[0]), (3, widths[1])):
        for _ in range(n_convs):
            x = layers.Conv3D(width, 3, padding="same", activation="relu")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
        x = layers.MaxPooling3D(pool_size=2, padding="same")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(dense, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    out = layers.Dense(1, activation="sigmoid", name="probability")(x)
    model = keras.Model(inp, out, name=name)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss="binary_crossentropy",
        weighted_metrics=[],
    )
    return model


def build_dense_fcn(
    n_factors: int, width: int = 16, dense: int = 64, lr: float = 0.01, name: str = "multiscale_dense"
) -> Any:
    keras = _keras()
    from keras import layers

    inp = keras.Input((None, None, n_factors), name="factors")
    x = inp
    for dilation in (1, 1, 2, 4, 3):  # receptive field 3, 5, 9, 17, 23
        x = layers.Conv2D(width, 3, dilation_rate=dilation, padding="valid", activation="relu")(x)
        if dilation == 1:
            continue
        x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    branches = [x, layers.Cropping2D(DENSE_HALO)(inp)]
    for size in (5, 11, 23):
        pooled = layers.AveragePooling2D(pool_size=size, strides=1, padding="valid")(inp)
        crop = DENSE_HALO - size // 2
        branches.append(layers.Cropping2D(crop)(pooled) if crop else pooled)
    x = layers.Concatenate()(branches)
    x = layers.Conv2D(dense, 1, activation="relu")(x)
    x = layers.Dropout(0.2)(x)
    out = layers.Conv2D(1, 1, activation="sigmoid", name="probability")(x)
    model = keras.Model(inp, out, name=name)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss="binary_crossentropy",
        weighted_metrics=[],
    )
    return model


def patches_to_channels_last(windows: np.ndarray) -> np.ndarray:
    """Extractor output ``[N, c, 23, 23, 1]`` -> dense-model input ``[N, 23, 23, c]``."""
    return np.ascontiguousarray(windows[..., 0].transpose(0, 2, 3, 1))


def flops_window_cnn(model: Any) -> float:
    """Multiply-adds x 2 of one forward pass of a window model (convs and dense layers)."""
    total = 0.0
    for layer in model.layers:
        cls = type(layer).__name__
        if cls in ("Conv3D", "Conv2D"):
            kernel = layer.kernel.shape
            out_shape = layer.output.shape
            spatial = float(np.prod([d for d in out_shape[1:-1] if d is not None]))
            total += 2.0 * spatial * float(np.prod(kernel))
        elif cls == "Dense":
            total += 2.0 * float(np.prod(layer.kernel.shape))
    return total


def flops_dense_per_cell(model: Any) -> float:
    """Multiply-adds x 2 per output cell of the dense model (convolutions as if unpadded)."""
    total = 0.0
    for layer in model.layers:
        if type(layer).__name__ == "Conv2D":
            total += 2.0 * float(np.prod(layer.kernel.shape))
        elif type(layer).__name__ == "AveragePooling2D":
            total += float(np.prod(layer.pool_size)) * float(layer.input.shape[-1])
    return total


def compiled_predict(model: Any) -> Any:
    """``numpy -> numpy`` inference traced once for any batch (and, for the dense model, any block)
    size: Keras' ``predict_on_batch`` retraces for every new input shape (e.g. the last batch)."""
    cached = getattr(model, "_slidemap_predict", None)
    if cached is not None:
        return cached
    from slidemap.compute.inference import configure_tensorflow

    tf = configure_tensorflow()
    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
    fn = tf.function(lambda x: model(x, training=False), input_signature=[spec], reduce_retracing=True)

    def predict(x: np.ndarray) -> np.ndarray:
        return fn(tf.convert_to_tensor(x, tf.float32)).numpy()

    model._slidemap_predict = predict
    return predict
