"""--profile: an MXNet profiler trace of a few training steps (the original's flag).

The original profiled steps 10 to 13 into `<--profile><rank>` and then exited the program. Here the same steps
are traced (the first steps of a run shorter than 14 steps), the trace is written atomically as Chrome-tracing
JSON (open it in chrome://tracing or Perfetto) with the operator table in the log, and training goes on.
"""
import logging
import os

import bort  # noqa: F401
import mxnet as mx

log = logging.getLogger(__name__)

FIRST_STEP, NUM_STEPS = 10, 4  # the original's window: steps 10..13


def trace_path(path, rank, size):
    """The original appended the rank to the name; a single process keeps the name as given."""
    return f"{path}{rank}" if size > 1 else path


class StepProfiler:
    """Call `step_started(step)` before and `step_finished(step)` after every training step."""

    def __init__(self, path, num_steps, rank=0, size=1):
        self.path = trace_path(path, rank, size) if path else None
        first = FIRST_STEP if num_steps >= FIRST_STEP + NUM_STEPS - 1 else 1
        self.first, self.last = first, min(num_steps, first + NUM_STEPS - 1)
        self._tmp = f"{self.path}.tmp{os.getpid()}" if self.path else None
        self.written = False

    def step_started(self, step):
        if self.path and step == self.first:
            folder = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(folder, exist_ok=True)
            mx.nd.waitall()
            mx.profiler.set_config(profile_symbolic=True, profile_imperative=True, profile_memory=False,
                                   profile_api=False, aggregate_stats=True, filename=self._tmp)
            mx.profiler.set_state("run")

    def step_finished(self, step):
        if self.path and step == self.last and not self.written:
            mx.nd.waitall()
            mx.profiler.set_state("stop")
            log.info("profile of steps %d-%d:\n%s", self.first, self.last, mx.profiler.dumps(reset=True))
            mx.profiler.dump(finished=True)
            os.replace(self._tmp, self.path)
            self.written = True
            log.info("profiler trace written to %s", self.path)
