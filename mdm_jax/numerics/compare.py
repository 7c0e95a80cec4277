"""`compare`: one table, a row per measurement and a column per report, every difference beyond
the row's tolerance marked.

The first report is the baseline: a cell of another report is marked `*` when it differs from the
baseline's beyond the tolerance the two rows state (`rows.differs`); a row one report lacks shows
"-" and is marked `?`. Token-id rows show the number of ids in the baseline and, in the other
columns, the fraction identical to it. Nothing here fails on a difference: a comparison is a
report, not a gate (the CLI exits non-zero only for a malformed report).
"""

from __future__ import annotations

import dataclasses

from mdm_jax.numerics import rows as R

__all__ = ["Line", "compare_reports", "format_table"]


@dataclasses.dataclass
class Line:
    name: str
    tolerance: str
    cells: list  # one display string per report
    marks: list  # per report: "" (same as the baseline), "*" (differs) or "?" (absent)

    @property
    def differs(self) -> bool:
        return any(self.marks)


def _cell(row, baseline) -> str:
    if row is None:
        return "-"
    v = row["value"]
    if row["kind"] == "ids":
        if baseline is None or baseline is row or baseline["kind"] != "ids":
            return f"{len(v)} ids"
        return f"{R.identical_fraction(baseline['value'], v):.4f} same"
    if row["kind"] == "float":
        return f"{v:.6g}"
    return "null" if v is None else str(v)


def compare_reports(reports: list[dict]) -> list[Line]:
    """One Line per row name (in the order first seen), comparing every report with the first."""
    names = list(dict.fromkeys(n for r in reports for n in r["rows"]))
    lines = []
    for name in names:
        rows = [r["rows"].get(name) for r in reports]
        base = rows[0]
        marks = []
        for i, row in enumerate(rows):
            if row is None or (base is None and i > 0):
                marks.append("?")  # absent, or nothing to compare it with
            else:
                marks.append("*" if i > 0 and R.differs(base, row) else "")
        tol = R.tolerance_text(R.merged([r for r in rows if r is not None]))
        lines.append(Line(name, tol, [_cell(r, base) for r in rows], marks))
    return lines


def format_table(reports: list[dict], labels: list[str], lines: list[Line], only_differences=False) -> str:
    """A Markdown table; `labels` name the columns (e.g. the files)."""
    head = [f"{lab}: {r.get('title', '')} ({r.get('size', '')})" for lab, r in zip(labels, reports)]
    out = ["| row | tolerance | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(reports)]
    shown = [ln for ln in lines if ln.differs or not only_differences]
    for ln in shown:
        cells = [f"{c} {m}".strip() for c, m in zip(ln.cells, ln.marks)]
        out.append(f"| {ln.name} | {ln.tolerance} | " + " | ".join(cells) + " |")
    beyond = sum("*" in ln.marks for ln in lines)
    partial = sum("?" in ln.marks and "*" not in ln.marks for ln in lines)
    out.append("")
    out.append(
        f"{len(lines)} rows; {beyond} differ from {labels[0]} beyond their tolerance (*); "
        f"{partial} more are missing from some report (?)."
    )
    return "\n".join(out)
