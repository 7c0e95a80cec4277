"""The train state, train/eval steps and the training loop.

Everything that compiles a train step runs in ONE worker process (this file run as a script) with
8 fake CPU devices (XLA_FLAGS must be set before jax is imported) and XLA's CPU backend at
optimisation level 0, which compiles these tiny graphs several times faster and computes the same
functions (every run under comparison uses the same flags). The tests below assert on its results.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT
from mdm_jax import config as config_lib, loop, rng, sharding, train

SHARDED_STEPS = 3
LEARN_STEPS = 30


def tiny_config(**objective):
    c = config_lib.base()
    c.model.update(
        vocab_size=32, max_len=16, num_layers=1, num_heads=4, emb_dim=32, mlp_dim=64, time_emb_dim=16
    )
    c.data.seq_len = 16
    c.train.update(batch_size=16, lr=1e-2, lr_schedule="constant", warmup_steps=0, ema_decay=0.9)
    c.objective.update(objective)
    return c


def structured_batches(num, batch, length, seed=0):
    """Arithmetic progressions x_i = (a + s i) mod 8 with random a and s in {1, 2, 3}, in a vocabulary
    of 32: a skewed unigram law (entropy log 8) plus context (neighbours pin a token down)."""
    r = np.random.default_rng(seed)
    a = r.integers(0, 8, (num, batch, 1))
    s = r.integers(1, 4, (num, batch, 1))
    return ((a + s * np.arange(length)) % 8).astype(np.int32)


# ----------------------------------------------------------------------------- the worker


def _flat(tree):
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)]).tolist()


def _train_run(c, devices, batches, steps, eval_batch=None):
    """Trains `steps` steps; records every step's metrics, and after SHARDED_STEPS steps and at the
    end: params, EMA params and (with eval_batch) the eval metrics of the EMA params."""
    mesh = sharding.make_mesh(c.mesh, devices=devices)
    state, shardings = train.create_train_state(c, mesh)
    out = {"init": _flat(state.params), "metrics": []}
    step = train.make_train_step(c, mesh, shardings)
    evaluate = train.make_eval_step(c, mesh, shardings.params) if eval_batch is not None else None
    for i in range(steps):
        b = sharding.global_batch(batches[i % len(batches)], mesh)
        state, m = step(state, b, rng.fold(rng.root_key(c.seed), "train", i))
        out["metrics"].append({k: float(v) for k, v in m.items()})
        if i + 1 in (SHARDED_STEPS, steps):
            rec = {"params": _flat(state.params), "ema": _flat(state.ema_params)}
            if evaluate is not None:
                ev = evaluate(state.ema_params, sharding.global_batch(eval_batch, mesh), jax.random.key(5))
                rec["eval"] = {k: float(v) for k, v in ev.items()}
            out[f"at{i + 1}"] = rec
    out["step"] = int(state.step)
    emb = state.params["embed"]["embedding"]
    out["embedding_spec"] = str(emb.sharding.spec)
    out["embedding_shard"] = list(emb.addressable_shards[0].data.shape)
    return out


def _worker(out_path):
    assert jax.device_count() == 8
    devs = jax.devices()
    batches = structured_batches(8, 16, 16)
    held_out = structured_batches(1, 16, 16, seed=3)[0]
    res = {}
    mdm = dict(kind="continuous", schedule="cosine")  # time-conditioned (config default)
    # Single device, 30 steps: the reference for the sharded runs (first 3 steps) and the MDM
    # learning test.
    res["single"] = _train_run(tiny_config(**mdm), devs[:1], batches, LEARN_STEPS, held_out)
    for name, (d, f, t, accum, eval_too) in {
        "data8": (8, 1, 1, 1, False),
        "d2f2t2": (2, 2, 2, 1, True),
        "single_accum2": (1, 1, 1, 2, False),
        "d4t2_accum2": (4, 1, 2, 2, False),
    }.items():
        c = tiny_config(**mdm)
        c.mesh.data, c.mesh.fsdp, c.mesh.tensor = d, f, t
        c.train.grad_accum_steps = accum
        res[name] = _train_run(c, devs[: d * f * t], batches, SHARDED_STEPS, held_out if eval_too else None)
    res["arm"] = _train_run(tiny_config(kind="arm"), devs[:1], batches, LEARN_STEPS, held_out)
    del res["arm"]["init"]
    c = tiny_config()
    c.train.batch_size = 12
    try:
        train.check_config(c, sharding.make_mesh(c.mesh))
        res["indivisible"] = None
    except ValueError as e:
        res["indivisible"] = str(e)
    res["loop"] = _loop(os.path.join(os.path.dirname(out_path), "loop"))
    with open(out_path, "w") as f:
        json.dump(res, f)


def loop_config(num_steps):
    """A 1-layer MDM on the embedded corpus, all 8 devices data-parallel (mesh.data = -1)."""
    c = config_lib.base()
    c.model.update(num_layers=1, num_heads=2, emb_dim=32, mlp_dim=64, max_len=32, time_emb_dim=16)
    c.data.seq_len = 32
    c.train.update(
        batch_size=8,
        num_steps=num_steps,
        warmup_steps=2,
        lr=3e-3,
        log_every=2,
        eval_every=3,
        eval_batches=2,
        checkpoint_every=3,
        plot=True,
    )
    return c


def _loop(workdir):
    """train_and_evaluate for 6 steps, then again with num_steps=8 in the same workdir (resume)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        first = loop.train_and_evaluate(loop_config(6), workdir)
        steps_after_first = sorted(
            int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()
        )
        second = loop.train_and_evaluate(loop_config(8), workdir)
    return {
        "first": first,
        "second": second,
        "stdout": buf.getvalue(),
        "workdir": workdir,
        "checkpoints_after_first": steps_after_first,
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("train_worker") / "runs.json"
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0",
    }
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out) as f:
        res = json.load(f)
    res["stderr"] = proc.stderr
    return res


# ----------------------------------------------------------------------------- sharding


def _assert_same_steps(ref, got, rel=1e-5):
    for step_ref, step_got in zip(ref["metrics"][:SHARDED_STEPS], got["metrics"], strict=False):
        for k in ("loss", "nats_per_token", "bits_per_token", "perplexity", "masked_fraction", "lr"):
            assert step_got[k] == pytest.approx(step_ref[k], rel=rel, abs=1e-7), (k, step_ref, step_got)
        assert step_got["grad_norm"] == pytest.approx(step_ref["grad_norm"], rel=10 * rel)
    assert len(got["metrics"]) == SHARDED_STEPS
    np.testing.assert_array_equal(got["init"], ref["init"])  # the same init on any mesh
    # AdamW normalises each coordinate, so the parameters (and EMA) after 3 steps are compared by
    # the discrepancy relative to the distance travelled: float noise vs a real difference.
    p_init = np.asarray(ref["init"])
    for k in ("params", "ema"):
        p_ref, p_got = np.asarray(ref[f"at{SHARDED_STEPS}"][k]), np.asarray(got[f"at{SHARDED_STEPS}"][k])
        moved = np.linalg.norm(p_ref - p_init)
        assert moved > 0.05, k
        assert np.linalg.norm(p_got - p_ref) < 1e-4 * moved, (k, np.linalg.norm(p_got - p_ref), moved)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["data8", "d2f2t2", "d4t2_accum2"])
def test_sharded_steps_match_single_device(runs, name):
    _assert_same_steps(runs["single"], runs[name])


@pytest.mark.slow
def test_sharded_eval_matches_single_device(runs):
    ref, got = runs["single"][f"at{SHARDED_STEPS}"]["eval"], runs["d2f2t2"][f"at{SHARDED_STEPS}"]["eval"]
    assert set(got) >= {"loss", "nats_per_token", "bits_per_token", "perplexity"}
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, rel=1e-5), k


@pytest.mark.slow
def test_grad_accumulation_equals_the_full_batch_update(runs):
    """accum=2 on the batch of 16 (two scanned micro-batches of 8) == accum=1 on the same 16."""
    _assert_same_steps(runs["single"], runs["single_accum2"])


@pytest.mark.slow
def test_sharded_state_is_really_sharded(runs):
    # embedding [V+1 (padded), D] has logical axes (vocab, embed) -> (tensor, fsdp).
    full = runs["single"]["embedding_shard"]
    assert runs["d2f2t2"]["embedding_shard"] == [full[0] // 2, full[1] // 2]
    assert runs["d4t2_accum2"]["embedding_shard"] == [full[0] // 2, full[1]]
    assert runs["data8"]["embedding_shard"] == full  # pure data parallelism: replicated


@pytest.mark.slow
def test_no_involuntary_rematerialization(runs):
    # XLA warns when it cannot reshard efficiently and copies a whole array to every device: the
    # embedding lookup on the d2f2t2 mesh did, before the table was gathered explicitly (FSDP).
    assert "Involuntary full rematerialization" not in runs["stderr"], runs["stderr"][-3000:]


@pytest.mark.slow
def test_batch_not_divisible_by_data_parallel_size(runs):
    msg = runs["indivisible"]
    assert msg is not None and "train.batch_size=12" in msg and "data-parallel size" in msg


# ----------------------------------------------------------------------------- learning


@pytest.mark.slow
@pytest.mark.parametrize("name", ["single", "arm"])
def test_mdm_and_arm_learn(runs, name):
    run = runs[name]
    loss = np.array([m["loss"] for m in run["metrics"]])
    assert len(loss) == LEARN_STEPS and np.all(np.isfinite(loss))
    # The zero-initialised head predicts uniformly: log 32 = 3.47 nats/token at step 0 (exactly for
    # the ARM; in expectation for the MDM's NELBO estimate). The unigram law alone is worth log 8 =
    # 2.08 (0.6 x log 32); context is worth more (the ARM gets there within these steps).
    if name == "arm":
        assert loss[0] == pytest.approx(np.log(32), rel=1e-5)
    assert np.median(loss[-10:]) < 0.7 * np.log(32), loss
    # The EMA (decay 0.9 here) is what eval uses: it must have learned too, on held-out data.
    ev = run[f"at{LEARN_STEPS}"]["eval"]
    assert ev["nats_per_token"] < 0.65 * np.log(32)
    assert ev["bits_per_token"] == pytest.approx(ev["nats_per_token"] / np.log(2), rel=1e-6)
    assert ev["perplexity"] == pytest.approx(np.exp(ev["nats_per_token"]), rel=1e-6)


# ----------------------------------------------------------------------------- the loop


@pytest.mark.slow
def test_train_and_evaluate_logs_evaluates_checkpoints_and_resumes(runs):
    loop = runs["loop"]
    first, second, out = loop["first"], loop["second"], loop["stdout"]
    assert first["step"] == 6 and second["step"] == 8
    assert loop["checkpoints_after_first"] == [3, 6]
    assert "resumed from" in out and "at step 6" in out
    # One eval line per eval_every steps and at the end of each run; bits = nats / ln 2.
    lines = re.findall(
        r"eval step (\d+): nelbo ([\d.]+) nats/token = ([\d.]+) bits/token "
        r"\(ppl bound ([\d.]+)\)",
        out,
    )
    assert [int(s) for s, *_ in lines] == [3, 6, 8]
    for _, nats, bits, ppl in lines:
        assert float(bits) == pytest.approx(float(nats) / np.log(2), rel=1e-3)
        assert float(ppl) == pytest.approx(np.exp(float(nats)), rel=1e-3)
    # Trained for 8 steps from a uniform start (8 bits/token for bytes): the eval bound has moved.
    assert second["eval/bits_per_token"] < 8.0
    records = [json.loads(l) for l in open(os.path.join(loop["workdir"], "metrics.jsonl"))]
    train_steps = [r["step"] for r in records if r["prefix"] == "train"]
    assert train_steps == [2, 4, 6, 8]
    for r in records:
        if r["prefix"] == "train":
            assert {"loss", "nats_per_token", "bits_per_token", "perplexity", "grad_norm", "lr"} <= set(r)
            assert r["tokens_per_s"] > 0  # compile time excluded: the clock starts after step 1
    assert os.path.exists(second["loss_curve"])
    assert os.listdir(os.path.join(loop["workdir"], "tb"))


# ----------------------------------------------------------------------------- in-process


def test_weight_decay_spares_norms_biases_and_embeddings():
    c = tiny_config()
    abstract, _ = train.abstract_train_state(c, sharding.make_mesh(c.mesh))
    flat = jax.tree_util.tree_flatten_with_path(train.weight_decay_mask(abstract.params))[0]
    names = {jax.tree_util.keystr(p): d for p, d in flat}
    assert names["['embed']['embedding']"] is False
    assert names["['head']['kernel']"] is True
    for name, decays in names.items():
        if "norm" in name or "bias" in name:
            assert decays is False, name
    assert sum(names.values()) >= 4  # attention and MLP matrices decay


def test_learning_rate_schedules():
    c = tiny_config()
    c.train.update(lr=1.0, warmup_steps=10, num_steps=110, lr_schedule="cosine", min_lr_ratio=0.1)
    f = train.learning_rate_schedule(c.train)
    assert float(f(0)) == 0.0 and float(f(5)) == pytest.approx(0.5)
    assert float(f(10)) == pytest.approx(1.0) and float(f(60)) == pytest.approx(0.55, rel=1e-4)
    assert float(f(110)) == pytest.approx(0.1)
    c.train.lr_schedule = "constant"
    f = train.learning_rate_schedule(c.train)
    assert float(f(5)) == pytest.approx(0.5) and float(f(1000)) == pytest.approx(1.0)


def test_ema_decay_warms_up():
    assert float(train.ema_decay_at(0.999, 0)) == pytest.approx(0.1)
    assert float(train.ema_decay_at(0.999, 90)) == pytest.approx(0.91)
    assert float(train.ema_decay_at(0.999, 10**6)) == pytest.approx(0.999)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("objective.schedule", "cosin", "objective.schedule"),
        ("objective.kind", "diffusion", "objective.kind"),
        ("train.lr_schedule", "linear", "train.lr_schedule"),
        ("train.grad_accum_steps", 0, "train.grad_accum_steps"),
        ("data.seq_len", 32, "model.max_len"),
    ],
)
def test_bad_config_is_rejected_before_compiling(field, value, match):
    c = tiny_config()
    section, name = field.split(".")
    c[section][name] = value
    with pytest.raises(ValueError, match=match):
        train.make_train_step(c, sharding.make_mesh(c.mesh), None)


def test_resume_under_another_seed_is_refused():
    c = tiny_config()
    # Only the key matters here; create_train_state stores jax.random.key_data(rng.root_key(seed)).
    state = train.TrainState(
        step=0, params={}, opt_state=(), ema_params={}, key=jax.random.key_data(rng.root_key(c.seed))
    )
    train.check_root_key(state, c, "w")  # the seed it was created with
    c.seed = 1
    with pytest.raises(ValueError, match="another config.seed"):
        train.check_root_key(state, c, "w")


def test_mesh_that_does_not_fit_the_devices(tmp_path):
    c = tiny_config()
    c.mesh.data = jax.device_count() + 1
    with pytest.raises(ValueError, match="mesh.data"):
        loop.train_and_evaluate(c, str(tmp_path))


if __name__ == "__main__":
    _worker(sys.argv[1])
