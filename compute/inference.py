"""TensorFlow device set-up and batched inference, shared by detection and susceptibility.

TensorFlow is imported lazily: the CLI and the server start without it, and importing it
here once sets GPU memory growth before any model is built (TensorFlow refuses to change
that after a GPU has been initialised).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
_lock = threading.Lock()
_configured = False


def configure_tensorflow() -> Any:
    """Import TensorFlow once, with memory growth on every GPU; return the module."""
    global _configured
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    with _lock:
        if not _configured:
            for gpu in tf.config.list_physical_devices("GPU"):
                try:
                    tf.config.experimental.set_memory_growth(gpu, True)
                except RuntimeError as exc:  # already initialised by the caller
                    log.debug("memory growth not set on %s: %s", gpu.name, exc)
            _configured = True
    return tf


def device_summary() -> dict[str, Any]:
    """Which device inference runs on: ``{"device": "GPU"|"CPU", "gpus": [...]}``."""
    tf = configure_tensorflow()
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return {"device": "GPU" if gpus else "CPU", "gpus": gpus, "tensorflow": tf.__version__}


def predict_batched(
    predict_fn: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, batch_size: int
) -> np.ndarray:
    """Run ``predict_fn`` over ``inputs`` in batches of ``batch_size`` and concatenate."""
    if len(inputs) == 0:
        return np.zeros((0,), dtype=np.float32)
    outs = [np.asarray(predict_fn(inputs[i : i + batch_size])) for i in range(0, len(inputs), batch_size)]
    return np.concatenate(outs, axis=0)
