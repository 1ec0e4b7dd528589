"""Work off the event loop: a worker-thread call dropped when its client leaves, and the device probe."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from fastapi import Request

from slidemap.compute.maps.blocks import short_error

T = TypeVar("T")


async def run_cancellable(request: Request, fn: Callable[[threading.Event], T]) -> T:
    """Run ``fn(cancel)`` in a worker thread; ``cancel`` is set when the client disconnects, so
    queued model work nobody waits for is dropped (see ``InferenceExecutor``)."""
    cancel = threading.Event()

    async def watch() -> None:
        while not cancel.is_set():
            if await request.is_disconnected():
                cancel.set()
                return
            await anyio.sleep(0.25)

    result: Any = None
    error: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        try:
            result = await anyio.to_thread.run_sync(fn, cancel)
        except Exception as exc:  # raised below, outside the task group (not as an ExceptionGroup)
            error = exc
        finally:
            tg.cancel_scope.cancel()
    if error is not None:
        raise error
    return result


class DeviceProbe:
    """``device_summary()`` of TensorFlow, taken once in the background (importing TensorFlow takes
    seconds; /health must not)."""

    def __init__(self) -> None:
        self.result: dict[str, Any] = {"device": "unknown", "note": "not probed"}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.result = {"device": "unknown", "note": "probing (TensorFlow is loading)"}

        def probe() -> None:
            try:
                from slidemap.compute.models import runtime as inference

                self.result = inference.device_summary()
            except Exception as exc:  # noqa: BLE001 - a missing TensorFlow is reported, not fatal
                self.result = {"device": "unavailable", "note": short_error(exc)}

        self._thread = threading.Thread(target=probe, name="slidemap-device-probe", daemon=True)
        self._thread.start()
