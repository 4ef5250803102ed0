"""Faults in a pretraining run, injected by patching from a test (the pretraining code has no test hooks).

- `killed_after(step)`: the pretraining run inside the `with` ends as if the process were killed right after
  `step`: that step's logging, checkpoint and evaluation are done, the next step never starts.
- `inf_gradient_at(*steps, value=inf)`: an inf (or NaN) in the first gradient at those steps, as a float16 overflow
  (or a diverged run) would put there.
- `checkpoint_parameters(ckpt_dir, step)`: {name: numpy array} of the student saved at `step`.

Both patches key on `bort.profiling.StepProfiler.step_started(step)`, which the loop calls at the start of
every step. For a subprocess (e.g. each rank under horovodrun), run this file in place of
run_pretraining_distillation_hvd.py with the faults in the environment: `python tests/pretrain_faults.py ARGS`
(see `main`).
"""
import contextlib
import os
import sys

from bort.pretrain.state import checkpoint_prefix
from bort.profiling import StepProfiler
from bort.train.precision import GradientStep
from bort.weights.checkpoint import read_params_file


class Killed(Exception):
    """A run stopped by `killed_after`."""


@contextlib.contextmanager
def _patched(owner, name, replacement):
    original = getattr(owner, name)
    setattr(owner, name, replacement(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextlib.contextmanager
def killed_after(last_step):
    """Kill the run inside the `with` after `last_step`; an error if it ends before reaching the next step."""
    def replacement(original):
        def step_started(self, step):
            if step > last_step:
                raise Killed(f"killed after step {last_step}")
            return original(self, step)
        return step_started

    with _patched(StepProfiler, "step_started", replacement):
        try:
            yield
        except Killed:
            return
    raise AssertionError(f"the run ended before step {last_step + 1}: nothing was killed")


@contextlib.contextmanager
def inf_gradient_at(*steps, value=float("inf")):
    """An inf (or `value`) in the first trainable parameter's gradient just before the gradient step of `steps`."""
    current = [None]

    def track(original):
        def step_started(self, step):
            current[0] = step
            return original(self, step)
        return step_started

    def inject(original):
        def call(self, *args, **kwargs):
            if current[0] in steps:
                self.params[0].grad()[:] = value
            return original(self, *args, **kwargs)
        return call

    with _patched(StepProfiler, "step_started", track), _patched(GradientStep, "__call__", inject):
        yield


def checkpoint_parameters(ckpt_dir, step):
    """{name: numpy array} of the student parameters in the checkpoint of `step` (names as `parameters_digest`)."""
    arrays = read_params_file(checkpoint_prefix(ckpt_dir, step) + ".params")
    return {name: array.asnumpy() for name, array in arrays.items()}


def main(argv):
    """run_pretraining_distillation_hvd.py's main with faults from the environment: INF_GRAD_AT="STEP:RANK" puts an
    inf into that Horovod rank's gradient at that step; KILL_AFTER_STEP=N ends every rank as if killed after step N
    (Horovod shut down, exit 0; an error if the run ended before)."""
    import run_pretraining_distillation_hvd as cli
    from bort.errors import run_cli

    inf_step, inf_rank = (int(x) for x in os.environ.get("INF_GRAD_AT", "0:-1").split(":"))
    kill_after = int(os.environ.get("KILL_AFTER_STEP", 0))
    rank = int(os.environ.get("HOROVOD_RANK", 0))
    real_pretrain = cli.pretrain

    def pretrain(config, dist):
        with contextlib.ExitStack() as faults:
            if rank == inf_rank:
                faults.enter_context(inf_gradient_at(inf_step))
            if kill_after:
                faults.enter_context(killed_after(kill_after))
            result = real_pretrain(config, dist)
        if kill_after:  # killed_after stopped the run
            dist.shutdown()
            sys.exit(0)
        return result

    cli.pretrain = pretrain
    run_cli(cli.main)(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
