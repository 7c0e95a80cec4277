"""Reports from the earlier benchmark script's JSON (benchmarks/numerics.py, until it was replaced
by this package): docs/results/nvidia-h200/numerics.json is the H200 run of it.

That script drew with the same keys and sizes as `draws` (its --scale=s is `draws.scaled(FULL, s)`)
and saved every value these rows hold, so the caps, tail and token rows convert exactly. It did
not record jaxlib, the device count, x64 or the matmul precision, and it had no model section:
those rows are absent from the converted report (compare shows them as "-"), never guessed.
"""

from __future__ import annotations

import json

from mdm_jax.numerics import draws, report as report_lib, rows as R

__all__ = ["from_benchmark"]


def from_benchmark(path: str) -> dict:
    with open(path) as f:
        old = json.load(f)
    needed = ("platform", "device_kind", "jax", "python", "scale", "eps", "cap", "tail", "same")
    missing = [k for k in needed if k not in old]
    if missing:
        raise R.ReportError(f"{path}: not a benchmarks/numerics.py result (no {', '.join(missing)})")
    if old["eps"] != draws.EPS or set(old["cap"]) != set(draws.POLICIES):
        raise R.ReportError(
            f"{path}: made with eps={old['eps']} or other policies; it does not map onto this report's rows"
        )
    rows = {
        "env/backend": R.exact(old["platform"]),
        "env/device_kind": R.exact(old["device_kind"]),
        "env/jax": R.exact(old["jax"]),
        "env/python": R.exact(old["python"]),
    }
    rows.update({f"draws/size/{k}": R.exact(v) for k, v in draws.scaled(draws.FULL, old["scale"]).items()})
    measured = {"caps": old["cap"], "tail": old["tail"], "tokens": old["same"]}
    rows.update(report_lib.draw_rows(measured))
    report = {
        "format": R.FORMAT,
        "version": R.VERSION,
        "size": "full",
        "title": f"{old['platform']} ({old['device_kind']})",
        "rows": rows,
        "notes": {
            "converted_from": path,
            "not_recorded": "jaxlib, device count, x64, matmul precision, the model section",
        },
        "seconds": {},
    }
    R.validate(report, path)
    return report
