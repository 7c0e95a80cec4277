"""Metrics I/O: one JSON line per write in `workdir/metrics.jsonl`, TensorBoard events in `workdir/tb`.

A record is `{"step": int, "prefix": str, "wall_time": float, <name>: value, ...}` (flat, so that
`jq`/pandas read it directly; values go through `report.to_jsonable`, so a non-finite value is
written as null, strict JSON, and is left out of TensorBoard). Only process 0 writes by default:
on multi-host runs every process
computes the same (global) metrics, and one writer per workdir keeps the files consistent.
After a restart the replayed steps are appended again; `read_metrics` keeps the last record per
(prefix, step), which is what a resumed run computed.
"""

from __future__ import annotations

import json
import numbers
import os
import time

import jax
from matplotlib.figure import Figure
from tensorboardX import SummaryWriter

from mdm_jax import report

__all__ = ["MetricsWriter", "read_metrics", "plot_loss_curve"]

_RESERVED = ("step", "prefix", "wall_time")


class MetricsWriter:
    """`.write(step, metrics, prefix)` -> metrics.jsonl + TensorBoard scalars `prefix/name`."""

    def __init__(self, workdir, *, enabled: bool | None = None):
        self.workdir = os.fspath(workdir)
        self.enabled = jax.process_index() == 0 if enabled is None else bool(enabled)
        self.path = os.path.join(self.workdir, "metrics.jsonl")
        self._tb = None
        if self.enabled:
            os.makedirs(self.workdir, exist_ok=True)
            self._tb = SummaryWriter(os.path.join(self.workdir, "tb"))

    def write(self, step: int, metrics: dict, prefix: str = "train") -> None:
        if not self.enabled:
            return
        values = report.to_jsonable(dict(metrics))
        clash = [k for k in values if k in _RESERVED]
        if clash:
            raise ValueError(f"metric names {clash} are reserved in metrics.jsonl; rename them")
        record = {"step": int(step), "prefix": prefix, "wall_time": time.time(), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in values.items():
            if isinstance(v, numbers.Real) and not isinstance(v, bool):
                self._tb.add_scalar(f"{prefix}/{k}", v, int(step))
        # Flushing per write: metrics are logged every few steps, and a crash must not lose them.
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_metrics(workdir, prefix: str | None = None) -> list[dict]:
    """Records of metrics.jsonl sorted by step, the last one per (prefix, step) (see module doc)."""
    path = os.path.join(os.fspath(workdir), "metrics.jsonl")
    latest = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                if prefix is None or r["prefix"] == prefix:
                    latest[(r["prefix"], r["step"])] = r
    return sorted(latest.values(), key=lambda r: (r["step"], r["prefix"]))


def _series(records, key):
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), numbers.Real)]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_loss_curve(workdir, *, train_keys=("bits_per_token", "loss"), eval_keys=("bits_per_token",)) -> str:
    """Writes `workdir/loss_curve.png`: training loss and validation bits/token against step.

    The first of `train_keys` present in the train records is plotted (bits/token when the
    training loop logs it, so that train and eval share one axis), and likewise `eval_keys`.
    """
    # A bare Figure needs no backend: no display on servers, and no global backend switch that
    # would stop a notebook from showing its own plots after training.
    records = read_metrics(workdir)
    train = [r for r in records if r["prefix"] == "train"]
    evals = [r for r in records if r["prefix"] == "eval"]
    fig = Figure(figsize=(6.4, 4.0), dpi=120)
    ax = fig.subplots()
    plotted = []
    curves = ((train, train_keys, "train", "-"), (evals, eval_keys, "validation", "o-"))
    for recs, keys, label, style in curves:
        for key in keys:
            xs, ys = _series(recs, key)
            if xs:
                ax.plot(xs, ys, style, label=f"{label} {key}", markersize=3)
                plotted.append(key)
                break
    if not plotted:
        raise ValueError(
            f"{workdir}/metrics.jsonl has no train {train_keys} or eval {eval_keys} values to plot"
        )
    ax.set_xlabel("step")
    ax.set_ylabel("bits/token" if all("bits" in k for k in plotted) else "loss / bits per token")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(os.path.basename(os.path.normpath(os.fspath(workdir))))
    fig.tight_layout()
    out = os.path.join(os.fspath(workdir), "loss_curve.png")
    fig.savefig(out)
    return out
