"""Starting or joining Ray, quietly; optionally in the background while the caller reads its inputs."""

from __future__ import annotations

import atexit
import logging
import os
import queue
import signal
import sys
import threading
import time
from concurrent.futures import Future

__all__ = ["init_ray", "local_ray_starting", "release_ray", "resolve_address", "wait_for_ray"]

log = logging.getLogger("neuronscan")

# A start begun with ``init_ray(background=True)``: its Future, when it was requested, and whether it
# starts an embedded Ray (no cluster address).
_pending: tuple[Future, float, bool] | None = None
_pending_lock = threading.Lock()
# Seconds the last start took (from the request to Ray being up), whoever started it.
_last_start_s: float | None = None
_starter: queue.Queue | None = None
# Whether init_ray started (or joined) the Ray in use, so that release_ray may stop it.
_ours = False


def resolve_address(address: str | None) -> str | None:
    """The cluster to join: an explicit address, else ``RAY_ADDRESS``, else None (start a local Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    progress: bool | None = None,
    background: bool = False,
) -> dict | Future:
    """Join a cluster or start an embedded Ray sized to this machine; reuse one already running.

    Args:
        background: start Ray on a helper thread and return at once with a ``Future`` of the dict, so the
            caller can read its inputs meanwhile; the score stage waits for it (`wait_for_ray`) before it
            dispatches. A later ``init_ray`` call waits for that start instead of starting another.

    Returns:
        A small dict describing the Ray in use (for run.json and the terminal), or its ``Future``.
    """
    global _pending
    kwargs = dict(address=address, num_cpus=num_cpus, object_store_memory=object_store_memory, progress=progress)
    if background:
        with _pending_lock:
            if _pending is not None and not (_pending[0].done() and _pending[0].exception() is not None):
                return _pending[0]
            future: Future = Future()
            ray = sys.modules.get("ray")  # importing Ray takes ~1 s: the helper thread does it when it is not loaded
            if ray is not None and ray.is_initialized():
                future.set_result(_describe(address, progress))
                return future
            _quiet_thread_warning()
            _pending = (future, time.perf_counter(), resolve_address(address) is None)
            _start_thread().put((future, kwargs))
        return future
    if _pending is not None:
        info = wait_for_ray()["info"]
        if info is not None:
            return info
    return _start(**kwargs)


def local_ray_starting() -> Future | None:
    """The background start of an embedded Ray (`init_ray` with ``background=True``, no cluster address)
    while it is still under way; None otherwise."""
    pending = _pending
    if pending is None or not pending[2] or pending[0].done():
        return None
    return pending[0]


def wait_for_ray() -> dict:
    """Wait for a Ray start begun in the background, if any.

    Returns:
        ``{"info": the init_ray dict or None (no background start), "start_s": seconds that start took
        (None when unknown), "wait_s": seconds this call waited}``.

    Raises:
        Whatever starting Ray raised.
    """
    global _pending
    t0 = time.perf_counter()
    pending = _pending
    if pending is None:
        return {"info": None, "start_s": _last_start_s, "wait_s": 0.0}
    info = pending[0].result()
    with _pending_lock:
        if _pending is pending:
            _pending = None
    return {"info": info, "start_s": _last_start_s, "wait_s": time.perf_counter() - t0}


def release_ray() -> threading.Thread | None:
    """Stop the Ray that `init_ray` started (or disconnect from the cluster it joined), on a helper thread.

    For a command that is done with Ray before it is done: stopping an embedded Ray takes ~1.5 s on 2
    cores (Ray's exit hook sleeps 0.5 s, then waits for each of its processes), which then overlaps the
    command's last steps instead of delaying its exit. A start still under way in the background is let
    finish first. Nothing held from the object store may be used afterwards (arrays returned by
    ``ray.get`` are views of it). A Ray that this module did not start (``ray.init`` called elsewhere) is
    left alone.

    Returns:
        The thread doing it (the interpreter waits for it at exit), or None when there is nothing to stop.
    """
    if _pending is None and not _ours:
        return None

    def stop() -> None:
        global _ours
        try:
            wait_for_ray()
        except BaseException:  # noqa: BLE001 - a failed start leaves nothing to stop
            return
        ray = sys.modules.get("ray")
        if _ours and ray is not None and ray.is_initialized():
            _ours = False
            ray.shutdown()

    thread = threading.Thread(target=stop, name="neuronscan-ray-stop")
    thread.start()
    return thread


def _start(*, address, num_cpus, object_store_memory, progress, requested: float | None = None) -> dict:
    global _last_start_s, _ours
    import ray

    t0 = time.perf_counter() if requested is None else requested
    address = resolve_address(address)
    if not ray.is_initialized():
        common = dict(logging_level=logging.WARNING, log_to_driver=True, configure_logging=True)
        if address:
            ray.init(address=address, **common)
        else:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(
                num_cpus=num_cpus or os.cpu_count(),
                object_store_memory=object_store_memory,
                include_dashboard=False,
                **common,
            )
        _last_start_s = time.perf_counter() - t0
        _ours = True
    return _describe(address, progress)


def _describe(address: str | None, progress: bool | None) -> dict:
    import ray
    from ray.data import DataContext

    address = resolve_address(address)
    ctx = DataContext.get_current()
    show = sys.stderr.isatty() if progress is None else progress
    if not show:
        # neuronscan prints its own progress lines; keep Ray Data's per-dataset chatter out of the way.
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx.enable_progress_bars = show
    ctx.print_on_execution_start = False
    try:
        ctx.enable_operator_progress_bars = show
    except AttributeError:  # older Ray
        pass
    resources = ray.cluster_resources()
    return {
        "address": address or "local",
        "cpus": resources.get("CPU", 0.0),
        "gpus": resources.get("GPU", 0.0),
        "nodes": len(ray.nodes()),
    }


def _start_thread() -> queue.Queue:
    """The one thread that starts Ray in the background; it lives as long as the process.

    It must not exit: the processes of an embedded Ray are started with ``PR_SET_PDEATHSIG``, which
    kills them when the *thread* that started them ends, not the process.
    """
    global _starter
    if _starter is None:
        _starter = queue.Queue()

        def serve(requests: queue.Queue) -> None:
            import ray  # noqa: F401 - Ray registers its exit hook (shutdown) on import; ours, next, runs first

            atexit.register(_finish_pending_start)
            while True:
                future, kwargs = requests.get()
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(_start(**kwargs, requested=_pending[1] if _pending else None))
                except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the start
                    future.set_exception(exc)

        threading.Thread(target=serve, args=(_starter,), name="neuronscan-ray-start", daemon=True).start()
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
            signal.SIG_DFL, None
        ):
            # What ray.init does on the main thread: SIGTERM exits through the exit hooks (Ray shuts down).
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
    return _starter


def _finish_pending_start() -> None:
    """At exit, let a background start finish, so that Ray's exit hook (which runs next) stops it whole."""
    pending = _pending
    if pending is not None:
        try:
            pending[0].result(timeout=120)
        except BaseException:  # noqa: BLE001 - exiting anyway
            pass


class _NotMainThread(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "current thread is not the main thread" not in record.getMessage()


def _quiet_thread_warning() -> None:
    """Ray warns that it sets no SIGTERM handler off the main thread; `_start_thread` sets one instead."""
    logger = logging.getLogger("ray._private.worker")
    if not any(isinstance(f, _NotMainThread) for f in logger.filters):
        logger.addFilter(_NotMainThread())
