"""Starting or joining Ray, quietly; optionally in the background while the caller reads its inputs.

``init_ray(background=True)`` returns at once with a ``Future``. Joining a cluster begins at once; an
embedded Ray (no address) begins when the score stage has seen its inputs and asks for it
(`begin_ray_start`), or when anything waits for it, so that inputs the driver scores alone in less time
than Ray takes to start (~5 s on 2 cores, and ~1.5 s to stop) never start one.
"""

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
from dataclasses import dataclass, field

__all__ = [
    "begin_ray_start",
    "keep_freed_memory",
    "init_ray",
    "local_ray_starting",
    "ray_start_begun",
    "release_ray",
    "resolve_address",
    "wait_for_ray",
]

log = logging.getLogger("neuronscan")

_HEAP_KEPT: list[bool] = []


def keep_freed_memory() -> bool:
    """Make this process keep the memory it frees for its next allocations (once per process; glibc only).

    numpy takes an array above glibc's mmap threshold (at most 32 MiB, dynamically) straight from the
    system and gives it back on free, so a task that allocates the same few hundred MB again and again
    pays a page fault and the kernel's zeroing on every page every time: ranking 1.28M images x 32 units
    took 0.9-1.9 s so, 0.7-0.8 s with the memory kept (``benchmarks/RESULTS.md``). Here arrays up to 1 GiB
    come from the heap and the heap is never trimmed. Returns whether the setting took (False off glibc).
    """
    if _HEAP_KEPT:
        return _HEAP_KEPT[0]
    ok = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
            ok = bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
        except (OSError, AttributeError):  # not glibc (musl has no mallopt)
            ok = False
    _HEAP_KEPT.append(ok)
    return ok


@dataclass
class _Start:
    """A start requested with ``init_ray(background=True)``."""

    kwargs: dict
    local: bool  # an embedded Ray (no cluster address)
    future: Future = field(default_factory=Future)
    begun: float | None = None  # perf_counter when the helper thread was asked to start it


_pending: _Start | None = None
_pending_lock = threading.Lock()
# Seconds the last start took (from its beginning to Ray being up), whoever started it.
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
        background: return at once with a ``Future`` of the dict; Ray starts on a helper thread while the
            caller reads its inputs (an embedded Ray once `begin_ray_start` or `wait_for_ray` is called; the
            score stage calls them). A later ``init_ray`` call waits for that start instead of starting
            another.

    Returns:
        A small dict describing the Ray in use (for run.json and the terminal), or its ``Future``.
    """
    global _pending
    kwargs = dict(address=address, num_cpus=num_cpus, object_store_memory=object_store_memory, progress=progress)
    if background:
        with _pending_lock:
            if _pending is not None and not _failed(_pending.future):
                return _pending.future
            ray = sys.modules.get("ray")  # importing Ray takes ~1 s: the helper thread does it when it is not loaded
            if ray is not None and ray.is_initialized():
                done: Future = Future()
                done.set_result(_describe(address, progress))
                return done
            _pending = _Start(kwargs, local=resolve_address(address) is None)
            start = _pending
        if not start.local:
            begin_ray_start()
        return start.future
    if _pending is not None:
        info = wait_for_ray()["info"]
        if info is not None:
            return info
    return _start(**kwargs)


def begin_ray_start() -> None:
    """Begin the start that ``init_ray(background=True)`` requested, if it has not begun (else nothing)."""
    with _pending_lock:
        start = _pending
        if start is None or start.begun is not None or start.future.done():
            return
        _quiet_thread_warning()
        start.begun = time.perf_counter()
        _start_thread().put(start)


def local_ray_starting() -> Future | None:
    """The requested background start of an embedded Ray while it is not up (begun or not); None otherwise."""
    start = _pending
    if start is None or not start.local or start.future.done():
        return None
    return start.future


def ray_start_begun() -> bool:
    """Whether a requested background start has begun (and so competes for the CPUs until Ray is up)."""
    start = _pending
    return start is not None and start.begun is not None


def wait_for_ray() -> dict:
    """Wait for a Ray start requested with ``init_ray(background=True)``, beginning it if need be.

    Returns:
        ``{"info": the init_ray dict or None (no such start), "start_s": seconds that start took (None when
        unknown), "wait_s": seconds this call waited}``.

    Raises:
        Whatever starting Ray raised.
    """
    global _pending
    t0 = time.perf_counter()
    start = _pending
    if start is None:
        return {"info": None, "start_s": _last_start_s, "wait_s": 0.0}
    begin_ray_start()
    info = start.future.result()
    with _pending_lock:
        if _pending is start:
            _pending = None
    return {"info": info, "start_s": _last_start_s, "wait_s": time.perf_counter() - t0}


def release_ray() -> threading.Thread | None:
    """Stop the Ray that `init_ray` started (or disconnect from the cluster it joined), on a helper thread.

    For a command that is done with Ray before it is done: stopping an embedded Ray takes ~1.5 s on 2
    cores (Ray's exit hook sleeps 0.5 s, then waits for each of its processes), which then overlaps the
    command's last steps instead of delaying its exit. A requested start that has not begun is dropped;
    one under way is let finish first. Nothing held from the object store may be used afterwards (arrays
    returned by ``ray.get`` are views of it). A Ray that this module did not start (``ray.init`` called
    elsewhere) is left alone.

    Returns:
        The thread doing it (the interpreter waits for it at exit), or None when there is nothing to stop.
    """
    global _pending
    with _pending_lock:
        start = _pending
        if start is not None and start.begun is None:
            start.future.cancel()  # never begun: nothing was started
            _pending = None
            start = None
    if start is None and not _ours:
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


def _failed(future: Future) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


def _start(*, address, num_cpus, object_store_memory, progress, begun: float | None = None) -> dict:
    global _last_start_s, _ours
    import ray

    t0 = time.perf_counter() if begun is None else begun
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
                start: _Start = requests.get()
                if not start.future.set_running_or_notify_cancel():
                    continue
                try:
                    start.future.set_result(_start(**start.kwargs, begun=start.begun))
                except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the start
                    start.future.set_exception(exc)

        threading.Thread(target=serve, args=(_starter,), name="neuronscan-ray-start", daemon=True).start()
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
            signal.SIG_DFL, None
        ):
            # What ray.init does on the main thread: SIGTERM exits through the exit hooks (Ray shuts down).
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
    return _starter


def _finish_pending_start() -> None:
    """At exit, let a start under way finish, so that Ray's exit hook (which runs next) stops it whole."""
    start = _pending
    if start is not None and start.begun is not None:
        try:
            start.future.result(timeout=120)
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
