"""One numerics report: the environment, the categorical draws under every sampling policy, and
the networks' own arithmetic, as named rows with their tolerances (`rows`)."""

from __future__ import annotations

import json
import math
import os
import time

import jax

from mdm_jax.numerics import arithmetic, draws, environment, networks, rows as R

__all__ = ["SIZES", "make_report", "draw_rows", "save", "default_fixtures_dir"]

# size -> the draws' counts (`draws.FULL`, `draws.QUICK`; `scale` multiplies them by 2^scale) and
# the network shape (`networks.SIZES`). "quick" keeps every row at a size a test can afford.
SIZES = {"full": draws.FULL, "quick": draws.QUICK}


def default_fixtures_dir() -> str:
    """tests/fixtures of the source checkout this package runs from ("" when installed elsewhere)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(root, "tests", "fixtures")
    return path if os.path.isdir(path) else ""


def draw_rows(measured: dict) -> dict:
    out = {}
    for p, c in measured["caps"].items():
        eps = float(draws.policy_eps(p))
        rate = c["hits"] / c["draws"]
        # Where the draws reach the cap (>= 4 expected hits) the max is the top grid point's noise
        # value: equal up to the policy dtype's rounding. Where they cannot (float64, float32-high)
        # it is the largest of n Gumbels, a random variable of standard deviation pi / sqrt(6).
        reached = c["expected_hits"] >= 4
        tol = dict(rel=2 * eps) if reached else dict(se=math.pi / math.sqrt(6))
        out.update(
            {
                f"cap/{p}/max": R.number(c["max"], **tol),
                f"cap/{p}/predicted": R.number(c["cap"], rel=1e-12),
                f"cap/{p}/hit_rate": R.number(rate, se=max(c["hits"], 1) ** 0.5 / c["draws"]),
                f"cap/{p}/expected_hit_rate": R.number(c["expected_hits"] / c["draws"], rel=1e-12),
            }
        )
    for p, t in measured["tail"].items():
        out.update(
            {
                f"tail/{p}/measured": R.number(t["measured"], se=t["se"]),
                f"tail/{p}/grid_law": R.number(t["grid"], rel=1e-9),
                f"tail/{p}/prop52": R.number(t["prop52"], rel=1e-9),
            }
        )
    for p, toks in measured["tokens"].items():
        out.update({f"tokens/{p}/{name}": R.ids(v) for name, v in toks.items()})
    return out


def make_report(size: str = "full", scale: int = 0, fixtures_dir: str | None = None, log=print) -> dict:
    """The report as a dict (see `rows` for the format). fixtures_dir: where the GPT-2 and MDLM
    fixtures are (None: this checkout's tests/fixtures; "": leave them out)."""
    if size not in SIZES:
        raise ValueError(f"unknown report size {size!r}: choose one of {', '.join(SIZES)}")
    fixtures_dir = default_fixtures_dir() if fixtures_dir is None else fixtures_dir
    try:
        jax.devices("cpu")
    except RuntimeError as e:  # checked first: the float64 reference is the last thing measured
        raise R.ReportError(
            "the float64 reference runs on the host CPU, which JAX_PLATFORMS="
            f"{os.environ.get('JAX_PLATFORMS', '')!r} leaves out; add cpu to it, e.g. "
            "JAX_PLATFORMS=tpu,cpu"
        ) from e
    seconds, rows = {}, {}
    start = time.perf_counter()
    env = environment.environment()
    log("numerics report (" + size + ") on " + ", ".join(f"{k} {v}" for k, v in env.items() if v != ""))
    rows.update({f"env/{k}": R.exact(v) for k, v in env.items()})
    probe = environment.matmul_probe()
    for kind, found in probe.items():
        rows.update({f"matmul/{kind}/{k}": R.exact(v) for k, v in found.items()})
    log("matmul arithmetic per setting: " + ", ".join(f"{k} -> {v}" for k, v in probe["native"].items()))
    seconds["environment"] = time.perf_counter() - start

    t0 = time.perf_counter()
    counts = draws.scaled(SIZES[size], scale)
    rows.update({f"draws/size/{k}": R.exact(v) for k, v in counts.items()})
    rows.update(draw_rows(draws.measure(counts, log=log)))
    seconds["draws"] = time.perf_counter() - t0

    nets = [networks.owt_mdm_small(size)]
    extra, absent = (
        networks.fixture_networks(fixtures_dir)
        if fixtures_dir
        else ([], {name: "no fixtures directory (pass --fixtures)" for name in networks.FIXTURES})
    )
    nets += extra
    rows["model/present"] = R.exact(", ".join(n.name for n in nets))
    notes = {"absent_models": absent}
    for net in nets:
        t0 = time.perf_counter()
        try:
            rows.update(arithmetic.measure(net, log=log))
        except Exception as e:  # a fixture loader's failure is recorded in the report, not fatal
            if net.name == "owt_mdm_small":
                raise
            rows[f"model/{net.name}/error"] = R.exact(f"{type(e).__name__}: {e}")
            log(f"model  {net.name}: FAILED ({type(e).__name__}: {e}); recorded in the report")
        seconds[f"model/{net.name}"] = time.perf_counter() - t0
    for name, why in absent.items():
        log(f"model  {name}: absent ({why})")
    seconds["total"] = time.perf_counter() - start
    return {
        "format": R.FORMAT,
        "version": R.VERSION,
        "size": size,
        "title": f"{env['backend']} ({env['device_kind']})",
        "rows": rows,
        "notes": notes,
        "seconds": seconds,
    }


def save(report: dict, path: str) -> None:
    """Writes the report as JSON with one row per line (readable, and diffs line up by row)."""
    R.validate(report, path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    head = {k: v for k, v in report.items() if k != "rows"}
    rows = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in report["rows"].items())
    with open(path, "w") as f:
        f.write(json.dumps(head, indent=1)[:-2] + ',\n "rows": {\n' + rows + "\n }\n}\n")
