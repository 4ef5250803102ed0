"""Thread defaults: cores divided by the job's local processes; an inherited default is recomputed."""
import os
import subprocess
import sys

from bort.runtime import available_cores

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
