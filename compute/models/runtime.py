"""TensorFlow set-up for every slidemap process, and batched inference that fits the device.

:func:`configure_tensorflow` is the one entry point: the CLI calls it before any command that uses
TensorFlow, ``tests/conftest.py`` before any test, and every model loader before it builds a model.
It runs once per process and, before TensorFlow creates a device:

- turns on GPU memory growth (or a fixed per-process cap, ``SLIDEMAP_GPU_MEMORY_MB``), so a tile
  server, a training run and the tests can share one GPU; ``TF_FORCE_GPU_ALLOW_GROWTH`` is exported
  too, so child processes (``slidemap train`` started by the tests) grow as well. If a GPU was
  already initialised without growth, it raises instead of logging and carrying on;
- hides the GPU when ``SLIDEMAP_DEVICE=cpu`` and fails when ``SLIDEMAP_DEVICE=gpu`` finds none;
- silences TensorFlow's, oneDNN's and absl's start-up chatter (``TF_CPP_MIN_LOG_LEVEL=2`` unless set);
- sets one XLA policy for every path (``SLIDEMAP_XLA=auto|on|off``, see :func:`xla_policy`);
- sets Keras' mixed-precision policy when ``SLIDEMAP_MIXED_PRECISION`` asks for it.

Inference in batches: :class:`BatchPredictor` runs a Keras model over numpy arrays in fixed-size
batches (the last one zero-padded when XLA is on, so one shape compiles once), with a batch size from
the model's activation memory and the device's free memory (:func:`batch_size_for`) and, on an
out-of-memory error, halves the batch and retries. :class:`ModelCache` bounds how many loaded models
a process keeps (each pinned version of a model otherwise stays in GPU memory).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from slidemap.errors import SlidemapError

log = logging.getLogger(__name__)

XLA_SETTINGS = ("auto", "on", "off")
DEVICE_SETTINGS = ("auto", "cpu", "gpu")
MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")
# Largest batch tried when memory allows: past these, throughput no longer grows (CPU: the cores are
# busy at 8 tiles; GPU: a few dozen 256-px tiles fill an H100-class device).
DEFAULT_MAX_BATCH = {"CPU": 8, "GPU": 64}
# Share of the free memory one batch may take: the estimate counts every intermediate tensor once,
# and cuDNN's workspaces and the allocator's fragmentation come on top.
MEMORY_SHARE = 0.5

_lock = threading.RLock()
_state: _Configured | None = None
_keras_auto_jit: Callable[[Any], bool] | None = None
_growth_from_env = False


class TensorflowSetupError(SlidemapError):
    """TensorFlow is missing, or a ``SLIDEMAP_*`` setting cannot be honoured on this machine."""


@dataclass(frozen=True)
class TensorflowSettings:
    """What the environment asks of TensorFlow (read once, by :func:`configure_tensorflow`)."""

    device: str = "auto"  # SLIDEMAP_DEVICE: auto | cpu | gpu
    xla: str = "auto"  # SLIDEMAP_XLA: auto | on | off
    mixed_precision: str | None = None  # SLIDEMAP_MIXED_PRECISION: 1 | mixed_float16 | mixed_bfloat16
    gpu_memory_mb: int | None = None  # SLIDEMAP_GPU_MEMORY_MB: a fixed cap instead of memory growth

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ[str] | None = None) -> TensorflowSettings:
        env = os.environ if env is None else env
        device = env.get("SLIDEMAP_DEVICE", "auto").strip().lower() or "auto"
        if device not in DEVICE_SETTINGS:
            raise TensorflowSetupError(f"SLIDEMAP_DEVICE={device!r}: expected one of {', '.join(DEVICE_SETTINGS)}")
        xla = env.get("SLIDEMAP_XLA", "auto").strip().lower() or "auto"
        if xla not in XLA_SETTINGS:
            raise TensorflowSetupError(f"SLIDEMAP_XLA={xla!r}: expected one of {', '.join(XLA_SETTINGS)}")
        mixed_raw = env.get("SLIDEMAP_MIXED_PRECISION", "").strip().lower()
        if mixed_raw in ("", "0", "off", "false", "no", "float32"):
            mixed = None
        elif mixed_raw in ("1", "on", "true", "yes"):
            mixed = "auto"  # float16 on a GPU, bfloat16 on a CPU (see _mixed_policy_name)
        elif mixed_raw in MIXED_POLICIES:
            mixed = mixed_raw
        else:
            raise TensorflowSetupError(
                f"SLIDEMAP_MIXED_PRECISION={mixed_raw!r}: expected 0, 1, {' or '.join(MIXED_POLICIES)}"
            )
        mb_raw = env.get("SLIDEMAP_GPU_MEMORY_MB", "").strip()
        try:
            gpu_mb = int(mb_raw) if mb_raw else None
        except ValueError:
            gpu_mb = -1
        if gpu_mb is not None and gpu_mb <= 0:
            raise TensorflowSetupError(f"SLIDEMAP_GPU_MEMORY_MB={mb_raw!r}: expected a positive number of MiB")
        return cls(device=device, xla=xla, mixed_precision=mixed, gpu_memory_mb=gpu_mb)


@dataclass(frozen=True)
class _Configured:
    settings: TensorflowSettings
    gpus: tuple[str, ...]  # physical GPUs TensorFlow uses (after SLIDEMAP_DEVICE)
    memory: str  # "growth" | "cap <n> MiB" | "no GPU"
    mixed_policy: str  # Keras' global dtype policy
    tf: Any = field(repr=False, compare=False)


# ---- the one entry point ---------------------------------------------------------------------------


def configure_tensorflow() -> Any:
    """Import and configure TensorFlow once per process (see the module docstring); return the module."""
    global _state, _growth_from_env
    with _lock:
        if _state is not None:
            return _state.tf
        settings = TensorflowSettings.from_env()
        # Both must be in the environment before TensorFlow's C++ runtime starts; children inherit them.
        # Growth from the environment counts only if TensorFlow cannot have started before it was set.
        _growth_from_env = os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH") == "true" or "tensorflow" not in sys.modules
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if settings.gpu_memory_mb is None:
            os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
        try:
            with _stderr_to_devnull():
                import tensorflow as tf
        except ImportError as exc:
            raise TensorflowSetupError(
                f"TensorFlow cannot be imported ({exc}); install a flavour: "
                "`SLIDEMAP_TF=cpu bash scripts/setup.sh` (or gpu), or `pip install -e .[cpu]` / `.[gpu]`"
            ) from exc
        _silence()
        _set_threads(tf)
        gpus = list(tf.config.list_physical_devices("GPU"))
        if settings.device == "gpu" and not gpus:
            raise TensorflowSetupError(
                f"SLIDEMAP_DEVICE=gpu but TensorFlow {tf.__version__} ({', '.join(tf_distributions()) or 'unknown build'}) "
                "sees no GPU; install the GPU flavour (`SLIDEMAP_TF=gpu bash scripts/setup.sh`) and check `nvidia-smi`"
            )
        if settings.device == "cpu" and gpus:
            _modify_devices(tf, lambda: tf.config.set_visible_devices([], "GPU"), "hide the GPUs (SLIDEMAP_DEVICE=cpu)")
            gpus = []
        memory = "no GPU"
        for gpu in gpus:
            if settings.gpu_memory_mb is not None:
                cap = [tf.config.LogicalDeviceConfiguration(memory_limit=settings.gpu_memory_mb)]
                _modify_devices(tf, lambda gpu=gpu, cap=cap: tf.config.set_logical_device_configuration(gpu, cap),
                                f"cap {gpu.name} at {settings.gpu_memory_mb} MiB")
                memory = f"cap {settings.gpu_memory_mb} MiB"
            else:
                if not tf.config.experimental.get_memory_growth(gpu):
                    _modify_devices(tf, lambda gpu=gpu: tf.config.experimental.set_memory_growth(gpu, True),
                                    f"turn on memory growth on {gpu.name}")
                memory = "growth"
        _install_xla_policy(settings)
        mixed = _set_mixed_precision(settings, bool(gpus))
        _state = _Configured(settings, tuple(g.name for g in gpus), memory, mixed, tf)
        return tf


def _set_threads(tf: Any) -> None:
    """``SLIDEMAP_TF_THREADS=n``: n threads per op (and between ops). Dask worker processes sharing
    one machine get cores / workers each, so they split the cores instead of each taking all."""
    raw = os.environ.get("SLIDEMAP_TF_THREADS", "").strip()
    if not raw:
        return
    if not raw.isdigit() or int(raw) < 1:
        raise TensorflowSetupError(f"SLIDEMAP_TF_THREADS={raw!r}: expected a positive number of threads")
    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(raw))
        tf.config.threading.set_inter_op_parallelism_threads(int(raw))
    except RuntimeError:  # TensorFlow already started in this process: its thread pools stay as they are
        log.warning("SLIDEMAP_TF_THREADS=%s ignored: TensorFlow was already running", raw)


def _modify_devices(tf: Any, change: Callable[[], None], what: str) -> None:
    try:
        change()
    except RuntimeError as exc:
        if _growth_from_env and os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH") == "true" and "memory growth" in what:
            return  # the runtime started with growth from the environment: the goal is met
        raise RuntimeError(
            f"slidemap could not {what}: TensorFlow had already initialised its devices ({exc}). "
            "Call slidemap.compute.models.runtime.configure_tensorflow() before any TensorFlow op."
        ) from exc


@contextlib.contextmanager
def _stderr_to_devnull() -> Iterator[None]:
    """File descriptor 2 to /dev/null while TensorFlow loads its C++ runtime: on CPUs with AVX-512
    its oneDNN notice is logged before absl's logging starts, where TF_CPP_MIN_LOG_LEVEL does not
    reach (seen with TensorFlow 2.21). Python exceptions are raised, not printed, so none is lost."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (an embedded interpreter): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _silence() -> None:
    """TensorFlow's C++ start-up lines (oneDNN and CPU-feature notices, absl's pre-init warning) are
    kept out by TF_CPP_MIN_LOG_LEVEL=2, set before the import; absl's Python logger, through which
    Keras reports e.g. "compiled metrics have yet to be built" on every model load, is quieted to
    errors. TensorFlow's own Python warnings (retracing) stay visible."""
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:  # absl ships with TensorFlow; nothing to silence without it
        pass


def settings() -> TensorflowSettings:
    """The settings this process was configured with (configures TensorFlow if not done yet)."""
    configure_tensorflow()
    assert _state is not None
    return _state.settings


def is_configured() -> bool:
    return _state is not None


# ---- XLA -------------------------------------------------------------------------------------------


def xla_policy(on_gpu: bool | None = None) -> dict[str, bool]:
    """Where XLA compiles: ``{"fit": ..., "inference": ...}``, the same for every slidemap path.

    ``auto`` (default): XLA only for inference with fixed batch shapes (:class:`BatchPredictor` pads
    the last batch) and only on a GPU. Keras' own choice ("on when a GPU is visible") compiles again
    for every new input shape -- the last short batch of ``fit``, every trial of a hyper-parameter
    search, every block size of ``predict_on_batch`` -- for seconds each, which the short fits here
    never win back; on CPUs XLA's convolutions are no faster than oneDNN's.
    ``on``: XLA wherever Keras can use it, ``fit`` included, on any device. ``off``: nowhere.
    """
    configure_tensorflow()
    assert _state is not None
    gpu = bool(_state.gpus) if on_gpu is None else on_gpu
    return _policy(_state.settings.xla, gpu)


def _policy(setting: str, on_gpu: bool) -> dict[str, bool]:
    if setting == "on":
        return {"fit": True, "inference": True}
    if setting == "off":
        return {"fit": False, "inference": False}
    return {"fit": False, "inference": on_gpu}


def _install_xla_policy(settings: TensorflowSettings) -> None:
    """Make Keras' ``jit_compile="auto"`` (its default for ``compile`` and for models loaded with
    ``compile=False``) follow :func:`xla_policy`'s ``fit`` entry, whoever builds the model."""
    global _keras_auto_jit
    from keras.src.trainers import trainer as keras_trainer  # Keras 3 (pinned < 4): one resolver for all models
    from keras.src.trainers.trainer import model_supports_jit

    if _keras_auto_jit is None:
        _keras_auto_jit = keras_trainer.Trainer._resolve_auto_jit_compile
    fit_xla = _policy(settings.xla, on_gpu=False)["fit"]  # fit never depends on the device here

    def resolve_auto_jit_compile(model: Any) -> bool:
        return bool(fit_xla and model_supports_jit(model))

    keras_trainer.Trainer._resolve_auto_jit_compile = resolve_auto_jit_compile


# ---- mixed precision -------------------------------------------------------------------------------


def _mixed_policy_name(setting: str | None, on_gpu: bool) -> str | None:
    if setting == "auto":
        # float16 is what GPU tensor cores run; CPUs have bfloat16 units (AVX512-BF16/AMX) and no fast float16
        return "mixed_float16" if on_gpu else "mixed_bfloat16"
    if setting == "mixed_float16" and not on_gpu:
        raise TensorflowSetupError(
            "SLIDEMAP_MIXED_PRECISION=mixed_float16 on a CPU: TensorFlow has no float16 CPU kernel for the "
            "susceptibility models' 3-D pooling; use SLIDEMAP_MIXED_PRECISION=1 (bfloat16 on a CPU)"
        )
    return setting


def _set_mixed_precision(settings: TensorflowSettings, on_gpu: bool) -> str:
    import keras

    name = _mixed_policy_name(settings.mixed_precision, on_gpu)
    if name:
        keras.mixed_precision.set_global_policy(name)
    return keras.mixed_precision.global_policy().name


def with_compute_policy(model: Any) -> Any:
    """A loaded model that computes under the global mixed policy (``SLIDEMAP_MIXED_PRECISION``).

    A saved Keras model keeps the float32 policy each layer was saved with, whatever the global
    policy, so the setting alone never reached inference. Here the model is rebuilt from its config
    with every layer under the mixed policy (weights stay float32; compute in bfloat16 on a CPU with
    bfloat16 units, float16 on a GPU) and given the same weights. Under float32 the model is returned
    as it is. BENCHMARKS.md ("Mixed precision vs float32") has the speed and the agreement.
    """
    import keras

    policy = keras.mixed_precision.global_policy()
    if policy.compute_dtype == "float32":
        return model

    def patch(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("class_name") == "DTypePolicy" and isinstance(node.get("config"), dict):
                return {**node, "class_name": "DTypePolicy", "config": {**node["config"], "name": policy.name}}
            return {k: patch(v) for k, v in node.items()}
        if isinstance(node, list):
            return [patch(v) for v in node]
        return node

    rebuilt = model.__class__.from_config(patch(model.get_config()))
    rebuilt.set_weights(model.get_weights())
    return rebuilt


# ---- what is in use --------------------------------------------------------------------------------


def tf_distributions() -> list[str]:
    """Installed TensorFlow distributions (``tensorflow``, ``tensorflow-cpu``...): more than one is broken."""
    from importlib import metadata

    found = []
    for dist in ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-macos"):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return found


def driver_gpus() -> int:
    """NVIDIA GPUs the kernel driver knows, whatever TensorFlow sees (0 without the driver)."""
    root = "/proc/driver/nvidia/gpus"
    try:
        return len(os.listdir(root))
    except OSError:
        return 0


@dataclass(frozen=True)
class DeviceSummary:
    """The device TensorFlow actually runs ops on, and how it was set up (``slidemap status --json``: ``device``)."""

    device: str  # "GPU" | "CPU": where a test op was placed
    placement: str  # TensorFlow's full device name of that op
    gpus: list[str]  # physical GPUs TensorFlow uses
    gpu_names: list[str]  # their model names (e.g. "NVIDIA H100 80GB HBM3")
    tensorflow: str
    distributions: list[str]  # installed TensorFlow wheels
    cuda_build: bool
    cuda_version: str | None
    cudnn_version: str | None
    memory: str  # "growth" | "cap <n> MiB" | "no GPU"
    xla: dict[str, Any]  # {"setting": ..., "fit": bool, "inference": bool}
    mixed_precision: str  # Keras' global dtype policy
    driver_gpus: int
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_info() -> DeviceSummary:
    """Place a small op and report where it ran, with the build and the settings in force."""
    tf = configure_tensorflow()
    assert _state is not None
    placement = (tf.constant([1.0]) + 1.0).device
    device = "GPU" if ":GPU:" in placement.upper() else "CPU"
    names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        if gpu.name in _state.gpus:
            names.append(str(tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)))
    build = tf.sysconfig.get_build_info()
    dists = tf_distributions()
    warnings = []
    if len(dists) > 1:
        warnings.append(f"several TensorFlow wheels share one `tensorflow/` folder ({', '.join(dists)}); "
                        "reinstall one flavour with scripts/setup.sh")
    n_driver = driver_gpus()
    if n_driver and device == "CPU" and _state.settings.device != "cpu":
        warnings.append(f"{n_driver} NVIDIA GPU(s) present but TensorFlow runs on the CPU "
                        f"({', '.join(dists) or 'unknown build'}, CUDA build {bool(build.get('is_cuda_build'))}); "
                        "install the GPU flavour: SLIDEMAP_TF=gpu bash scripts/setup.sh")
    policy = _policy(_state.settings.xla, device == "GPU")
    return DeviceSummary(
        device=device, placement=placement, gpus=list(_state.gpus), gpu_names=names, tensorflow=tf.__version__,
        distributions=dists, cuda_build=bool(build.get("is_cuda_build")), cuda_version=build.get("cuda_version"),
        cudnn_version=build.get("cudnn_version"), memory=_state.memory,
        xla={"setting": _state.settings.xla, **policy}, mixed_precision=_state.mixed_policy,
        driver_gpus=n_driver, warnings=warnings,
    )


def device_summary() -> dict[str, Any]:
    """:func:`device_info` as a JSON-ready dict (keys ``device``, ``gpus``, ``tensorflow``, ...)."""
    return device_info().to_dict()


def on_gpu() -> bool:
    configure_tensorflow()
    assert _state is not None
    return bool(_state.gpus)


# ---- batch size from memory ------------------------------------------------------------------------


Shape = tuple[int, ...]


def _input_shapes(model: Any, sample_shape: Shape | Sequence[Shape] | None) -> list[Shape]:
    """Per-sample shapes of each model input (``sample_shape`` fills free sides)."""
    declared = model.input_shape if isinstance(model.input_shape, list) else [model.input_shape]
    if sample_shape is None:
        shapes = [tuple(d[1:]) for d in declared]
    elif sample_shape and isinstance(sample_shape[0], (tuple, list)):
        shapes = [tuple(s) for s in sample_shape]  # type: ignore[union-attr]
    else:
        shapes = [tuple(sample_shape)]  # type: ignore[arg-type]
    if len(shapes) != len(declared) or any(d is None for shape in shapes for d in shape):
        raise ValueError(f"the model's inputs {model.input_shape} have free sides: give sample_shape (one per input)")
    return shapes


def activation_bytes_per_sample(model: Any, sample_shape: Shape | Sequence[Shape] | None = None) -> int:
    """Bytes of every intermediate tensor one more sample adds to a forward pass of ``model``.

    Traced, not run: the graph for batches of 1 and 2 is built and the sizes of all float tensors
    are summed; their difference is per-sample (the weights cancel). ``sample_shape`` is needed
    when an input has free spatial sides (the dense susceptibility model); for several inputs, one
    shape per input.
    """
    tf = configure_tensorflow()
    shapes = _input_shapes(model, sample_shape)
    key = tuple(shapes)
    cache = model.__dict__.setdefault("_slidemap_activation_bytes", {})
    if key in cache:
        return cache[key]
    totals = []
    for batch in (1, 2):
        specs = [tf.TensorSpec((batch, *shape), tf.float32) for shape in shapes]
        fn = tf.function(lambda *x: model(list(x) if len(x) > 1 else x[0], training=False))
        graph = fn.get_concrete_function(*specs).graph
        total = 0
        for op in graph.get_operations():
            for out in op.outputs:
                if out.dtype.is_floating and out.shape.is_fully_defined():
                    total += out.shape.num_elements() * out.dtype.size
        totals.append(total)
    per_sample = max(1, totals[1] - totals[0])
    cache[key] = per_sample
    return per_sample


def free_memory_bytes(gpu: bool | None = None) -> int | None:
    """Free memory of the device inference runs on: the first visible GPU (NVML) or the host (psutil)."""
    gpu = on_gpu() if gpu is None else gpu
    if not gpu:
        import psutil

        return int(psutil.virtual_memory().available)
    assert _state is not None
    if _state.settings.gpu_memory_mb is not None:
        return _state.settings.gpu_memory_mb * 2**20
    try:
        import pynvml  # nvidia-ml-py, part of the gpu extra
    except ImportError:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    try:
        pynvml.nvmlInit()
        try:
            index = int(visible) if visible.isdigit() else 0
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).free)
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError as exc:
        log.warning("free GPU memory unknown (NVML: %s); batch sizes fall back on out-of-memory retries", exc)
        return None


def batch_size_for(
    model: Any,
    sample_shape: Shape | Sequence[Shape] | None = None,
    *,
    max_batch: int | None = None,
    free_bytes: int | None = None,
    gpu: bool | None = None,
) -> int:
    """The largest batch (at most ``max_batch``, default 8 on a CPU, 64 on a GPU) whose activations
    take at most half the device's free memory; 1 at least. Unknown free memory: ``max_batch``,
    and :class:`BatchPredictor`'s out-of-memory fallback finds the size that fits."""
    gpu = on_gpu() if gpu is None else gpu
    cap = int(max_batch or DEFAULT_MAX_BATCH["GPU" if gpu else "CPU"])
    free = free_memory_bytes(gpu) if free_bytes is None else free_bytes
    if free is None:
        return max(1, cap)
    per_sample = activation_bytes_per_sample(model, sample_shape)
    return int(max(1, min(cap, (free * MEMORY_SHARE) // per_sample)))


# ---- batched inference -----------------------------------------------------------------------------


class OutOfMemory(SlidemapError):
    """Even one sample does not fit in the device's memory."""


def is_out_of_memory(exc: BaseException) -> bool:
    """TensorFlow's out-of-memory errors (XLA reports them as internal errors), and numpy's."""
    if isinstance(exc, MemoryError):
        return True
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return False
    if isinstance(exc, tf.errors.ResourceExhaustedError):
        return True
    text = str(exc)
    return isinstance(exc, tf.errors.OpError) and ("RESOURCE_EXHAUSTED" in text or "Out of memory" in text
                                                    or "OOM when allocating" in text)


Inputs = np.ndarray | Sequence[np.ndarray]  # one array, or one per model input (same first axis)


def _count(inputs: Inputs) -> int:
    return len(inputs) if isinstance(inputs, np.ndarray) else len(inputs[0])


def _take(inputs: Inputs, start: int, stop: int, size: int | None) -> Inputs:
    """Samples ``start:stop``, zero-padded to ``size`` samples when given."""

    def one(a: np.ndarray) -> np.ndarray:
        part = a[start:stop]
        if size is not None and len(part) < size:
            part = np.concatenate([part, np.zeros((size - len(part), *part.shape[1:]), dtype=part.dtype)])
        return part

    return one(inputs) if isinstance(inputs, np.ndarray) else [one(a) for a in inputs]


def run_in_batches(
    run: Callable[[Any], np.ndarray],
    inputs: Inputs,
    batch_size: int,
    *,
    pad: bool = False,
    on_shrink: Callable[[int], None] | None = None,
) -> np.ndarray:
    """``run`` over ``inputs`` (an array, or a list of arrays for a model with several inputs) in
    batches of ``batch_size``, outputs concatenated.

    ``pad``: the last batch is zero-padded to ``batch_size`` (and the padding's outputs dropped), so
    ``run`` only ever sees one batch shape. On an out-of-memory error the batch is halved and the
    same samples retried; ``on_shrink(new_size)`` is told. One sample that does not fit raises
    :class:`OutOfMemory`.
    """
    inputs = np.asarray(inputs) if not isinstance(inputs, (list, tuple)) else [np.asarray(a) for a in inputs]
    total = _count(inputs)
    if total == 0:
        return np.zeros((0,), dtype=np.float32)
    size = max(1, int(batch_size))
    outs = []
    i = 0
    while i < total:
        n = min(size, total - i)
        chunk = _take(inputs, i, i + n, size if pad else None)
        try:
            out = np.asarray(run(chunk))[:n]
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if size == 1:
                raise OutOfMemory("one sample does not fit in the device's memory "
                                  "(free it, or set SLIDEMAP_DEVICE=cpu)") from exc
            log.warning("out of memory at batch %d; retrying with batch %d", size, max(1, size // 2))
            size = max(1, size // 2)
            if on_shrink is not None:
                on_shrink(size)
            continue
        outs.append(out)
        i += n
    return np.concatenate(outs, axis=0)


class BatchPredictor:
    """``numpy -> numpy`` inference of a Keras model, in batches that fit the device.

    - batch size: ``batch_size`` or :func:`batch_size_for` (the model's activations vs free memory);
    - XLA per :func:`xla_policy` (``xla`` overrides): with XLA the last batch is zero-padded so each
      input shape compiles once; without, one traced function takes any batch size;
    - out of memory: the batch is halved and kept halved for later calls;
    - thread-safe: one call at a time per model (Keras models are not re-entrant).
    Output: float32, the model's output with the batch axis first.
    """

    def __init__(
        self,
        model: Any,
        batch_size: int | None = None,
        *,
        sample_shape: Shape | Sequence[Shape] | None = None,
        max_batch: int | None = None,
        xla: bool | None = None,
    ) -> None:
        tf = configure_tensorflow()
        self.model = model
        self.xla = xla_policy()["inference"] if xla is None else bool(xla)
        self.batch_size = int(batch_size or batch_size_for(model, sample_shape, max_batch=max_batch))
        self._lock = threading.Lock()
        declared = model.input_shape if isinstance(model.input_shape, list) else [model.input_shape]
        self._several = isinstance(model.input_shape, list)

        def forward(*x: Any) -> Any:
            return model(list(x) if self._several else x[0], training=False)

        if self.xla:
            self._fn = tf.function(forward, jit_compile=True)
        else:
            specs = [tf.TensorSpec([None, *shape[1:]], tf.float32) for shape in declared]
            self._fn = tf.function(forward, input_signature=specs, reduce_retracing=True)
        self._tf = tf

    def _shrink(self, size: int) -> None:
        self.batch_size = size

    def _run(self, x: Inputs) -> np.ndarray:
        parts = x if self._several else [x]
        out = self._fn(*(self._tf.convert_to_tensor(a, self._tf.float32) for a in parts))
        return np.asarray(out, dtype=np.float32)

    def __call__(self, inputs: Inputs) -> np.ndarray:
        """``inputs``: one float32 array, or one per model input (the same samples along the first axis)."""
        if self._several:
            inputs = [np.asarray(a, dtype=np.float32) for a in inputs]
        else:
            inputs = np.asarray(inputs, dtype=np.float32)
        with self._lock:
            return run_in_batches(self._run, inputs, self.batch_size, pad=self.xla, on_shrink=self._shrink)


# ---- bounded model cache ---------------------------------------------------------------------------

V = TypeVar("V")


class ModelCache(Generic[V]):
    """Loaded models by key (folder, version), least recently used dropped past ``max_items``.

    Without a bound every model version a client pins stays loaded (in GPU memory on a GPU);
    ``SLIDEMAP_MODEL_CACHE`` overrides the default size.
    """

    def __init__(self, max_items: int | None = None) -> None:
        env = os.environ.get("SLIDEMAP_MODEL_CACHE", "").strip()
        self.max_items = max(1, int(max_items or (int(env) if env.isdigit() else 4)))
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_load(self, key: Hashable, load: Callable[[], V]) -> V:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = load()  # outside the lock: loading takes seconds and other keys may be served meanwhile
        with self._lock:
            if key in self._items:  # another thread loaded it first: keep one
                self._items.move_to_end(key)
                return self._items[key]
            self._items[key] = value
            while len(self._items) > self.max_items:
                evicted, _ = self._items.popitem(last=False)
                log.info("model cache full (%d): dropped %s", self.max_items, evicted)
            return value

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def keys(self) -> list[Hashable]:
        """The keys held, least recently used first."""
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def compiled_predict(model: Any) -> Any:
    """``numpy -> numpy`` inference traced once for any batch (and, for the fast form, any block)
    size: Keras' ``predict_on_batch`` retraces for every new input shape (e.g. the last batch).
    A model with several inputs takes a list of arrays."""
    cached = getattr(model, "_slidemap_predict", None)
    if cached is not None:
        return cached
    tf = configure_tensorflow()
    specs = [tf.TensorSpec([None, *t.shape[1:]], tf.float32) for t in model.inputs]
    if len(specs) == 1:
        fn = tf.function(lambda x: model(x, training=False), input_signature=specs, reduce_retracing=True)

        def predict(x: Any) -> np.ndarray:
            return fn(tf.convert_to_tensor(x, tf.float32)).numpy()
    else:
        fn = tf.function(lambda *xs: model(list(xs), training=False), input_signature=specs, reduce_retracing=True)

        def predict(x: Any) -> np.ndarray:
            return fn(*[tf.convert_to_tensor(a, tf.float32) for a in x]).numpy()

    model._slidemap_predict = predict
    return predict
