"""Process-level settings that must be fixed before MXNet is imported, the process tree read from /proc, and
child processes that die with their parent."""
import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def local_processes():
    """How many processes of this job share the machine (Horovod/MPI set it for each rank)."""
    for key in ("HOROVOD_LOCAL_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"):
        if os.environ.get(key, "").isdigit():
            return max(1, int(os.environ[key]))
    return 1


def configure_threads(num_threads=None):
    """Set OMP_NUM_THREADS (and MXNet's CPU worker count) unless the user already did.

    The default is the cores available divided by the processes of this job on the machine, so that
    `horovodrun -np 2` on 2 cores runs 1 thread per rank instead of oversubscribing. A value this function set
    in a parent process (marked by BORT_THREADS_DEFAULTED) is inherited by children; it counts as unset and is
    recomputed, so a child rank does not take its parent's count. Returns the thread count in effect.
    Has no effect on an MXNet that is already imported.
    """
    if num_threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(num_threads)
        os.environ.pop("BORT_THREADS_DEFAULTED", None)
    current = os.environ.get("OMP_NUM_THREADS")
    if not current or current == os.environ.get("BORT_THREADS_DEFAULTED"):
        default = str(max(1, available_cores() // local_processes()))
        os.environ["OMP_NUM_THREADS"] = default
        os.environ["BORT_THREADS_DEFAULTED"] = default
    os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "1")
    return int(os.environ["OMP_NUM_THREADS"])


ENGINES = {"naive": "NaiveEngine", "threaded": "ThreadedEnginePerDevice"}


def configure_inference_engine(engine="naive"):
    """Choose MXNet's execution engine for an inference-only process; call before MXNet is imported.

    ``naive`` runs each operator synchronously on the calling thread. For one request stream that is faster:
    Bort INT8 at batch 1, length 128 went from 10.7 to 8.0 ms (2 threads, quiet machine) because the OpenMP
    team of the calling thread stays hot between operators, where the threaded engine's worker team sleeps and
    is woken per operator. Like PyTorch's (same libgomp defaults), it assumes the cores are free: on a machine
    already busy it can be many times slower, so training and shared hosts keep ``threaded``.
    An MXNET_ENGINE_TYPE the user set wins. Returns the engine type in effect; if MXNet is already imported
    nothing changes (its engine is fixed) and that engine is returned.
    """
    import sys

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {sorted(ENGINES)}, got {engine!r}")
    if "mxnet" not in sys.modules:
        os.environ.setdefault("MXNET_ENGINE_TYPE", ENGINES[engine])
    return os.environ.get("MXNET_ENGINE_TYPE", ENGINES["threaded"])


OMP_WAIT_POLICIES = ("auto", "active", "passive")


def busy_machine(cores=None):
    """True when the 1-minute load average exceeds the cores available to this process (other work is queued)."""
    try:
        return os.getloadavg()[0] > (cores or available_cores())
    except OSError:  # not available on this platform
        return False


def configure_omp_wait(policy="auto"):
    """How idle OpenMP threads wait between parallel regions; call before MXNet (or PyTorch) is imported.

    ``active`` keeps OpenMP's default: spin for a while, then sleep. That is fastest on free cores. ``passive``
    sleeps at once (OMP_WAIT_POLICY=PASSIVE). On a machine busy with other work, a spinning thread burns the time
    slice the thread it waits for needs: Bort INT8, batch 1, length 128, 2 threads, naive engine took 0.5-2.7 s per
    call spinning and 0.026 s passive at load 12-19 on 2 cores. ``auto`` picks passive when `busy_machine()`.
    An OMP_WAIT_POLICY or GOMP_SPINCOUNT the user set wins. Returns the policy in effect ("active"/"passive").
    """
    import sys

    if policy not in OMP_WAIT_POLICIES:
        raise ValueError(f"OpenMP wait policy must be one of {list(OMP_WAIT_POLICIES)}, got {policy!r}")
    user_set = "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ
    if not user_set and "mxnet" not in sys.modules and "torch" not in sys.modules:
        if policy == "passive" or (policy == "auto" and busy_machine()):
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "passive" if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE" else "active"


def _proc_stat(pid):
    """Fields of /proc/<pid>/stat after the command name (state first, parent pid second); None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()  # the name in (...) may itself hold spaces and ')'
    except (OSError, IndexError):
        return None


def process_alive(pid):
    """Linux: True while process `pid` exists and is not a zombie."""
    fields = _proc_stat(pid)
    return fields is not None and fields[0] != "Z"


def process_descendants(pid):
    """Linux: pids of all live (non-zombie) descendants of `pid`, e.g. a pool's workers or a fork server and its
    workers, read from /proc; parents before their children."""
    children = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        fields = _proc_stat(entry)
        if fields is not None and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def die_with_parent(parent_pid):
    """Linux: have the kernel kill this (child) process when its parent exits, even by `kill -9`; call it in the
    child (a pool initializer, a Popen `preexec_fn`). The signal follows the parent *thread* that started the
    child, so start children from a thread that outlives them. Elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux
        return
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
