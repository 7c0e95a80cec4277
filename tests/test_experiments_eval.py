"""The shared report writer, the dispatcher, and the time_agnostic / mdm_vs_arm experiments end to end
at a tiny size (the mdm_vs_arm run reuses the time_agnostic run's models through its workdir fields),
each followed by a redraw of its plots and summary from the saved JSON (`--mode=report`)."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest

from conftest import load_config, tiny
from mdm_jax import experiments, modes, report
from mdm_jax.experiments import mdm_vs_arm


def _load_config(name, arg=None):
    return load_config(f"configs/experiments/{name}.py", arg)


# ---------------------------------------------------------------- report / dispatcher / pure helpers


def test_report_write_json_csv_summary(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mdm_jax import config as config_lib

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    plot = report.save_figure(fig, str(tmp_path), "line.png")
    rows = [{"n": np.int64(1), "x": np.float32(0.5)}, {"n": 2, "y": float("nan")}]
    paths = report.write(
        str(tmp_path),
        "demo",
        config=config_lib.base(),
        results={"best": np.float64(1.25)},
        tables={"rows": rows},
        findings=[(plot, "Line goes down."), (None, "No plot here.")],
        notes=["a note"],
        title="Demo",
    )
    with open(paths["json"]) as f:
        data = json.load(f, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert data["results"] == {"best": 1.25}
    assert data["tables"]["rows"][1]["y"] is None  # NaN -> null
    meta = data["metadata"]
    assert meta["jax_version"] and meta["device_kind"] and meta["config"]["model"]["vocab_size"] == 256
    with open(paths["csv:rows"]) as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == ["n", "x", "y"] and got[0]["x"] == "0.5" and got[1]["x"] == ""
    md = open(paths["summary"]).read()
    assert "# Demo" in md and "Line goes down." in md and "![line.png](line.png)" in md
    assert "| n | x | y |" in md and meta["jax_version"] in md
    assert os.path.getsize(tmp_path / "line.png") > 1000
    # Long raw tables can stay out of the markdown: the summary then points at their CSV.
    paths = report.write(str(tmp_path / "short"), "demo", tables={"rows": rows}, markdown_tables=())
    md = open(paths["summary"]).read()
    assert "| n | x | y |" not in md and "2 rows in `demo_rows.csv`" in md


def test_dispatcher_and_list_parsing(tmp_path):
    from mdm_jax import config as config_lib

    c = config_lib.base()
    c.experiment.name = "nope"
    with pytest.raises(ValueError, match="unknown experiment.name='nope'"):
        experiments.run(c, "/tmp/unused")
    # --mode=report needs an experiment's results JSON in the workdir, and says so.
    with pytest.raises(FileNotFoundError, match="no experiment.*run --mode=experiment there first"):
        experiments.report(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        experiments.report(str(tmp_path / "missing"))
    assert experiments.parse_list("0.5, 1,2e-1") == [0.5, 1.0, 0.2]
    assert experiments.parse_list("a,b", str) == ["a", "b"]
    # Tuple fields: a tuple, or what `--config.f=a,b` gives for strings (one comma-joined element).
    assert experiments.parse_list((16, 64), int) == [16, 64]
    assert experiments.parse_list(("a,b",), str) == ["a", "b"]
    assert experiments.parse_list(("",), int, allow_empty=True) == []
    with pytest.raises(ValueError, match="experiment.arm_lengths is empty"):
        experiments.parse_list(("",), int, "experiment.arm_lengths")
    with pytest.raises(ValueError, match="experiment.temperatures"):
        experiments.parse_list("0.5,x", float, "experiment.temperatures")
    d = experiments.derive(c, **{"objective.kind": "arm"})
    assert d.objective.kind == "arm" and c.objective.kind == "continuous"


def test_matched_entropy_interpolation_and_verdict_rules():
    # log gen PPL is interpolated linearly in entropy: halfway between e=1 (ppl e^1) and e=3 (e^3) -> e^2.
    e, pa, pb, how = mdm_vs_arm.matched([(1.0, math.e), (3.0, math.e**3)], [(0.0, 1.0), (4.0, 4.0)], 2.0)
    assert e == 2.0 and pa == pytest.approx(math.e**2) and pb == pytest.approx(2.0) and "real" in how
    e, *_, how = mdm_vs_arm.matched([(1.0, 2.0), (3.0, 4.0)], [(2.0, 2.0), (5.0, 4.0)], 4.5)
    assert e == 2.5 and "middle" in how
    assert mdm_vs_arm.matched([(1.0, 2.0)], [(2.0, 3.0)], 1.5)[0] is None
    s = {
        "mdm_val_ppl_bound": 10.0,
        "arm_val_ppl": 8.0,
        "matched_entropy": 4.0,
        "matched_how": "x",
        "mdm_gen_ppl_matched": 30.0,
        "arm_gen_ppl_matched": 10.0,
        "evaluator": "train",
        "speed_max_len": 128,
        "fhs_s_per_seq_at_max_len": 0.4,
        "arm_s_per_seq_at_max_len": 0.1,
        "speed_min_len": 16,
        "speed_ratio_min_len": 1.5,
        "mdm_train_tokens_per_s": 1000.0,
        "arm_train_tokens_per_s": 1100.0,
    }
    v = mdm_vs_arm.verdict(s)
    assert "ARM wins validation perplexity by 20.0%" in v["likelihood"]
    assert "ARM's samples have 3.00x lower gen PPL" in v["samples"]
    assert "ARM (KV cache) takes 100.0 ms per sequence, 4.0x less than FHS" in v["speed"]
    assert "-9%): the objective barely changes" in v["training"]
    assert v["verdict"].startswith("Verdict: at this budget the ARM is better")
    s.update(arm_val_ppl=12.0, fhs_s_per_seq_at_max_len=0.05, arm_train_tokens_per_s=2000.0)
    v = mdm_vs_arm.verdict(s)
    assert v["verdict"].startswith("Verdict: mixed, the ARM wins 1 of 3")
    assert "-50%): a gap this large is not the objective" in v["training"]


def test_experiment_configs_load():
    for name in ("time_agnostic", "mdm_vs_arm"):
        for arg in (None, "owt"):
            c = _load_config(name, arg)
            assert c.experiment.name == name
    assert _load_config("time_agnostic", "owt").model.vocab_size == 50257


# ---------------------------------------------------------------- end to end at tiny size


def _assert_redraw_reproduces_summary(workdir, name, plots):
    """`--mode=report` on the workdir redraws every plot and the same summary.md from the JSON alone."""
    summary = open(os.path.join(workdir, "summary.md")).read()
    for f in (*plots, "summary.md"):
        os.remove(os.path.join(workdir, f))
    drawn = modes.run("report", None, workdir)  # the experiment is found from its <name>.json
    assert open(os.path.join(workdir, "summary.md")).read() == summary
    assert sorted(drawn["plots"].values()) == sorted(plots)
    for f in plots:
        assert os.path.getsize(os.path.join(workdir, f)) > 1000, f
    assert experiments.report(workdir, name)["findings"] == drawn["findings"]


def _tiny(c):
    tiny(c)
    c.train.update(
        dict(
            log_every=10,
            eval_every=10,
            eval_batches=1,
            checkpoint_every=1000,
            plot=False,
            warmup_steps=2,
            lr=3e-3,
        )
    )
    c.eval.update(dict(num_batches=2, mc_draws=2))
    return c


@pytest.fixture(scope="module")
def time_agnostic_run(tmp_path_factory):
    c = _tiny(_load_config("time_agnostic"))
    c.experiment.num_steps = 20
    c.experiment.kl_ratios = (0.25, 0.75)
    c.experiment.kl_num_times = 6
    c.experiment.kl_num_sequences = 4
    wd = str(tmp_path_factory.mktemp("time_agnostic"))
    return c, wd, experiments.run(c, wd)


@pytest.mark.slow
def test_time_agnostic_end_to_end(time_agnostic_run):
    c, wd, res = time_agnostic_run
    for f in (
        "time_agnostic.json",
        "time_agnostic_nelbo.csv",
        "time_agnostic_kl.csv",
        "time_agnostic_kl_summary.csv",
        "nelbo.png",
        "kl_vs_t.png",
        "learning_curves.png",
        "summary.md",
    ):
        assert os.path.getsize(os.path.join(wd, f)) > 0, f
    variants = res["variants"]
    assert set(variants) == {"tc_continuous", "tf_continuous", "tf_discrete", "arm"}
    for name, v in variants.items():
        assert v["checkpoint_step"] == 20
        # 20 tiny steps already beat a uniform byte model (8 bits); a bound cannot go below ~0.
        assert 0.5 < v["val_bits_per_token"] < 8.0, (name, v["val_bits_per_token"])
        assert v["val_stderr_bits"] >= 0.0
    # Time conditioning adds the adaLN parameters on top of the same backbone.
    assert variants["tc_continuous"]["num_params"] > variants["tf_continuous"]["num_params"]
    assert variants["tf_continuous"]["num_params"] == variants["tf_discrete"]["num_params"]
    assert "own_estimator_bits_per_token" in variants["tf_discrete"]
    with open(os.path.join(wd, "time_agnostic.json")) as f:
        kl_rows = json.load(f)["tables"]["kl"]
    assert {r["variant"] for r in kl_rows} == {"tc_continuous"}  # only time-conditioned nets
    for r in kl_rows:
        assert r["kl"] >= -1e-5
        if r["t"] == r["t_star"]:
            assert abs(r["kl"]) < 1e-5  # same input, same t: zero by construction
    for srow in res["kl_summary"]:
        assert srow["band_lo"] <= srow["t_star"] <= srow["band_hi"]
        rows = [r for r in kl_rows if r["ratio"] == srow["ratio"]]
        # Every time evaluated (grid, t*, the 16 posterior quantiles) is a row; the whole-range maximum
        # covers them all, so it bounds the band's maximum whatever the floats are.
        assert len(rows) == srow["num_times"] and sum(r["posterior_quantile"] for r in rows) == 16
        assert all(r["in_band"] for r in rows if r["posterior_quantile"])
        assert srow["kl_max"] == max(r["kl"] for r in rows)
        assert srow["kl_band_max"] == max(r["kl"] for r in rows if r["in_band"]) <= srow["kl_max"]
    md = open(os.path.join(wd, "summary.md")).read()
    assert md.count("- ") >= 4 and "continuous ELBO, with t" in md
    assert f"{res['kl_summary'][0]['kl_max']:.2g} nats over all" in md
    _assert_redraw_reproduces_summary(
        wd, "time_agnostic", ("nelbo.png", "kl_vs_t.png", "learning_curves.png")
    )
    # A rerun reuses a trained model (no retraining), and refuses a workdir of another model.
    from mdm_jax.experiments import time_agnostic

    arm_cfg = time_agnostic.variant_config(c, "arm")
    assert experiments.train_run(arm_cfg, os.path.join(wd, "runs", "arm"))["trained"] is False
    with pytest.raises(ValueError, match="was trained with another config.objective"):
        experiments.train_run(arm_cfg, os.path.join(wd, "runs", "tf_discrete"))
    # Execution-only model fields (layout, remat, kernel) do not make it another model; a width does.
    run_as = experiments.derive(arm_cfg, **{"model.scan_layers": True, "model.remat": "full"})
    assert experiments.train_run(run_as, os.path.join(wd, "runs", "arm"))["trained"] is False
    wider = experiments.derive(arm_cfg, **{"model.emb_dim": 2 * arm_cfg.model.emb_dim})
    with pytest.raises(ValueError, match=r"model\.emb_dim: \d+ vs \d+"):
        experiments.train_run(wider, os.path.join(wd, "runs", "arm"))


@pytest.mark.slow
def test_mdm_vs_arm_end_to_end_on_given_workdirs(time_agnostic_run, tmp_path):
    c_ta, wd_ta, _ = time_agnostic_run
    c = _tiny(_load_config("mdm_vs_arm"))
    c.experiment.num_steps = 20
    c.experiment.mdm_workdir = os.path.join(wd_ta, "runs", "tf_continuous")
    c.experiment.arm_workdir = os.path.join(wd_ta, "runs", "arm")
    c.experiment.evaluator = "self"
    c.experiment.temperatures = (0.8, 1.0)
    c.sampling.num_samples = 4
    c.experiment.speed_lengths = (8, 16)
    c.experiment.speed_batch = 2
    c.experiment.speed_repeats = 1
    c.sampling.batch_size = 4
    res = experiments.run(c, str(tmp_path))
    for f in (
        "mdm_vs_arm.json",
        "mdm_vs_arm_summary.csv",
        "mdm_vs_arm_quality.csv",
        "mdm_vs_arm_speed.csv",
        "perplexity.png",
        "genppl_vs_entropy.png",
        "sampling_time.png",
        "throughput.png",
        "summary.md",
    ):
        assert os.path.getsize(tmp_path / f) > 0, f
    s = res["summary"]
    assert s["mdm_step"] == s["arm_step"] == 20
    # The ARM's validation perplexity equals the time_agnostic run's (same model, same batches/keys).
    ta = json.load(open(os.path.join(wd_ta, "time_agnostic.json")))["results"]["variants"]
    assert math.log2(s["arm_val_ppl"]) == pytest.approx(ta["arm"]["val_bits_per_token"], rel=1e-5)
    with open(tmp_path / "mdm_vs_arm.json") as f:
        quality = json.load(f)["tables"]["quality"]
    assert len(quality) == 4
    for q in quality:
        assert 0.0 < q["entropy"] <= math.log(32) + 1e-9  # at most log(L) distinct ids per sequence
        assert 1.0 < q["gen_ppl"] < 256.0  # better than uniform after training
    assert s["evaluator"] == "self" and s["evaluator_workdir"] == os.path.abspath(c.experiment.arm_workdir)
    assert res["verdict"]["verdict"].startswith("Verdict:") and len(res["verdict"]) == 5
    md = open(tmp_path / "summary.md").read()
    assert "decision page" in md and res["verdict"]["likelihood"] in md
    _assert_redraw_reproduces_summary(
        str(tmp_path),
        "mdm_vs_arm",
        ("perplexity.png", "genppl_vs_entropy.png", "sampling_time.png", "throughput.png"),
    )
