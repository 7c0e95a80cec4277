"""python -m mdm_jax.numerics report|compare|convert (see `mdm_jax.numerics`)."""

from __future__ import annotations

import argparse
import os
import sys

from mdm_jax.numerics import compare as compare_lib, convert, report, rows as R


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mdm_jax.numerics", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("report", help="measure this backend and write a report (JSON)")
    r.add_argument("--out", required=True, help="where to write the report")
    r.add_argument(
        "--size",
        choices=sorted(report.SIZES),
        default="full",
        help="full (committed reports; minutes on a CPU) or quick (tests; every row, small)",
    )
    r.add_argument(
        "--scale", type=int, default=0, help="2^scale times the noise draws and tail rows (accelerators: 6)"
    )
    r.add_argument(
        "--fixtures",
        default=None,
        help="directory holding gpt2-tiny/, mdlm-tiny/, mdlm-tiny-tc/ (default: this "
        "checkout's tests/fixtures; '' leaves them out)",
    )
    c = sub.add_parser("compare", help="one table of several reports, differences marked")
    c.add_argument("reports", nargs="+", help="report files; the first is the baseline")
    c.add_argument("--out", default="", help="also write the table here (Markdown)")
    c.add_argument("--differences", action="store_true", help="show only the rows that differ")
    v = sub.add_parser("convert", help="a report from the earlier benchmarks/numerics.py JSON")
    v.add_argument("source")
    v.add_argument("--out", required=True)
    return p


def _write(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "report":
            if os.path.isdir(args.out):
                raise R.ReportError(
                    f"--out={args.out} is a directory; give a file name, e.g. "
                    f"{os.path.join(args.out, 'report.json')}"
                )
            made = report.make_report(args.size, args.scale, args.fixtures)
            report.save(made, args.out)
            print(f"wrote {args.out} ({len(made['rows'])} rows, {made['seconds']['total']:.0f} s)")
        elif args.command == "compare":
            reports = [R.load(path) for path in args.reports]
            lines = compare_lib.compare_reports(reports)
            table = compare_lib.format_table(reports, args.reports, lines, args.differences)
            print(table)
            if args.out:
                _write(args.out, table + "\n")
        else:
            report.save(convert.from_benchmark(args.source), args.out)
            print(f"wrote {args.out}")
    except R.ReportError as e:
        print(f"numerics {args.command}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
