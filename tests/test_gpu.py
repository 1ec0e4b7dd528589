"""The GPU path, on a GPU (marked ``gpu``: skipped with the reason where TensorFlow sees none, CI included).

Run them with the GPU flavour: ``SLIDEMAP_TF=gpu bash scripts/test.sh -m gpu -s`` (``-s`` prints the
measured differences). They check that the GPU build is what runs (not tensorflow-cpu), that memory
growth lets a second process share the device, that inference compiles once with XLA on padded
batches and agrees with the CPU within TF32's precision, that an out-of-memory batch falls back to a
smaller one, that mixed float16 agrees with float32, and that ``slidemap status --json`` reports the GPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

# TF32 (on by default on Ampere and newer) keeps 10 mantissa bits in convolutions and matmuls:
# probabilities move by ~1e-3, so GPU-vs-CPU comparisons use this instead of float32's 1e-5.
TF32_TOLERANCE = 1e-2


def _keras_tf():
    import keras
    import tensorflow as tf

    return keras, tf


def test_the_gpu_build_runs_on_the_gpu():
    from slidemap.compute.models.runtime import device_info

    _, tf = _keras_tf()
    info = device_info()
    assert info.device == "GPU" and ":GPU:0" in info.placement, info
    assert info.cuda_build and info.cuda_version and info.cudnn_version
    assert [d.split()[0] for d in info.distributions] == ["tensorflow"], info.distributions  # no tensorflow-cpu
    assert info.memory == "growth" and not info.warnings, info
    for gpu in tf.config.list_physical_devices("GPU"):
        assert tf.config.experimental.get_memory_growth(gpu) is True
    print(f"GPU: {info.gpu_names}, CUDA {info.cuda_version}, cuDNN {info.cudnn_version}")


SECOND_PROCESS = r"""
import json
from slidemap.compute.models.runtime import configure_tensorflow
tf = configure_tensorflow()
a = tf.random.uniform((2048, 2048))
b = tf.linalg.matmul(a, a)
print(json.dumps({"device": b.device, "finite": bool(tf.reduce_all(tf.math.is_finite(b)).numpy())}))
"""


def test_memory_growth_lets_a_second_process_share_the_gpu():
    """This process already holds the GPU; a `slidemap` child must still get it, and the two together
    must leave most of the device free (without growth the first takes nearly all of it)."""
    import pynvml

    _, tf = _keras_tf()
    x = tf.random.uniform((1024, 1024))
    assert "GPU" in (x @ x).device
    proc = subprocess.run([sys.executable, "-c", SECOND_PROCESS], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "GPU" in child["device"] and child["finite"]
    pynvml.nvmlInit()
    try:
        mem = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
    finally:
        pynvml.nvmlShutdown()
    print(f"GPU memory free with this process holding TensorFlow: {mem.free / 2**30:.1f} of {mem.total / 2**30:.1f} GiB")
    assert mem.free > 0.5 * mem.total


def test_xla_inference_compiles_once_and_agrees_with_the_cpu():
    from slidemap.compute.models.runtime import BatchPredictor, xla_policy
    from slidemap.training.unet import build_unet

    keras, tf = _keras_tf()
    assert xla_policy() == {"fit": False, "inference": True}
    keras.utils.set_random_seed(0)
    model = build_unet(4, base_width=8)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    assert model.jit_compile is False  # fit: one policy on every path, not Keras' "XLA whenever a GPU is visible"
    x = np.random.default_rng(0).normal(size=(13, 128, 128, 4)).astype(np.float32)
    predictor = BatchPredictor(model, batch_size=4)
    assert predictor.xla
    gpu = predictor(x)
    predictor(x[:5])
    assert predictor._fn.experimental_get_tracing_count() == 1  # 13 and 5 samples: one padded shape
    with tf.device("/CPU:0"):
        cpu = np.asarray(model(x, training=False))
    diff = float(np.abs(gpu - cpu).max())
    print(f"U-Net GPU (XLA, TF32) vs CPU: max |dp| {diff:.2e}")
    assert diff < TF32_TOLERANCE


def test_susceptibility_models_agree_with_the_cpu():
    from slidemap.compute.models.runtime import BatchPredictor
    from slidemap.training.lsm_networks import build_dense_fcn, build_window_cnn

    keras, tf = _keras_tf()
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    for name, model, x, batch in (
        ("window 3D-CNN", build_window_cnn(14, 3, 5),
         [rng.normal(size=(300, 14, 12, 12, 3)).astype(np.float32), rng.normal(size=(300, 5)).astype(np.float32)], 64),
        ("fast form (dense FCN)", build_dense_fcn(14), rng.normal(size=(2, 150, 150, 14)).astype(np.float32), 1),
    ):
        gpu = BatchPredictor(model, batch_size=batch)(x)  # the fast form: one block per call
        with tf.device("/CPU:0"):
            cpu = np.asarray(model(x, training=False))
        diff = float(np.abs(gpu - cpu).max())
        print(f"{name} GPU vs CPU: max |dp| {diff:.2e}")
        assert diff < TF32_TOLERANCE, name


OOM_CHILD = r"""
import json, numpy as np
from slidemap.compute.models.runtime import BatchPredictor, configure_tensorflow, device_summary
configure_tensorflow()
import keras
from slidemap.training.unet import build_unet
keras.utils.set_random_seed(0)
model = build_unet(4, base_width=16)
x = np.random.default_rng(0).normal(size=(96, 256, 256, 4)).astype(np.float32)
big = BatchPredictor(model, batch_size=96, xla=False)
out = big(x)
ref = BatchPredictor(model, batch_size=1, xla=False)(x[:8])
print(json.dumps({"batch": big.batch_size, "diff": float(np.abs(out[:8] - ref).max()),
                  "memory": device_summary()["memory"]}))
"""


def test_out_of_memory_falls_back_to_a_smaller_batch():
    """A 600 MiB cap (SLIDEMAP_GPU_MEMORY_MB) and 96 tiles of 256 px at once: TensorFlow runs out of
    memory, the predictor halves the batch until it fits, and no tile is lost."""
    env = dict(os.environ, SLIDEMAP_GPU_MEMORY_MB="600")
    env.pop("TF_FORCE_GPU_ALLOW_GROWTH", None)  # a fixed cap instead of growth
    proc = subprocess.run([sys.executable, "-c", OOM_CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"out-of-memory fallback: batch 96 -> {out['batch']}")
    assert out["memory"] == "cap 600 MiB"
    assert out["batch"] < 96 and "out of memory at batch 96" in proc.stderr
    assert out["diff"] < TF32_TOLERANCE  # batch size changes only cuDNN's choice of algorithm


def test_batch_size_from_free_gpu_memory():
    from slidemap.compute.models.runtime import DEFAULT_MAX_BATCH, batch_size_for, free_memory_bytes
    from slidemap.training.unet import build_unet

    free = free_memory_bytes()
    assert free is not None and free > 2**30  # NVML (nvidia-ml-py, part of the gpu extra) answers
    small = batch_size_for(build_unet(4, base_width=4), (256, 256, 4))
    assert small == DEFAULT_MAX_BATCH["GPU"]
    huge = batch_size_for(build_unet(4, base_width=64), (1024, 1024, 4), max_batch=100_000)
    assert 1 <= huge < 100_000


def test_mixed_float16_agrees_with_float32():
    from test_inference import agreement, mixed_models

    for name, (build, x) in mixed_models("mixed_float16").items():
        result = agreement(build, x, "mixed_float16")
        print(f"mixed_float16 vs float32 on the GPU, {name}: max |dp| {result['max']:.2e}, mean {result['mean']:.2e}, "
              f"same 0.5 decision {result['decisions']:.1%}")
        assert result["max"] < TF32_TOLERANCE and result["decisions"] > 0.99, (name, result)


def test_status_reports_the_gpu(prepared_region, tmp_path):
    region = tmp_path / "region"
    shutil.copytree(prepared_region, region)
    exe = shutil.which("slidemap", path=str(Path(sys.executable).parent))
    proc = subprocess.run([exe, "status", str(region), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    device = json.loads(proc.stdout)["device"]
    assert device["device"] == "GPU" and device["gpus"] and device["memory"] == "growth"
    assert device["xla"] == {"setting": "auto", "fit": False, "inference": True}
