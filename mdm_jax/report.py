"""The shared results writer of every experiment (and of the sample-quality report).

An experiment computes, then writes what it computed, then draws from what it wrote:

    from mdm_jax import report
    report.write_results(
        workdir, "precision_sweep", config=config,
        results={"float64_entropy": 4.1, ...},          # headline numbers
        tables={"sweep": rows},                         # list of flat dicts -> CSV (+ markdown table)
        notes=["evaluator: quickstart_arm workdir"])
    data = report.read_results(workdir, "precision_sweep")     # what the plots and sentences use
    report.write_summary(workdir, data, title="Sampling precision sweep", findings=[
        ("entropy_vs_steps.png", "float32 ancestral loses 0.4 nats of entropy at N=4096.")])

so that `--mode=report` can redraw the plots and summary.md from the JSON alone, and gets the
same summary text as the run did. `write(...)` does all three at once for one-off reports.

Files written into `workdir`:
- `<name>.json`: {"name", "metadata", "results", "tables", "notes"}; numpy / jax scalars and
  arrays become plain JSON, non-finite floats become null (strict JSON readers); the metadata
  carries the settings that produced the numbers (device kind, JAX version, full config);
- `<name>_<table>.csv` for every table (columns = union of the rows' keys, in first-seen order);
- `summary.md`: title, one sentence per plot (the plot embedded next to it), the tables, notes,
  and the run metadata. Findings are sentences the experiment derived from its numbers.

`save_figure(fig, workdir, filename)` writes a matplotlib figure (Agg backend, closed after
saving) and returns the file name to pass in `findings`; `log_x(ax)` is the log-scaled x axis of
every "versus N / L" plot.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import platform
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax
import jax
import numpy as np

from mdm_jax import models

__all__ = [
    "metadata",
    "device_kind",
    "to_jsonable",
    "write_json",
    "write_csv",
    "markdown_table",
    "save_figure",
    "log_x",
    "write_results",
    "read_results",
    "write_summary",
    "write",
    "fmt",
]


def device_kind() -> str:
    """e.g. 'cpu', 'NVIDIA H100 80GB HBM3', 'TPU v5 lite' (of the first device)."""
    return str(jax.devices()[0].device_kind)


def _config_dict(config) -> Any:
    if config is None:
        return None
    if hasattr(config, "to_dict"):
        return config.to_dict()
    return dict(config)


def metadata(config=None, **extra) -> dict:
    """Run metadata recorded with every result: device, software versions, time, full config."""
    meta = {
        "device_kind": device_kind(),
        "platform": jax.default_backend(),
        "num_devices": jax.device_count(),
        "num_processes": jax.process_count(),
        "jax_version": jax.__version__,
        "flax_version": flax.__version__,
        "python_version": platform.python_version(),
        "hostname": platform.node(),
        "timestamp_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
    if config is not None and "model" in config and models.family_of(config).selects_attention:
        # The attention kernel actually used (e.g. an "auto" that fell back to XLA on a GPU).
        meta["attention"] = models.attention_choice(config).as_dict()
    meta.update(extra)
    meta["config"] = _config_dict(config)
    return to_jsonable(meta)


def to_jsonable(obj: Any) -> Any:
    """Recursively converts numpy/jax values to JSON types; NaN/inf -> None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "__array__") and not isinstance(obj, (str, bytes)):
        arr = np.asarray(obj)
        return to_jsonable(arr.item()) if arr.ndim == 0 else to_jsonable(arr.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def write_json(path: str, obj: Any) -> str:
    """Writes atomically (tmp file + rename) so a crashed run never leaves half a result."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(to_jsonable(obj), f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def _columns(rows: Sequence[Mapping]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    return cols


def write_csv(path: str, rows: Sequence[Mapping]) -> str:
    rows = [to_jsonable(r) for r in rows]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_columns(rows), restval="")
        w.writeheader()
        w.writerows(rows)
    return path


def fmt(v: Any, digits: int = 4) -> str:
    """Compact number formatting for tables and sentences (4 significant digits)."""
    if v is None:
        return "n/a"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f):
            return str(f)
        return f"{f:.{digits}g}"
    return str(v)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "(no rows)\n"
    cols = list(columns) if columns else _columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def save_figure(fig, workdir: str, filename: str, dpi: int = 120) -> str:
    """Saves a matplotlib figure into workdir, closes it, returns `filename` (for findings)."""
    # Lazy: pyplot (a second of start-up and a backend choice) is only for code that draws; the
    # training loop imports this module for its JSON writer alone.
    import matplotlib.pyplot as plt

    os.makedirs(workdir, exist_ok=True)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, filename), dpi=dpi)
    plt.close(fig)
    return filename


def log_x(ax, base: int = 10) -> None:
    """A log-scaled x axis labelled at the powers of `base` only (minor labels would overlap)."""
    import matplotlib.ticker as mticker  # matplotlib loads only when a figure is drawn

    ax.set_xscale("log", base=base)
    ax.xaxis.set_minor_formatter(mticker.NullFormatter())


def write_results(
    workdir: str,
    name: str,
    *,
    config=None,
    results: Mapping | None = None,
    tables: Mapping[str, Sequence[Mapping]] | None = None,
    notes: Iterable[str] = (),
    extra_metadata: Mapping | None = None,
) -> dict[str, str]:
    """Writes <name>.json and one CSV per table (before anything is drawn); returns their paths."""
    os.makedirs(workdir, exist_ok=True)
    tables = dict(tables or {})
    meta = metadata(config, **dict(extra_metadata or {}))
    paths = {}
    for tname, rows in tables.items():
        paths[f"csv:{tname}"] = write_csv(os.path.join(workdir, f"{name}_{tname}.csv"), rows)
    paths["json"] = write_json(
        os.path.join(workdir, f"{name}.json"),
        {"name": name, "metadata": meta, "results": results or {}, "tables": tables, "notes": list(notes)},
    )
    return paths


def read_results(workdir: str, name: str) -> dict:
    """The <name>.json that `write_results` wrote into workdir."""
    path = os.path.join(workdir, f"{name}.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} does not exist: run the experiment first (--mode=experiment with --workdir={workdir})"
        )
    with open(path) as f:
        return json.load(f)


def write_summary(
    workdir: str,
    data: Mapping,
    *,
    findings: Iterable[tuple[str | None, str]] = (),
    title: str | None = None,
    summary_name: str = "summary.md",
    markdown_tables: Sequence[str] | None = None,
) -> str:
    """Writes the markdown summary of `data` (as `read_results` returns it); returns its path.

    findings: (plot file name relative to workdir or None, one-sentence finding) pairs.
    markdown_tables: names of the tables shown in the markdown (default all; long raw tables
    are better left to their CSV, which the summary then links).
    """
    name, meta = data["name"], data["metadata"]
    md = [f"# {title or name}", ""]
    findings = list(findings)
    if findings:
        md += ["## Findings", ""]
        for plot, sentence in findings:
            md.append(f"- {sentence}" + (f" (`{plot}`)" if plot else ""))
            if plot:
                md += ["", f"  ![{plot}]({plot})"]
        md.append("")
    for tname, rows in data.get("tables", {}).items():
        if markdown_tables is None or tname in markdown_tables:
            md += [f"## {tname}", "", markdown_table(rows), f"(CSV: `{name}_{tname}.csv`)", ""]
        else:
            md += [f"## {tname}", "", f"{len(rows)} rows in `{name}_{tname}.csv`.", ""]
    notes = list(data.get("notes", []))
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    md += [
        "## Run",
        "",
        f"device: {meta['device_kind']} x{meta['num_devices']} ({meta['platform']}), "
        f"jax {meta['jax_version']}, flax {meta['flax_version']}, {meta['timestamp_utc']}; "
        f"full config and metadata in `{name}.json`.",
        "",
    ]
    os.makedirs(workdir, exist_ok=True)
    summary = os.path.join(workdir, summary_name)
    with open(summary, "w") as f:
        f.write("\n".join(md))
    return summary


def write(
    workdir: str,
    name: str,
    *,
    config=None,
    results: Mapping | None = None,
    tables: Mapping[str, Sequence[Mapping]] | None = None,
    findings: Iterable[tuple[str | None, str]] = (),
    title: str | None = None,
    notes: Iterable[str] = (),
    extra_metadata: Mapping | None = None,
    summary_name: str = "summary.md",
    markdown_tables: Sequence[str] | None = None,
) -> dict[str, str]:
    """`write_results` then `write_summary` with the given findings; returns the files' paths."""
    paths = write_results(
        workdir,
        name,
        config=config,
        results=results,
        tables=tables,
        notes=notes,
        extra_metadata=extra_metadata,
    )
    paths["summary"] = write_summary(
        workdir,
        read_results(workdir, name),
        findings=findings,
        title=title,
        summary_name=summary_name,
        markdown_tables=markdown_tables,
    )
    return paths
