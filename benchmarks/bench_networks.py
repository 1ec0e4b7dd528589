"""Network throughput per Keras 3 backend: the attention U-Net (width 16, 256-px tiles), the paper's
window 3D-CNN (widths 32/64, 14 factors, 3 scales) and the fast form (width 32, 1024-cell blocks), in
float32 and under ``mixed_bfloat16`` with the same weights, and the agreement of the two.

Run: ``.venv/bin/python benchmarks/bench_networks.py`` (``small`` for a smoke run); one JSON line per
network. It is backend-neutral on purpose: the lent H200 had JAX but no TensorFlow (nothing can be
installed there beyond 64 MiB a call), so its figures (``benchmarks/results/gpu_h200_keras_jax.jsonl``,
BENCHMARKS.md "GPU") were taken with ``KERAS_BACKEND=jax .venv/bin/python benchmarks/bench_networks.py``
(under another backend this script skips slidemap's TensorFlow set-up itself).
"""
import json, sys, time
import numpy as np
import keras

if keras.backend.backend() != "tensorflow":
    # Another Keras backend (the H200 had JAX, no TensorFlow): the networks are backend-neutral;
    # only slidemap's TensorFlow set-up is skipped.
    import slidemap.compute.models.runtime as _runtime

    _runtime.configure_tensorflow = lambda: None
from slidemap.training.unet import build_unet
from slidemap.training.lsm_networks import build_window_cnn, build_dense_fcn, flops_window_cnn, flops_dense_per_cell

small = len(sys.argv) > 1 and sys.argv[1] == "small"
rng = np.random.default_rng(0)

def timed(fn, x, reps):
    fn(x); fn(x)
    t = time.perf_counter()
    for _ in range(reps):
        out = fn(x)
    np.asarray(out)
    return (time.perf_counter() - t) / reps, np.asarray(out, dtype=np.float32)

def run(name, build, x, units_per_batch, unit, flops_per_unit, reps):
    keras.config.set_dtype_policy("float32")
    m32 = build()
    f32 = lambda v: m32.predict_on_batch(v)
    dt32, y32 = timed(f32, x, reps)
    keras.config.set_dtype_policy("mixed_bfloat16")
    m16 = build(); m16.set_weights(m32.get_weights())
    f16 = lambda v: m16.predict_on_batch(v)
    dt16, y16 = timed(f16, x, reps)
    keras.config.set_dtype_policy("float32")
    a, b = y32.ravel(), y16.ravel()
    print(json.dumps({"network": name, "backend": keras.backend.backend(), "unit": unit,
        "per_s_fp32": round(units_per_batch / dt32, 1), "per_s_bf16": round(units_per_batch / dt16, 1),
        "tflops_fp32": round(units_per_batch * flops_per_unit / dt32 / 1e12, 2),
        "tflops_bf16": round(units_per_batch * flops_per_unit / dt16 / 1e12, 2),
        "bf16_max_abs_diff": float(np.abs(a - b).max()), "bf16_r": float(np.corrcoef(a, b)[0, 1])}), flush=True)

# U-Net, width 16, 3 bands, 256 px tiles
bu = 2 if small else 64
xu = rng.random((bu, 256, 256, 3), dtype=np.float32)
m = keras.models.clone_model(build_unet(3, 16, attention=True), input_tensors=keras.Input((256, 256, 3)))
fl = sum(2.0 * float(np.prod(l.kernel.shape)) * float(np.prod(l.output.shape[1:-1]))
         for l in m._flatten_layers() if type(l).__name__ in ("Conv2D", "Conv2DTranspose")) / (256 * 256)
run("attention-unet w16", lambda: build_unet(3, 16, attention=True), xu, bu * 256 * 256, "px", fl, 3 if small else 20)
# window 3D-CNN, paper widths, 14 channels, 3 scales
bw = 16 if small else 8192
ch = 14
xw = [rng.random((bw, ch, 12, 12, 3), dtype=np.float32), rng.random((bw, ch), dtype=np.float32)]
mw = build_window_cnn(ch, 3, ch, widths=(32, 64), dense=64)
run("window 3D-CNN (32,64)", lambda: build_window_cnn(ch, 3, ch, widths=(32, 64), dense=64), xw, bw, "cells",
    flops_window_cnn(mw), 3 if small else 20)
# fast form, width 32, one 512-cell block + halo
side = 64 if small else 1024
xd = rng.random((1 if small else 4, side + 22, side + 22, ch), dtype=np.float32)
md = build_dense_fcn(ch, width=32, dense=64)
run("dense fast form w32", lambda: build_dense_fcn(ch, width=32, dense=64), xd, xd.shape[0] * side * side, "cells",
    flops_dense_per_cell(md), 3 if small else 20)
