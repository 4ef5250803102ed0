"""Worker processes for the data pipeline: an ordered map over a process pool whose workers never outlive it.

`run_in_workers(function, items, state, num_workers)` yields `function(item, **state)` in item order, with at
most 2 items per worker in flight. Workers ignore Ctrl-C (the main process handles it) and, on Linux, are
killed by the kernel when their parent dies, even by `kill -9`. Inside `sigterm_stops_workers(cleanup, message)`
a SIGTERM kills the running pool's workers, calls `cleanup()`, prints `message` and exits with 143.
"""
import collections
import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from bort.errors import BortError
from bort.runtime import die_with_parent

_FORK_UNSAFE = ("mxnet", "torch", "tensorflow", "jax")
_WORKER_STATE = {}


def _init_worker(function, state, parent_pid=None):
    die_with_parent(parent_pid)  # with a fork server the parent is the server, which exits with the main process
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _WORKER_STATE.clear()
    _WORKER_STATE.update(function=function, state=state)


def _call_in_worker(item):
    return _WORKER_STATE["function"](item, **_WORKER_STATE["state"])


class _Shutdown:
    """What the SIGTERM handler stops and cleans up: the running pool's workers, then the caller's `cleanup`."""

    pool = None
    cleanup = None
    message = ""


def _stop_workers(pool, signum):
    try:
        pids = [process.pid for process in list((getattr(pool, "_processes", None) or {}).values())]
    except RuntimeError:  # the pool's manager thread changed the table meanwhile
        pids = []
    for pid in pids:
        with contextlib.suppress(OSError, TypeError):
            os.kill(pid, signum)


def _on_sigterm(signum, frame):
    """Stop at once, like SIGTERM's default action, but without leaving workers or outputs behind. Unwinding
    with an exception instead could interrupt the pool's manager thread in the middle of a message from a
    killed worker and hang the shutdown forever."""
    if _Shutdown.pool is not None:
        _stop_workers(_Shutdown.pool, signal.SIGKILL)
    if _Shutdown.cleanup is not None:
        _Shutdown.cleanup()
    with contextlib.suppress(OSError):
        sys.stderr.write(_Shutdown.message)
        sys.stderr.flush()
    os._exit(128 + signal.SIGTERM)


@contextlib.contextmanager
def sigterm_stops_workers(cleanup, message):
    """While active, SIGTERM kills the workers, calls `cleanup()` (no arguments; it must not raise), writes
    `message` (one line, ending in a newline) to stderr and exits with 128 + SIGTERM. Only in the main thread
    (Python delivers signals there); elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _Shutdown.cleanup, _Shutdown.message = cleanup, message
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _Shutdown.cleanup, _Shutdown.message = None, ""


def mp_context():
    """fork when nothing fork-unsafe is loaded (starts in milliseconds), else a fresh interpreter per worker.

    MXNet and PyTorch start OpenMP/engine threads that a forked child inherits in a broken state, so with
    either one imported the workers come from a fork server instead.
    """
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and not any(name in sys.modules for name in _FORK_UNSAFE):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def run_in_workers(function, items, state, num_workers):
    """Yield `function(item, **state)` for each item, in order, with at most 2 items per worker in flight.

    `function` must be a module-level function (workers started by a fork server import it by name); `state`
    is sent to each worker once. With `num_workers == 1` everything runs in this process.
    """
    if num_workers == 1:
        for item in items:
            yield function(item, **state)
        return
    context = mp_context()
    parent = os.getpid() if context.get_start_method() == "fork" else None
    pool = ProcessPoolExecutor(num_workers, mp_context=context, initializer=_init_worker,
                               initargs=(function, state, parent))
    pending = collections.deque()
    _Shutdown.pool = pool
    try:
        for item in items:
            pending.append(pool.submit(_call_in_worker, item))
            if len(pending) >= 2 * num_workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool:
        raise BortError("a worker process died unexpectedly (out of memory?); try fewer --num_workers") from None
    finally:
        # Running items finish (workers ignore Ctrl-C); killing them here could hang the pool (see _on_sigterm).
        pool.shutdown(wait=True, cancel_futures=True)
        _Shutdown.pool = None
