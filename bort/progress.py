"""Progress of a training loop that a person can read on a terminal and in a log file.

On a terminal (`stream.isatty()`) a tqdm bar, redrawn in place. Anywhere else (`horovodrun`, `nohup`, a pipe into
`tee train.log`) a redrawn bar would land in the file as `\\r`-joined fragments, so instead `report()` writes one
plain line per log interval: position, the values given, throughput and ETA, e.g.

    distillation 1200/2000000 (0.1%) | mlm_loss 6.93 kd_loss 1.2 | 3.41 step/s | elapsed 0:05:52 | ETA 6 days, 18:51:02

Between reports nothing is written. `Progress(..., enabled=False)` (ranks other than 0) writes nothing at all.
"""
import datetime
import sys
import time


def format_duration(seconds):
    """'0:05:52', '6 days, 18:51:02'; '?' when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    return str(datetime.timedelta(seconds=int(round(seconds))))


def _format_value(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """Counts units of work (`update`, or one per item of `iterable`) toward `total` and shows it (see the module
    docstring).

    total: units of the whole run (None: unknown, no percentage or ETA); initial: units already done (a resumed
    run: its ETA counts only what this process did); stream: where to write (default sys.stderr); tty: force the
    terminal (True) or the plain-line (False) form, default `stream.isatty()`."""

    def __init__(self, iterable=None, total=None, initial=0, desc="", unit="step", stream=None, enabled=True,
                 tty=None, leave=True):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.n, self.desc, self.unit = iterable, total, initial, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.started_at, self.started_n = time.time(), initial
        self.bar = None
        if enabled and (tty if tty is not None else _isatty(self.stream)):
            from tqdm import tqdm  # noqa: PLC0415

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream,
                            dynamic_ncols=True, leave=leave)

    def __iter__(self):
        """Iterate over `iterable`, counting one unit per item (as tqdm(iterable))."""
        for item in self.iterable:
            yield item
            self.update(1)

    @property
    def writes_lines(self):
        """True where report() writes plain lines (enabled, not a terminal)."""
        return self.enabled and self.bar is None

    def update(self, n=1):
        self.n += n
        if self.bar is not None:
            self.bar.update(n)

    def rate(self):
        """Units per second since this process started counting."""
        return (self.n - self.started_n) / max(time.time() - self.started_at, 1e-9)

    def eta(self):
        """Seconds left at the rate so far (None when the total or the rate is unknown)."""
        rate = self.rate()
        if self.total is None or rate <= 0:
            return None
        return max(self.total - self.n, 0) / rate

    def report(self, **values):
        """At a log interval: the terminal bar shows `values` beside it; elsewhere one plain line."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix({k: _format_value(v) for k, v in values.items()})
            return
        self.stream.write(self.line(**values) + "\n")
        self.stream.flush()

    def line(self, **values):
        """The plain line (see the module docstring)."""
        where = f"{self.n}/{self.total} ({100.0 * self.n / self.total:.1f}%)" if self.total else f"{self.n}"
        parts = [f"{self.desc} {where}".strip()]
        if values:
            parts.append(" ".join(f"{k} {_format_value(v)}" for k, v in values.items()))
        parts.append(f"{self.rate():.3g} {self.unit}/s")
        parts.append(f"elapsed {format_duration(time.time() - self.started_at)}")
        if self.total:
            parts.append(f"ETA {format_duration(self.eta())}")
        return " | ".join(parts)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
