"""The report format: named rows, each a measured value and the tolerance it is compared with.

A report is JSON:
    {"format": "mdm-jax numerics report", "version": 1, "size": "full" | "quick",
     "title": "...", "rows": {name: row, ...}, "seconds": {...}}
Row names are paths ("cap/float32/max", "model/owt_mdm_small/matmul=bfloat16/rel_err"). A row is
one of three kinds, and its tolerance travels with it, so `compare` needs no table of its own:
    {"kind": "exact", "value": str | bool | int | null}   differs when unequal
    {"kind": "float", "value": x, "abs": a, "rel": r, "se": s}
        differs when |x1 - x2| > max(abs, rel * max(|x1|, |x2|), 4 sqrt(se1^2 + se2^2)),
        taking the larger abs / rel of the two rows; se is a statistical standard error (0 for a
        deterministic value), so a count measured with fewer draws is allowed its noise
    {"kind": "ids", "value": [int, ...]}   token ids of fixed-key draws: shown as the fraction
        identical to the first report's, differs when any id differs
"""

from __future__ import annotations

import json
import math

__all__ = [
    "FORMAT",
    "VERSION",
    "exact",
    "number",
    "ids",
    "ReportError",
    "load",
    "validate",
    "identical_fraction",
    "differs",
    "merged",
    "tolerance_text",
]

FORMAT = "mdm-jax numerics report"
VERSION = 1
_KINDS = ("exact", "float", "ids")


class ReportError(ValueError):
    """A file that is not a numerics report, or a malformed one (the message names the file)."""


def exact(value) -> dict:
    return {"kind": "exact", "value": value}


def number(value, **tolerance) -> dict:
    """A float row; tolerance: abs=, rel=, se= (each 0 unless given)."""
    unknown = set(tolerance) - {"abs", "rel", "se"}
    if unknown:
        raise TypeError(f"rows.number: unknown tolerance {sorted(unknown)}; use abs, rel or se")
    return {
        "kind": "float",
        "value": float(value),
        **{k: float(tolerance.get(k, 0.0)) for k in ("abs", "rel", "se")},
    }


def ids(values) -> dict:
    return {"kind": "ids", "value": [int(v) for v in values]}


def load(path: str) -> dict:
    """A report read from `path` and validated; ReportError names the file and what is wrong."""
    try:
        with open(path) as f:
            report = json.load(f)
    except OSError as e:
        raise ReportError(f"{path}: cannot read it ({e.strerror})") from e
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not JSON ({e}); make it with `python -m mdm_jax.numerics report`") from e
    validate(report, path)
    return report


def validate(report, where: str = "report") -> None:
    if not isinstance(report, dict) or report.get("format") != FORMAT:
        raise ReportError(
            f"{where}: not a numerics report (its 'format' must be {FORMAT!r}); make one "
            "with `python -m mdm_jax.numerics report --out FILE`"
        )
    if report.get("version") != VERSION:
        raise ReportError(
            f"{where}: report version {report.get('version')!r}, this mdm_jax reads version {VERSION}"
        )
    rows = report.get("rows")
    if not isinstance(rows, dict) or not rows:
        raise ReportError(f"{where}: 'rows' must be a non-empty object of named rows")
    for name, row in rows.items():
        _validate_row(row, f"{where}: row {name!r}")


def _validate_row(row, where):
    if not isinstance(row, dict) or row.get("kind") not in _KINDS or "value" not in row:
        raise ReportError(f"{where} must be an object with 'kind' (one of {', '.join(_KINDS)}) and 'value'")
    value = row["value"]
    if row["kind"] == "exact" and not (value is None or isinstance(value, (str, bool, int))):
        raise ReportError(f"{where}: an exact row holds a string, boolean, integer or null, got {value!r}")
    if row["kind"] == "float":
        for key in ("value", "abs", "rel", "se"):
            x = row.get(key)
            if isinstance(x, bool) or not isinstance(x, (int, float)) or (key != "value" and not x >= 0):
                raise ReportError(
                    f"{where}: {key!r} must be a number{'' if key == 'value' else ' >= 0'}, got {x!r}"
                )
    if row["kind"] == "ids" and not (
        isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ReportError(f"{where}: an ids row holds a list of integers")


def identical_fraction(a: list, b: list) -> float:
    """Fraction of positions with equal ids (a length mismatch counts the missing ids as different)."""
    n = max(len(a), len(b))
    return 1.0 if n == 0 else sum(x == y for x, y in zip(a, b)) / n


def differs(a: dict, b: dict) -> bool:
    """Whether row b differs from row a beyond the rows' tolerance (rows of one name)."""
    if a["kind"] != b["kind"]:
        return True
    if a["kind"] == "ids":
        return identical_fraction(a["value"], b["value"]) < 1.0
    if a["kind"] == "exact":
        return a["value"] != b["value"]
    x, y = a["value"], b["value"]
    if math.isnan(x) or math.isnan(y):
        return not (math.isnan(x) and math.isnan(y))
    if math.isinf(x) or math.isinf(y):
        return x != y
    allowed = max(
        a["abs"], b["abs"], max(a["rel"], b["rel"]) * max(abs(x), abs(y)), 4.0 * math.hypot(a["se"], b["se"])
    )
    return abs(x - y) > allowed


def merged(rows: list) -> dict:
    """One row stating the widest tolerance of `rows` (for display: what `differs` allows)."""
    first = rows[0]
    if first["kind"] != "float" or any(r["kind"] != "float" for r in rows):
        return first
    return dict(first, **{k: max(r[k] for r in rows) for k in ("abs", "rel", "se")})


def tolerance_text(row: dict) -> str:
    if row["kind"] == "exact":
        return "equal"
    if row["kind"] == "ids":
        return "ids equal"
    parts = [
        f"abs {row['abs']:.2g}" if row["abs"] else "",
        f"rel {row['rel']:.2g}" if row["rel"] else "",
        "4 se" if row["se"] else "",
    ]
    return ", ".join(p for p in parts if p) or "equal"
