"""Every bad input fails before any work, with a message that names the field (or flag, or path).

The table runs `preflight.check` in-process (no data preparation, no compilation: milliseconds
per case); a few CLI cases check that the user sees one line and the documented exit status.
"""

from __future__ import annotations

import pytest

from conftest import run_main
from mdm_jax import config as config_lib, errors, preflight


def tiny():
    c = config_lib.base()
    c.model.update(vocab_size=256, max_len=32, num_layers=1, num_heads=2, emb_dim=32, mlp_dim=64)
    c.data.seq_len = 32
    c.train.update(batch_size=8, num_steps=4)
    return c


SAMPLE_AT_END = {"train.sample_at_end": True}

# (mode, {dotted field: value}, the text the message must contain: the field it names)
BAD = [
    ("train", {"train.log_every": 0}, "train.log_every"),
    ("train", {"train.eval_every": 0}, "train.eval_every"),
    ("train", {"train.checkpoint_every": 0}, "train.checkpoint_every"),
    ("train", {"train.keep_checkpoints": 0}, "train.keep_checkpoints"),
    ("train", {"train.num_steps": -1}, "train.num_steps"),
    ("train", {"train.eval_batches": 0}, "train.eval_batches"),
    ("train", {"train.batch_size": 0}, "train.batch_size"),
    ("train", {"train.lr": -1e-3}, "train.lr"),
    ("train", {"train.lr": float("inf")}, "train.lr"),
    ("train", {"train.warmup_steps": -5}, "train.warmup_steps"),
    ("train", {"train.grad_clip": -1.0}, "train.grad_clip"),
    ("train", {"train.b1": 1.0}, "train.b1"),
    ("train", {"train.b2": -0.1}, "train.b2"),
    ("train", {"train.ema_decay": 1.5}, "train.ema_decay"),
    ("train", {"train.nonfinite": "ignore"}, "train.nonfinite"),
    ("train", {"train.max_nonfinite_skips": 0}, "train.max_nonfinite_skips"),
    ("train", {"train.grad_accum_steps": 0}, "train.grad_accum_steps"),
    ("train", {"train.lr_schedule": "linear"}, "train.lr_schedule"),
    ("train", {"train.batch_size": 12, "train.grad_accum_steps": 5}, "train.batch_size"),
    ("train", {"objective.kind": "diffusion"}, "objective.kind"),
    ("train", {"objective.schedule": "cosin"}, "objective.schedule"),
    ("train", {"objective.t_min": 1.0}, "objective.t_min"),
    ("train", {"model.family": "rnn"}, "model.family"),
    ("train", {"model.num_heads": 3}, "model.num_heads"),
    ("train", {"model.dropout": 1.0}, "model.dropout"),
    ("train", {"data.seq_len": 64}, "model.max_len"),
    ("train", {"data.seq_len": 0}, "data.seq_len"),
    ("train", {"data.dataset": "wikitext"}, "data.dataset"),
    ("train", {"model.vocab_size": 100}, "model.vocab_size"),
    ("train", {"mesh.data": 1000}, "mesh.data"),
    ("train", {**SAMPLE_AT_END, "sampling.method": "autoregressive"}, "sampling.method"),
    ("train", {**SAMPLE_AT_END, "sampling.method": "gibbs"}, "sampling.method"),
    ("train", {**SAMPLE_AT_END, "sampling.tokens_per_step": 0}, "sampling.tokens_per_step"),
    (
        "train",
        {**SAMPLE_AT_END, "sampling.method": "ancestral", "sampling.num_steps": 0},
        "sampling.num_steps",
    ),
    ("train", {**SAMPLE_AT_END, "sampling.precision": "fp32"}, "sampling.precision"),
    ("train", {**SAMPLE_AT_END, "sampling.temperature": 0.0}, "sampling.temperature"),
    ("train", {**SAMPLE_AT_END, "sampling.num_samples": 0}, "sampling.num_samples"),
    ("train", {**SAMPLE_AT_END, "sampling.batch_size": 0}, "sampling.batch_size"),
    ("train", {**SAMPLE_AT_END, "sampling.seq_len": 1000}, "sampling.seq_len"),
    ("train", {**SAMPLE_AT_END, "sampling.prompt": "x" * 40}, "sampling.prompt"),
    ("eval", {"eval.num_batches": 0}, "eval.num_batches"),
    ("eval", {"eval.mc_draws": 0}, "eval.mc_draws"),
    ("eval", {"eval.evaluator_workdir": "/nonexistent/arm"}, "eval.evaluator_workdir"),
    ("eval", {"train.batch_size": 12, "train.grad_accum_steps": 5}, "train.batch_size"),
    ("sample", {"sampling.method": "autoregressive"}, "sampling.method"),
    ("sample", {"sampling.method": "ancestral", "sampling.num_steps": -3}, "sampling.num_steps"),
    ("experiment", {"experiment.name": "table9"}, "experiment.name"),
]


def _set(c, overrides):
    with c.unlocked():
        for dotted, value in overrides.items():
            section, name = dotted.split(".")
            c[section][name] = value
    return c


@pytest.mark.parametrize("mode,overrides,field", BAD, ids=[f"{m}-{'-'.join(o)}" for m, o, _ in BAD])
def test_bad_input_names_the_field(tmp_path, mode, overrides, field):
    workdir = tmp_path / "run"
    workdir.mkdir()
    c = _set(tiny(), overrides)
    with pytest.raises(errors.ConfigError) as e:
        preflight.check(c, mode, str(workdir))
    assert field in str(e.value), str(e.value)
    assert len(BAD) >= 30


def test_a_good_config_passes_every_mode(tmp_path):
    (tmp_path / "run").mkdir()
    c = _set(tiny(), SAMPLE_AT_END)
    for mode in ("train", "eval", "sample"):
        preflight.check(c, mode, str(tmp_path / "run"))


def test_path_checks(tmp_path):
    c = tiny()
    a_file = tmp_path / "a_file"
    a_file.write_text("not a run")
    for mode in ("sample", "eval"):
        with pytest.raises(errors.ConfigError, match="--workdir=.* is a file, not a run directory"):
            preflight.check(c, mode, str(a_file))
        with pytest.raises(errors.ConfigError, match="does not exist: train first"):
            preflight.check(c, mode, str(tmp_path / "missing"))
    run = tmp_path / "run"
    run.mkdir()
    (run / "samples").write_text("in the way")  # the output directory cannot be created
    with pytest.raises(errors.ConfigError, match="samples cannot be written.*--output_dir"):
        preflight.check(c, "sample", str(run))
    preflight.check(c, "sample", str(run), str(tmp_path / "elsewhere"))
    assert (tmp_path / "elsewhere" / "samples").is_dir()
    with pytest.raises(errors.ConfigError, match="--output_dir is for --mode=sample"):
        preflight.check(c, "train", str(run), str(tmp_path / "elsewhere"))
    with pytest.raises(errors.ConfigError, match="workdir .* cannot be written"):
        preflight.check(c, "train", str(a_file / "run"))


@pytest.mark.slow
def test_cli_errors_are_one_line_with_the_exit_status(tmp_path):
    r = run_main("--config=configs/no_such_config.py", f"--workdir={tmp_path}/w")
    assert r.returncode == errors.EXIT_CONFIG and "Traceback" not in r.stderr
    assert "no such config file 'configs/no_such_config.py'" in r.stderr
    assert "e.g. --config=configs/quickstart.py" in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2, r.stderr

    r = run_main("--config=configs/quickstart.py", f"--workdir={tmp_path}/w", "--config.train.log_every=0")
    assert r.returncode == errors.EXIT_CONFIG, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "error: train.log_every=0 must be >= 1" in r.stderr
    assert not (tmp_path / "w").exists()  # nothing was written

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    r = run_main("--config=configs/quickstart.py", f"--workdir={a_file}", "--mode=sample")
    assert r.returncode == errors.EXIT_CONFIG and "is a file, not a run directory" in r.stderr, r.stderr


def test_help_lists_the_modes_and_where_fields_are_documented():
    r = run_main("--help", timeout=60)  # absl's --help exits with status 1 after printing
    for text in (
        "train ",
        "eval ",
        "sample ",
        "experiment ",
        "mdm_jax/config.py",
        "--output_dir",
        "Exit status",
        "75 preempted",
    ):
        assert text in r.stdout, text
