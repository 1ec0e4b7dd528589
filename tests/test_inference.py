"""TensorFlow set-up and batched inference (compute/models/runtime.py), on the CPU.

The GPU side of the same code is in test_gpu.py (marked ``gpu``). Here: the settings and their
errors, the XLA policy reaching models that slidemap does not build itself, padding to one batch
shape, the out-of-memory fallback, batch sizes from activation memory, the bounded model cache,
mixed precision's agreement with float32, and the device report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from contextlib import contextmanager

import keras
import numpy as np
import pytest
import tensorflow as tf

from slidemap.compute.models import runtime as inference
from slidemap.compute.models.runtime import (
    BatchPredictor,
    ModelCache,
    OutOfMemory,
    TensorflowSettings,
    TensorflowSetupError,
    activation_bytes_per_sample,
    batch_size_for,
    device_info,
    is_out_of_memory,
    run_in_batches,
)


def tiny_model(seed: int = 0, width: int = 8) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6,))
    x = keras.layers.Dense(width, activation="relu")(inp)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inp, out)


def conv_model(width: int = 4) -> keras.Model:
    inp = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(inp)
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
    return keras.Model(inp, keras.layers.Conv2D(1, 1, activation="sigmoid")(x))


def oom() -> Exception:
    return tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor (simulated)")


# ---- settings ----------------------------------------------------------------------------------


def test_settings_from_the_environment():
    assert TensorflowSettings.from_env({}) == TensorflowSettings()
    s = TensorflowSettings.from_env({"SLIDEMAP_DEVICE": "CPU", "SLIDEMAP_XLA": "on", "SLIDEMAP_MIXED_PRECISION": "1",
                                     "SLIDEMAP_GPU_MEMORY_MB": "2048"})
    assert (s.device, s.xla, s.mixed_precision, s.gpu_memory_mb) == ("cpu", "on", "auto", 2048)
    assert TensorflowSettings.from_env({"SLIDEMAP_MIXED_PRECISION": "mixed_bfloat16"}).mixed_precision == "mixed_bfloat16"
    assert TensorflowSettings.from_env({"SLIDEMAP_MIXED_PRECISION": "0"}).mixed_precision is None
    for key, value in (("SLIDEMAP_DEVICE", "tpu"), ("SLIDEMAP_XLA", "maybe"), ("SLIDEMAP_MIXED_PRECISION", "half"),
                       ("SLIDEMAP_GPU_MEMORY_MB", "lots"), ("SLIDEMAP_GPU_MEMORY_MB", "-5")):
        with pytest.raises(TensorflowSetupError, match=key):
            TensorflowSettings.from_env({key: value})


def test_a_bad_setting_is_one_cli_line_exit_2(tmp_path):
    env = dict(os.environ, SLIDEMAP_XLA="sometimes")
    proc = subprocess.run([sys.executable, "-m", "slidemap.cli", "status", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "slidemap: error: SLIDEMAP_XLA='sometimes': expected one of auto, on, off"


def test_every_command_is_classified_for_tensorflow():
    """A new command must say whether it runs TensorFlow (then the CLI configures it first)."""
    from slidemap import cli

    parser = cli.build_parser()
    commands = set(next(a for a in parser._actions if a.dest == "command").choices)
    # seed: TensorFlow only where a model layer is seeded, configured by the model's loader there
    assert commands == cli.TENSORFLOW_COMMANDS | {"demo-region", "prepare", "dashboard", "seed"}


def test_this_process_is_configured_like_the_cli():
    """conftest.py configured TensorFlow through the CLI's entry point before any test module."""
    assert inference.is_configured()
    assert os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"  # children (slidemap train) grow too
    assert keras.mixed_precision.global_policy().name == "float32"
    assert inference.xla_policy() == {"fit": False, "inference": inference.on_gpu()}
    model = tiny_model()
    model.compile(optimizer="adam", loss="binary_crossentropy")
    assert model.jit_compile is False  # Keras would turn XLA on for fit whenever a GPU is visible


def test_device_changes_after_start_are_refused_loudly(monkeypatch):
    """TensorFlow refuses device changes once initialised; that must stop slidemap, not be logged at DEBUG."""

    def too_late() -> None:
        raise RuntimeError("Physical devices cannot be modified after being initialized")

    with pytest.raises(RuntimeError, match="before any TensorFlow op"):
        inference._modify_devices(tf, too_late, "cap GPU:0 at 1024 MiB")
    # growth that could not be set is fine only when the runtime started with it from the environment
    monkeypatch.setattr(inference, "_growth_from_env", True)
    inference._modify_devices(tf, too_late, "turn on memory growth on GPU:0")
    monkeypatch.setattr(inference, "_growth_from_env", False)
    with pytest.raises(RuntimeError, match="could not turn on memory growth"):
        inference._modify_devices(tf, too_late, "turn on memory growth on GPU:0")


SUBPROCESS_CHECK = r"""
import json, numpy as np
from slidemap.compute.models.runtime import configure_tensorflow, device_summary
configure_tensorflow()  # first, as documented: Keras' import starts TensorFlow
import keras
inp = keras.Input((4,)); model = keras.Model(inp, keras.layers.Dense(1)(inp))
model.compile(optimizer="adam", loss="mse")
model.save(__import__("sys").argv[1])
loaded = keras.saving.load_model(__import__("sys").argv[1], compile=False)
out = {"compiled": model.jit_compile, "loaded": loaded.jit_compile, "dtype": model.layers[1].compute_dtype,
       "summary": device_summary()}
print(json.dumps(out))
"""


def test_environment_switches_reach_every_model(tmp_path):
    """SLIDEMAP_XLA=on and SLIDEMAP_MIXED_PRECISION=1 in a fresh process: Keras' defaults for a model
    slidemap does not build itself (compiled, and loaded without compiling) follow them."""
    env = dict(os.environ, SLIDEMAP_XLA="on", SLIDEMAP_MIXED_PRECISION="1", SLIDEMAP_DEVICE="cpu")
    proc = subprocess.run([sys.executable, "-c", SUBPROCESS_CHECK, str(tmp_path / "m.keras")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["compiled"] is True and out["loaded"] is True  # Keras alone: False on a CPU
    assert out["dtype"] == "bfloat16"  # mixed precision on a CPU: bfloat16 compute, float32 weights
    s = out["summary"]
    assert s["device"] == "CPU" and s["xla"] == {"setting": "on", "fit": True, "inference": True}
    assert s["mixed_precision"] == "mixed_bfloat16" and s["memory"] == "no GPU"
    assert "oneDNN" not in proc.stderr and "absl" not in proc.stderr  # start-up chatter silenced


def test_device_summary_on_this_machine():
    info = device_info()
    assert info.device == ("GPU" if inference.on_gpu() else "CPU")
    assert f"device:{info.device}:0" in info.placement
    assert info.tensorflow == tf.__version__
    assert len(info.distributions) == 1, info.distributions  # one flavour: never tensorflow and tensorflow-cpu
    if info.device == "CPU":
        assert info.gpus == [] and info.memory == "no GPU"
        assert (info.driver_gpus > 0) == bool(info.warnings)  # a GPU TensorFlow cannot see is reported
    json.dumps(info.to_dict())


def test_cpu_flavour_is_what_is_installed():
    flavour = os.environ.get("SLIDEMAP_TF", "cpu")
    dists = inference.tf_distributions()
    if flavour == "cpu" and os.uname().machine == "x86_64":
        assert dists[0].startswith("tensorflow-cpu ") and not tf.sysconfig.get_build_info().get("is_cuda_build")
    elif flavour == "gpu":
        assert dists[0].startswith("tensorflow ") and tf.sysconfig.get_build_info().get("is_cuda_build")


# ---- batches -----------------------------------------------------------------------------------


def test_out_of_memory_halves_the_batch_and_keeps_every_sample():
    x = np.arange(23, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    seen: list[int] = []
    shrunk: list[int] = []

    def run(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        if len(batch) > 3:
            raise oom()
        return batch.sum(axis=1)

    out = run_in_batches(run, x, 8, on_shrink=shrunk.append)
    np.testing.assert_array_equal(out, x.sum(axis=1))
    assert shrunk == [4, 2] and max(s for s in seen if s <= 3) == 2
    with pytest.raises(OutOfMemory, match="does not fit"):
        run_in_batches(lambda b: (_ for _ in ()).throw(oom()), x, 4)
    with pytest.raises(ValueError, match="not memory"):  # other errors are not retried
        run_in_batches(lambda b: (_ for _ in ()).throw(ValueError("not memory")), x, 4)


def test_out_of_memory_is_recognised():
    assert is_out_of_memory(oom()) and is_out_of_memory(MemoryError())
    assert is_out_of_memory(tf.errors.InternalError(None, None, "RESOURCE_EXHAUSTED: XLA ran out of memory"))
    assert not is_out_of_memory(tf.errors.InvalidArgumentError(None, None, "bad shape"))
    assert not is_out_of_memory(RuntimeError("Out of memory"))  # not TensorFlow's


def test_padding_keeps_one_batch_shape():
    model = tiny_model()
    x = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    shapes: list[tuple[int, ...]] = []
    out = run_in_batches(lambda b: shapes.append(b.shape) or np.asarray(model(b)), x, 4, pad=True)
    assert shapes == [(4, 6)] * 3
    np.testing.assert_allclose(out, model.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize("xla", [False, True])
def test_batch_predictor_traces_once_and_matches_keras(xla):
    model = tiny_model(1)
    x = np.random.default_rng(1).normal(size=(11, 6)).astype(np.float32)
    predictor = BatchPredictor(model, batch_size=4, xla=xla)
    out = predictor(x)
    predictor(x[:3])
    assert out.dtype == np.float32 and out.shape == (11, 1)
    np.testing.assert_allclose(out, model.predict(x, verbose=0), atol=1e-6)
    # XLA: padded to one shape, so one compilation; without: one trace for any batch size
    assert predictor._fn.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("xla", [False, True])
def test_batch_predictor_with_two_inputs(xla):
    """Like the window 3D-CNNs: windows and the cell's own values, two inputs with one sample axis."""
    keras.utils.set_random_seed(4)
    windows, centre = keras.Input((5, 5, 2)), keras.Input((3,))
    x = keras.layers.Concatenate()([keras.layers.Flatten()(windows), centre])
    model = keras.Model([windows, centre], keras.layers.Dense(1, activation="sigmoid")(x))
    rng = np.random.default_rng(4)
    inputs = [rng.normal(size=(9, 5, 5, 2)).astype(np.float32), rng.normal(size=(9, 3)).astype(np.float32)]
    predictor = BatchPredictor(model, batch_size=4, xla=xla)
    np.testing.assert_allclose(predictor(inputs), model.predict(inputs, verbose=0), atol=1e-6)
    assert predictor._fn.experimental_get_tracing_count() == 1
    assert activation_bytes_per_sample(model) >= (50 + 3 + 53 + 1) * 4
    with pytest.raises(ValueError, match="one per input"):
        activation_bytes_per_sample(model, (5, 5, 2))


def test_batch_predictor_falls_back_on_out_of_memory_and_remembers():
    model = tiny_model(2)
    x = np.random.default_rng(2).normal(size=(20, 6)).astype(np.float32)
    predictor = BatchPredictor(model, batch_size=16, xla=False)
    real = predictor._run

    def limited(batch: np.ndarray) -> np.ndarray:
        if len(batch) > 5:
            raise oom()
        return real(batch)

    predictor._run = limited
    np.testing.assert_allclose(predictor(x), model.predict(x, verbose=0), atol=1e-6)
    assert predictor.batch_size == 4  # 16 -> 8 -> 4, kept for the next call


def test_batch_predictor_is_safe_from_several_threads():
    model = tiny_model(3)
    x = np.random.default_rng(3).normal(size=(64, 6)).astype(np.float32)
    predictor = BatchPredictor(model, batch_size=8)
    expected = predictor(x)
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(predictor(x))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 4 and all(np.array_equal(r, expected) for r in results)


def test_activation_memory_scales_with_the_input_and_sets_the_batch():
    model = conv_model(width=4)
    small = activation_bytes_per_sample(model, (32, 32, 3))
    large = activation_bytes_per_sample(model, (64, 64, 3))
    assert large == 4 * small  # every tensor of a 'same'-padded network is proportional to the area
    # at least the three conv outputs and the input, float32; the weights (batch-independent) are not counted
    assert small >= 32 * 32 * (3 + 4 + 4 + 1) * 4
    wide = activation_bytes_per_sample(conv_model(width=16), (32, 32, 3))
    assert wide > 3 * small
    with pytest.raises(ValueError, match="sample_shape"):
        activation_bytes_per_sample(model)
    # the batch takes at most half the free memory, within [1, max_batch]
    free = 20 * large
    assert batch_size_for(model, (64, 64, 3), free_bytes=free, max_batch=64, gpu=True) == 10
    assert batch_size_for(model, (64, 64, 3), free_bytes=free, max_batch=6, gpu=True) == 6
    assert batch_size_for(model, (64, 64, 3), free_bytes=large // 4, gpu=True) == 1
    assert batch_size_for(model, (64, 64, 3), gpu=False) == inference.DEFAULT_MAX_BATCH["CPU"]  # RAM is plenty


def test_model_cache_is_bounded_and_loads_once():
    cache: ModelCache[str] = ModelCache(max_items=2)
    loads: list[str] = []

    def loader(key: str):
        return lambda: loads.append(key) or f"model {key}"

    assert cache.get_or_load("a", loader("a")) == "model a"
    assert cache.get_or_load("a", loader("a")) == "model a"
    cache.get_or_load("b", loader("b"))
    cache.get_or_load("a", loader("a"))  # a is now the most recent
    cache.get_or_load("c", loader("c"))  # evicts b
    assert loads == ["a", "b", "c"] and "b" not in cache and "a" in cache and len(cache) == 2
    os.environ["SLIDEMAP_MODEL_CACHE"] = "3"
    try:
        assert ModelCache().max_items == 3
    finally:
        del os.environ["SLIDEMAP_MODEL_CACHE"]


# ---- mixed precision ---------------------------------------------------------------------------


@contextmanager
def dtype_policy(name: str):
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def agreement(build, x, policy: str) -> dict[str, float]:
    """The same weights under float32 and under ``policy``: probability differences and 0.5 decisions.
    ``x``: one input array, or a list (one per model input)."""
    keras.utils.set_random_seed(0)
    reference = build()
    with dtype_policy(policy):
        mixed = build()
    mixed.set_weights(reference.get_weights())
    p32 = np.asarray(reference(x, training=False), dtype=np.float64)
    pmix = np.asarray(mixed(x, training=False), dtype=np.float64)
    diff = np.abs(p32 - pmix)
    return {"max": float(diff.max()), "mean": float(diff.mean()),
            "decisions": float(np.mean((p32 >= 0.5) == (pmix >= 0.5)))}


MIXED_TOLERANCE = {"mixed_bfloat16": 0.03, "mixed_float16": 0.005}  # max |p - p32|: 8 vs 11 mantissa bits
MIXED_DECISIONS = {"mixed_bfloat16": 0.97, "mixed_float16": 0.99}  # share of cells on the same side of 0.5


def mixed_models(policy: str) -> dict[str, tuple]:
    from slidemap.training.lsm_networks import build_dense_fcn, build_window_cnn
    from slidemap.training.unet import build_unet

    rng = np.random.default_rng(0)
    models = {
        "U-Net (width 8)": (lambda: build_unet(4, base_width=8), [rng.normal(size=(2, 64, 64, 4))]),
        "susceptibility fast form (dense FCN)": (lambda: build_dense_fcn(14, width=8, dense=32),
                                                 [rng.normal(size=(2, 48, 48, 14))]),
        "window 3D-CNN": (lambda: build_window_cnn(14, 3, 5, widths=(8, 16), dense=32),
                          [rng.normal(size=(64, 14, 12, 12, 3)), rng.normal(size=(64, 5))]),
    }
    if policy == "mixed_float16" and not inference.on_gpu():
        del models["window 3D-CNN"]  # TensorFlow has no float16 MaxPool3D kernel on CPUs
    out = {}
    for name, (build, xs) in models.items():
        xs = [x.astype(np.float32) for x in xs]
        out[name] = (build, xs[0] if len(xs) == 1 else xs)
    return out


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_agrees_with_float32(policy):
    """Measured on a CPU (the GPU run is in test_gpu.py); figures in BENCHMARKS.md."""
    for name, (build, x) in mixed_models(policy).items():
        result = agreement(build, x, policy)
        print(f"{policy} vs float32, {name}: max |dp| {result['max']:.2e}, mean {result['mean']:.2e}, "
              f"same 0.5 decision {result['decisions']:.1%}")
        assert 0 < result["max"] < MIXED_TOLERANCE[policy], (name, result)  # > 0: the policy changed the arithmetic
        # untrained outputs sit near 0.5, the worst case for a 0.5 cut
        assert result["decisions"] > MIXED_DECISIONS[policy], (name, result)


def test_float16_on_a_cpu_is_refused_with_the_fix():
    if inference.on_gpu():
        pytest.skip("a GPU runs float16")  # (never in CI: it has no GPU)
    with pytest.raises(TensorflowSetupError, match="SLIDEMAP_MIXED_PRECISION=1"):
        inference._mixed_policy_name("mixed_float16", on_gpu=False)
    assert inference._mixed_policy_name("auto", on_gpu=False) == "mixed_bfloat16"
    assert inference._mixed_policy_name("auto", on_gpu=True) == "mixed_float16"
    assert inference._mixed_policy_name(None, on_gpu=True) is None


def test_a_saved_model_computes_under_the_mixed_policy(tmp_path):
    """A model saved in float32 and loaded keeps float32 layers whatever the global policy; the loaders
    rebuild it under the mixed policy (SLIDEMAP_MIXED_PRECISION), with the same weights."""
    from slidemap.training.lsm_networks import build_dense_fcn

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(2, 48, 48, 14)).astype(np.float32)
    build_dense_fcn(14, width=8, dense=32).save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    assert inference.with_compute_policy(loaded) is loaded  # float32: untouched
    p32 = np.asarray(loaded(x, training=False), dtype=np.float64)
    with dtype_policy("mixed_bfloat16"):
        reloaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
        assert all(layer.compute_dtype == "float32" for layer in reloaded.layers if layer.weights)  # why the loaders rebuild
        mixed = inference.with_compute_policy(reloaded)
    assert any(layer.compute_dtype == "bfloat16" for layer in mixed.layers)
    assert all(v.dtype == "float32" for v in mixed.weights)  # weights stay float32
    pmix = np.asarray(mixed(x, training=False), dtype=np.float64)
    assert 0 < np.abs(p32 - pmix).max() < MIXED_TOLERANCE["mixed_bfloat16"]
