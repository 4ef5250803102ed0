"""Process-level settings that must be fixed before MXNet is imported."""
import os


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_threads(num_threads=None):
    """Set OMP_NUM_THREADS (and MXNet's CPU worker count) unless the user already did.

    Returns the thread count in effect. Has no effect on an MXNet that is already imported.
    """
    if num_threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(num_threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(available_cores()))
    os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "1")
    return int(os.environ["OMP_NUM_THREADS"])
