"""Thread defaults: cores divided by the job's local processes; an inherited default is recomputed."""
import os
import subprocess
import sys
import time

from bort.runtime import available_cores, process_alive, process_descendants

from helpers import ROOT


def threads_in_child(**env_changes):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "BORT_THREADS_DEFAULTED", "HOROVOD_LOCAL_SIZE")}
    env.update(env_changes)
    code = "import os, bort.runtime as r; r.configure_threads(); print(os.environ['OMP_NUM_THREADS'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_default_is_all_available_cores():
    assert threads_in_child() == available_cores()


def test_horovod_ranks_share_the_cores():
    assert threads_in_child(HOROVOD_LOCAL_SIZE=str(2 * available_cores())) == 1
    assert threads_in_child(HOROVOD_LOCAL_SIZE="1") == available_cores()


def test_inherited_default_is_recomputed_but_a_user_value_is_kept():
    cores = available_cores()
    # A parent that imported bort exported its own default: a rank of a 2-process job must not take it.
    inherited = threads_in_child(OMP_NUM_THREADS=str(cores), BORT_THREADS_DEFAULTED=str(cores),
                                 HOROVOD_LOCAL_SIZE=str(2 * cores))
    assert inherited == 1
    assert threads_in_child(OMP_NUM_THREADS="7", BORT_THREADS_DEFAULTED=str(cores)) == 7
    assert threads_in_child(OMP_NUM_THREADS="3") == 3


def test_process_descendants_finds_grandchildren_and_process_alive_sees_them_go():
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print(child.pid, flush=True)\ntime.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    grandchild = None
    try:
        grandchild = int(proc.stdout.readline())
        assert process_descendants(proc.pid) == [grandchild]
        assert process_alive(proc.pid) and process_alive(grandchild)
        assert proc.pid in process_descendants(os.getpid())
    finally:
        for pid in (grandchild, proc.pid):
            if pid is not None:
                os.kill(pid, 9)
        proc.wait()
    assert not process_alive(proc.pid)  # reaped
    for _ in range(100):  # the grandchild, orphaned, is reaped by init
        if not process_alive(grandchild):
            break
        time.sleep(0.05)
    assert not process_alive(grandchild)
