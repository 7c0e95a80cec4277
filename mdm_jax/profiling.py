"""`train.profile_steps=(start, stop)`: a `jax.profiler` trace of train steps start .. stop - 1.

The trace lands in `workdir/profile/plugins/profile/<timestamp>/`: `<host>.xplane.pb` (TensorBoard's
profile plugin: `tensorboard --logdir WORKDIR/profile`, or XProf) and `perfetto_trace.json.gz`
(open it at https://ui.perfetto.dev). Each profiled step is wrapped in a `StepTraceAnnotation`
named "train" with its step number, so the viewers show step boundaries and per-step time.

Only process 0 traces (one trace of a multi-host run is what one inspects; every process tracing
would write one file per host into a shared workdir). Pick steps after the first one of a run or
resume (compilation) and away from eval/checkpoint steps, e.g. (10, 13). The last profiled step is
waited for before the trace stops, so its device work is in the trace.
"""

from __future__ import annotations

import contextlib
import os

import jax

__all__ = ["check_profile_steps", "StepProfiler"]


def check_profile_steps(value) -> tuple[int, int] | None:
    """(start, stop) of a valid `train.profile_steps`, None for () (no profiling); else ValueError."""
    if value is None or tuple(value) == ():
        return None
    value = tuple(value)
    if (
        len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or not 0 <= value[0] < value[1]
    ):
        raise ValueError(
            f"train.profile_steps={value!r} must be () or (start, stop) with integers "
            "0 <= start < stop, e.g. --config.train.profile_steps=10,13 traces steps 10-12"
        )
    return value


class StepProfiler:
    """Starts a trace when the loop reaches step `start`, stops it after step `stop - 1`.

        profiler = StepProfiler(workdir, config.train.profile_steps)
        with profiler.step(step):               # step = index of the step about to run
            state, metrics = train_step(...)
        profiler.step_done(step + 1, metrics)   # waits for the last profiled step, stops
        ...
        profiler.close()                        # stops a trace left open (run ended early)

    A resumed run that starts inside the window traces the remaining steps of it.
    """

    def __init__(self, workdir, profile_steps, *, enabled: bool | None = None):
        self.window = check_profile_steps(profile_steps)
        lead = jax.process_index() == 0 if enabled is None else bool(enabled)
        self.enabled = lead and self.window is not None
        self.log_dir = os.path.join(os.fspath(workdir), "profile")
        self.active = False

    @contextlib.contextmanager
    def step(self, step: int):
        if self.enabled and not self.active and self.window[0] <= step < self.window[1]:
            jax.profiler.start_trace(self.log_dir, create_perfetto_trace=True)
            self.active = True
        if self.active:
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                yield
        else:
            yield

    def step_done(self, steps_done: int, outputs=None) -> None:
        if self.active and steps_done >= self.window[1]:
            jax.block_until_ready(outputs)
            self._stop()

    def close(self) -> None:
        if self.active:
            self._stop()

    def _stop(self):
        jax.profiler.stop_trace()
        self.active = False
