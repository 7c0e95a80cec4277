"""Preemption: SIGTERM or SIGINT finishes the current step, saves a checkpoint and exits with status 75.

Schedulers (SLURM, Kubernetes, TPU maintenance events) send SIGTERM some time before they kill a
job; Ctrl-C sends SIGINT. Both go the same way: the train loop asks `Watcher.should_stop(step)`
after every step; once it says yes, the loop saves that step synchronously and raises `Preempted`
(exit status `errors.EXIT_PREEMPTED` = 75). Rerunning the same command resumes from that
checkpoint, bit for bit the run that was not interrupted. A second Ctrl-C interrupts at once.

Multi-host: every process must stop at the same step, or the collective save would hang.
`jax.distributed` runs a preemption service that catches SIGTERM on any host and agrees on a
step (`Checkpointer.reached_preemption`, i.e. `multihost_utils.reached_preemption_sync_point`,
asked at every step from the same step on all hosts). Its C++ SIGTERM handler must stay in
place, so multi-process runs install no Python SIGTERM handler, and SIGINT is forwarded to the
process itself as SIGTERM, into the same agreement. Single-process runs (no service) use a flag
set by Python handlers: nothing to agree on.
"""

from __future__ import annotations

import os
import signal
import sys

# Internal: the public API cannot tell whether the preemption sync manager is running.
from jax._src import distributed as _distributed

from mdm_jax import errors


class Preempted(errors.RunStopped):
    exit_code = errors.EXIT_PREEMPTED


def _service_running() -> bool:
    """Whether jax.distributed's preemption sync manager is active in this process."""
    return getattr(_distributed.global_state, "preemption_sync_manager", None) is not None


class Watcher:
    """Context manager: installs the handlers on entry, restores the previous ones on exit.

    `should_stop(step)` is cheap (no device sync): call it after every step, on every process.
    """

    def __init__(self, checkpointer):
        self._ckpt = checkpointer
        self.signal_name: str | None = None
        self._previous: dict = {}
        self._agreed = False

    def __enter__(self):
        self._agreed = _service_running()
        wanted = {signal.SIGINT: self._on_sigint}
        if not self._agreed:
            wanted[signal.SIGTERM] = self._on_signal
        try:
            for sig, handler in wanted.items():
                self._previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. a notebook worker): no handlers, no stops
            self._previous = {}
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _on_signal(self, signum, frame):
        self.signal_name = signal.Signals(signum).name
        # A second signal of the same kind means "now": restore the default behaviour.
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
        print(
            f"\n{self.signal_name} received: finishing this step, then saving a checkpoint "
            "(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def _on_sigint(self, signum, frame):
        if self._agreed:
            self.signal_name = "SIGINT"
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.kill(os.getpid(), signal.SIGTERM)  # into jax.distributed's agreement on the step
            return
        self._on_signal(signum, frame)

    def should_stop(self, step: int) -> bool:
        if self._agreed:
            return self._ckpt.reached_preemption(step)
        return self.signal_name is not None

    def stopped(self, step: int, saved: str) -> Preempted:
        sig = self.signal_name or "SIGTERM"
        return Preempted(
            f"{sig}: stopped after step {step}, checkpoint saved in {saved}; rerun the same "
            f"command to resume (exit status {errors.EXIT_PREEMPTED})"
        )
