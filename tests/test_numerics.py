"""mdm_jax.numerics, piece by piece: emulated matmul arithmetic, the matmul probe, the report
format and `compare`, the network under test, the categorical-draw audit and the converted H200
file. The end-to-end reports are in tests/test_numerics_report.py."""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from mdm_jax import config as config_lib, precision as precision_lib, rng
from mdm_jax.numerics import (
    __main__ as cli,
    compare,
    convert,
    draws,
    emulate,
    environment,
    networks,
    rows as R,
)

DOCS = os.path.join(ROOT, "docs", "numerics")
H200 = os.path.join(ROOT, "docs", "results", "nvidia-h200", "numerics.json")


# --- emulated accelerator arithmetic -----------------------------------------------------------


def test_round_mantissa_rounds_to_nearest_even():
    x = jnp.asarray([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -(1 + 3 * 2**-8), 3.0], jnp.float32)
    out = np.asarray(emulate.round_mantissa(x, 7))
    # Ties go to the even neighbour (1 and 1 + 2^-6); above the tie rounds up; the sign is kept.
    np.testing.assert_array_equal(out, [1.0, 1 + 2**-6, 1 + 2**-7, -(1 + 2**-6), 3.0])
    # Agrees with XLA's own float32 -> bfloat16 conversion on random values.
    r = jax.random.normal(jax.random.key(0), (4096,)) * 100
    np.testing.assert_array_equal(
        np.asarray(emulate.round_mantissa(r, 7)), np.asarray(r.astype(jnp.bfloat16).astype(jnp.float32))
    )


@pytest.mark.parametrize("fmt", sorted(emulate.FORMATS))
def test_emulated_matmul_is_the_arithmetic_it_names(fmt):
    # The probe reads back exactly the named arithmetic, also through scan / while / cond bodies.
    def nested(a, b):
        c, _ = jax.lax.scan(lambda c, _: (c @ b, None), a, None, length=1)
        c = jax.lax.fori_loop(0, 1, lambda i, c: c @ b, c)
        return jax.lax.cond(c[0, 0] > 0, lambda c: c @ b, lambda c: c, c)

    assert environment._probe(emulate.emulate(lambda a, b: a @ b, fmt)) == fmt
    assert environment._probe(emulate.emulate(nested, fmt)) == fmt


def test_emulate_passes_bodies_without_a_matmul_through():
    # A scatter-add carries an open jaxpr (its combiner) with no matmul in it: MDLM's SUBS
    # parameterisation has one. The emulated function runs it unchanged and still rounds the matmul.
    def f(a, b):
        return (a @ b).at[:, 0].add(1.0)

    a = jax.random.normal(jax.random.key(3), (8, 64))
    b = jax.random.normal(jax.random.key(4), (64, 4))
    ours = emulate.emulate(f, "bfloat16")(a, b)
    want = jnp.dot(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(want.at[:, 0].add(1.0)), atol=2e-5)


def test_emulated_bfloat16_matmul_equals_a_bfloat16_operand_matmul():
    a = jax.random.normal(jax.random.key(1), (32, 256))
    b = jax.random.normal(jax.random.key(2), (256, 16))
    ours = emulate.emulate(lambda a, b: jnp.einsum("ik,kj->ij", a, b), "bfloat16")(a, b)
    xla = jnp.dot(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
    exact = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
    # Same products, float32 accumulation in a possibly different order: ~1e-6 of the terms.
    np.testing.assert_allclose(np.asarray(ours), np.asarray(xla), atol=2e-5)
    assert np.max(np.abs(np.asarray(ours) - exact)) > 1e-2  # and far from the float32 product


def test_emulate_keeps_a_partial_a_partial_with_its_arrays_traced():
    w = jnp.ones((4, 4))
    fn = jax.tree_util.Partial(lambda w, x: x @ w, w)
    em = emulate.emulate(fn, "tensorfloat32")
    assert isinstance(em, jax.tree_util.Partial) and jax.tree.leaves(em)[0] is w
    np.testing.assert_array_equal(np.asarray(em(jnp.eye(4))), np.ones((4, 4)))
    with pytest.raises(ValueError, match="choose one of"):
        emulate.emulate(fn, "float8")


def test_probe_classifies_and_float32_is_full_precision_everywhere():
    assert environment.classify(2.0**-9) == "tensorfloat32"
    assert environment.classify(0.0) == "bfloat16"
    assert environment.classify(0.5).startswith("other")
    found = environment.matmul_probe()
    assert found["native"]["float32"] == "float32"  # HIGHEST is full float32 on every backend
    assert found["emulated"] == {f: f for f in emulate.FORMATS}


# --- the report format and compare ---------------------------------------------------------------


def _report(rows, title="t"):
    return {"format": R.FORMAT, "version": R.VERSION, "size": "quick", "title": title, "rows": rows}


def test_differs_uses_the_rows_tolerances():
    assert not R.differs(R.number(1.0, rel=0.1), R.number(1.09))
    assert R.differs(R.number(1.0, rel=0.1), R.number(1.2))
    assert not R.differs(R.number(1e-7, abs=1e-5), R.number(5e-6))
    # Statistical rows: 4 combined standard errors (sqrt(0.3^2 + 0.4^2) = 0.5 -> 2.0).
    assert not R.differs(R.number(10.0, se=0.3), R.number(11.9, se=0.4))
    assert R.differs(R.number(10.0, se=0.3), R.number(12.1, se=0.4))
    assert R.differs(R.exact("cpu"), R.exact("gpu")) and not R.differs(R.exact(True), R.exact(True))
    assert R.differs(R.ids([1, 2, 3]), R.ids([1, 2, 4])) and not R.differs(R.ids([1, 2]), R.ids([1, 2]))
    assert R.identical_fraction([1, 2, 3, 4], [1, 2]) == 0.5


def test_compare_marks_exactly_the_differences_and_absences():
    a = _report(
        {
            "env/x64": R.exact(False),
            "cap/max": R.number(15.9424, rel=1e-6),
            "tokens/ids": R.ids([1, 2, 3, 4]),
            "only/a": R.exact(1),
        },
        "A",
    )
    b = _report(
        {
            "env/x64": R.exact(True),
            "cap/max": R.number(15.94241, rel=1e-6),
            "tokens/ids": R.ids([1, 2, 3, 5]),
        },
        "B",
    )
    lines = {ln.name: ln for ln in compare.compare_reports([a, b])}
    assert lines["env/x64"].marks == ["", "*"]
    assert lines["cap/max"].marks == ["", ""]
    assert lines["tokens/ids"].cells == ["4 ids", "0.7500 same"] and lines["tokens/ids"].marks == ["", "*"]
    assert lines["only/a"].marks == ["", "?"]
    table = compare.format_table([a, b], ["a.json", "b.json"], list(lines.values()), only_differences=True)
    assert "| env/x64 | equal | False | True * |" in table and "cap/max" not in table
    assert "2 differ from a.json beyond their tolerance (*); 1 more are missing" in table


def test_cli_compare_reports_differences_with_exit_0_and_malformed_files_with_exit_2(tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_report({"env/backend": R.exact("cpu")})))
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_report({"env/backend": R.exact("gpu")})))
    assert cli.main(["compare", str(good), str(other), "--out", str(tmp_path / "t.md")]) == 0
    assert "| env/backend | equal | cpu | gpu * |" in (tmp_path / "t.md").read_text()
    bad_rows = [
        {"x": {"kind": "float", "value": "1.0", "abs": 0, "rel": 0, "se": 0}},
        {"x": {"kind": "float", "value": 1.0, "abs": -1, "rel": 0, "se": 0}},
        {"x": {"kind": "ids", "value": [1, "2"]}},
        {"x": {"value": 1}},
        {},
    ]
    for i, rows in enumerate(bad_rows):
        bad = tmp_path / f"bad{i}.json"
        bad.write_text(json.dumps(_report(rows)))
        assert cli.main(["compare", str(good), str(bad)]) == 2
        err = capsys.readouterr().err
        assert f"bad{i}.json" in err and ("row 'x'" in err or "non-empty" in err), err
    (tmp_path / "notjson.json").write_text("{")
    assert cli.main(["compare", str(good), str(tmp_path / "notjson.json")]) == 2
    assert "notjson.json: not JSON" in capsys.readouterr().err
    (tmp_path / "other_format.json").write_text(json.dumps({"device_kind": "cpu"}))
    assert cli.main(["compare", str(tmp_path / "other_format.json")]) == 2
    assert "not a numerics report" in capsys.readouterr().err
    assert cli.main(["compare", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: cannot read it" in capsys.readouterr().err


# --- the network under test ----------------------------------------------------------------------


def test_the_network_has_owt_mdm_small_architecture():
    ours = networks.owt_mdm_small_config("full")
    owt = config_lib.load_file(os.path.join(ROOT, "configs", "owt_mdm_small.py"))
    for field in (
        "objective.kind",
        "objective.schedule",
        "objective.schedule_eps",
        "model.vocab_size",
        "model.mlp_type",
        "model.time_conditioning",
        "model.time_emb_dim",
        "model.rope_base",
        "model.num_layers",
        "model.family",
    ):
        section, name = field.split(".")
        assert ours[section][name] == owt[section][name], field
    # Reduced in width and length only, with whole heads and the same MLP ratio.
    m = ours.model
    assert m.emb_dim < owt.model.emb_dim and m.emb_dim % m.num_heads == 0
    assert m.mlp_dim * owt.model.emb_dim == owt.model.mlp_dim * m.emb_dim


def test_the_network_has_trained_size_logits_and_its_float64_twin_agrees():
    net = networks.owt_mdm_small("quick")
    forward = jax.jit(lambda fn, *args: fn(*args))
    logits = np.asarray(forward(net.build("float32"), *net.inputs))[net.scored]
    # Redrawn weights: every logit is nonzero with a trained model's spread (std near LOGIT_STD).
    assert np.all(logits != 0) and 2.0 < logits.std() < 3 * networks.LOGIT_STD
    with jax.enable_x64(True):
        ref = np.asarray(forward(net.build("float64"), *net.inputs))[net.scored]
    err = np.max(np.abs(logits - ref)) / np.max(np.abs(ref))
    assert 0 < err < 1e-5  # float32 rounding, measured against a float64 forward


# --- the categorical-draw audit --------------------------------------------------------------------


def test_noise_reaches_the_analytic_cap_at_the_grid_rate():
    # 2^22 draws: bfloat16 (2^-7 grid) and float16 (2^-10) sit on their top grid point at rate d;
    # the max equals the analytic cap rounded to the dtype. Binomial counts, 5 standard deviations.
    for i, (prec, dtype) in enumerate((("bfloat16", jnp.bfloat16), ("float16", jnp.float16))):
        mx, hits, n = draws.noise_cap(rng.fold(rng.root_key(0), "cap", i), prec, 22)
        grid = precision_lib.policy_grid(prec)
        assert mx == float(jnp.asarray(grid.cap, dtype)), (prec, mx)
        expected = n * grid.d
        assert abs(hits - expected) < 5 * math.sqrt(expected), (prec, hits, expected)
    # float32 never exceeds its cap (15.94), and float64's max stays far below 36.04 (log 2^22 ~ 15).
    mx32, _, _ = draws.noise_cap(rng.root_key(1), "float32", 22)
    assert mx32 <= precision_lib.gumbel_cap("float32") + 1e-5
    mx64, hits64, _ = draws.noise_cap(rng.root_key(2), "float64", 22)
    assert 12 < mx64 < 30 and hits64 == 0


def test_the_h200_file_converts_exactly_and_matches_this_cpu_token_for_token():
    h200 = convert.from_benchmark(H200)
    with open(H200) as f:
        old = json.load(f)
    assert h200["rows"]["cap/float32/max"]["value"] == old["cap"]["float32"]["max"]
    assert h200["rows"]["draws/size/cap_log2"]["value"] == 32 and "env/x64" not in h200["rows"]
    cpu = R.load(os.path.join(DOCS, "cpu_report.json"))
    tokens = [n for n in h200["rows"] if n.startswith("tokens/")]
    assert len(tokens) == 2 * len(draws.POLICIES)
    for name in tokens:  # same keys, same sizes: identical ids on the H200 and this CPU
        assert cpu["rows"][name] == h200["rows"][name], name
    with pytest.raises(R.ReportError, match="not a benchmarks/numerics.py result"):
        convert.from_benchmark(os.path.join(DOCS, "cpu_report.json"))
