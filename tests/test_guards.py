"""Divergence never goes unnoticed (mdm_jax.guards): detected in the step, never applied, never saved.

- the jitted step flags a non-finite loss / gradient / update and keeps the old state;
- the host policy: "stop" at the first non-finite step, "skip" up to max_nonfinite_skips in a row;
- the loop stops with the documented status and a report naming the step, what was non-finite and
  the last good checkpoint, and every checkpoint it leaves is finite;
- sample / eval refuse a checkpoint with non-finite parameters.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mdm_jax import checkpoint, config as config_lib, errors, guards, loop, rng, runs, sharding, train


def tiny_config(**train_fields):
    c = config_lib.base()
    c.model.update(
        vocab_size=256, max_len=32, num_layers=1, num_heads=2, emb_dim=32, mlp_dim=64, time_conditioning=False
    )
    c.data.seq_len = 32
    c.train.update(
        batch_size=8,
        num_steps=4,
        warmup_steps=0,
        lr=3e-3,
        lr_schedule="constant",
        log_every=2,
        eval_every=1000,
        eval_batches=1,
        checkpoint_every=2,
        plot=False,
    )
    c.train.update(train_fields)
    c.eval.num_batches = 1
    return c


def _flat(tree):
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


# lr=1e39 overflows to infinity when cast to float32: that is the point of those tests.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")


@pytest.mark.slow
def test_step_flags_and_drops_a_nonfinite_update():
    good = tiny_config()
    mesh = sharding.make_mesh(good.mesh)
    state, shardings = train.create_train_state(good, mesh)
    batch = sharding.global_batch(np.random.default_rng(0).integers(0, 256, (8, 32), dtype=np.int32), mesh)
    step = train.make_train_step(good, mesh, shardings)
    # lr=1e39 is finite in Python but infinite in float32: the update of every parameter is non-finite.
    blow_up = train.make_train_step(tiny_config(lr=1e39), mesh, shardings)

    state, m = step(state, batch, rng.fold(rng.root_key(good.seed), "train", 0))
    assert int(m["nonfinite"]) == 0 and int(m["nonfinite_grad_leaf"]) == -1
    before = _flat(state.params), _flat(state.opt_state), _flat(state.ema_params)
    state, m = blow_up(state, batch, rng.fold(rng.root_key(good.seed), "train", 1))
    n = len(jax.tree.leaves(state.params))
    assert int(m["nonfinite"]) == 1 and int(state.step) == 2
    assert int(m["nonfinite_loss"]) == 0 and int(m["nonfinite_grads"]) == 0  # the loss was fine...
    assert int(m["nonfinite_params"]) == n and int(m["nonfinite_param_leaf"]) == 0  # ...the update was not
    for old, new in zip(before, (_flat(state.params), _flat(state.opt_state), _flat(state.ema_params))):
        np.testing.assert_array_equal(old, new)  # nothing of the update was applied
    state, m = step(state, batch, rng.fold(rng.root_key(good.seed), "train", 2))
    assert int(m["nonfinite"]) == 0 and not np.array_equal(_flat(state.params), before[0])

    # A NaN already in a parameter: the loss and every gradient are NaN, and the report says which.
    poisoned = state.replace(params=jax.tree.map(lambda x: x * jnp.nan, state.params))
    _, m = step(poisoned, batch, rng.fold(rng.root_key(good.seed), "train", 3))
    assert int(m["nonfinite_loss"]) == 1 and int(m["nonfinite_grad_norm"]) == 1
    assert int(m["nonfinite_grads"]) >= 1


def _flags(nonfinite, **kw):
    f = {k: 0 for k in guards.FLAG_KEYS}
    f.update({"nonfinite_grad_leaf": -1, "nonfinite_param_leaf": -1, "nonfinite": int(nonfinite), **kw})
    return f


def test_monitor_policies():
    names = ["params/embed/embedding", "params/head/kernel"]
    stop = guards.Monitor(tiny_config().train, names, lambda: (4, "/w/checkpoints/4"))
    assert stop.observe([_flags(0), _flags(0)], first_step=1) == 0
    with pytest.raises(guards.Diverged) as e:
        stop.observe(
            [_flags(0), _flags(1, nonfinite_loss=1, nonfinite_grads=2, nonfinite_grad_leaf=1)], first_step=5
        )
    msg = str(e.value)
    assert "diverged at step 6" in msg and "the loss" in msg and "the last good checkpoint is step 4" in msg
    assert "gradients of 2 of 2 parameter arrays (first: params/head/kernel)" in msg
    assert e.value.exit_code == errors.EXIT_DIVERGED == 3

    skip = guards.Monitor(tiny_config(nonfinite="skip", max_nonfinite_skips=3).train, names, lambda: None)
    assert skip.observe([_flags(1), _flags(1), _flags(0), _flags(1)], first_step=1) == 3  # never 3 in a row
    assert skip.observe([_flags(1)], first_step=5) == 1  # 2 in a row
    with pytest.raises(
        guards.Diverged, match=r"step 6: .*3 non-finite steps in a row .*max_nonfinite_skips=3"
    ):
        skip.observe([_flags(1, nonfinite_params=2, nonfinite_param_leaf=0)], first_step=6)


def _checkpoint_steps(workdir):
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def _all_checkpoints_finite(config, workdir):
    abstract, _ = train.abstract_train_state(config, sharding.make_mesh(config.mesh))
    with checkpoint.Checkpointer(workdir, read_only=True) as ck:
        for s in ck.all_steps():
            state, _ = ck.restore(abstract, step=s)
            assert not guards.tree_nonfinite(state), s


@pytest.mark.slow
def test_loop_stops_or_skips_and_keeps_the_good_checkpoints(tmp_path):
    wd = str(tmp_path / "run")
    loop.train_and_evaluate(tiny_config(num_steps=4), wd)  # checkpoints 2 and 4, finite
    with pytest.raises(guards.Diverged) as e:  # then the learning rate explodes
        loop.train_and_evaluate(tiny_config(num_steps=8, lr=1e39), wd)
    msg = str(e.value)
    assert "training diverged at step 5" in msg and "updated values of" in msg
    assert f"the last good checkpoint is step 4 ({wd}/checkpoints/4)" in msg and "train.nonfinite" in msg
    assert _checkpoint_steps(wd) == [2, 4]  # nothing saved after the divergence
    assert not os.path.exists(os.path.join(wd, "run.lock"))  # the lock is released on the way out

    with pytest.raises(guards.Diverged, match=r"step 7: .*3 non-finite steps in a row"):
        loop.train_and_evaluate(
            tiny_config(num_steps=8, lr=1e39, log_every=1, nonfinite="skip", max_nonfinite_skips=3), wd
        )
    records = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
    skipped = [(r["step"], r["skipped_steps"]) for r in records if r["prefix"] == "train" and r["step"] > 4]
    assert skipped[-2:] == [(5, 1), (6, 1)] and "loss" not in records[-1]  # nothing finite to average
    assert _checkpoint_steps(wd) == [2, 4, 6]  # step 6 = step 4's parameters: both updates skipped
    _all_checkpoints_finite(tiny_config(), wd)


def test_restore_params_refuses_nonfinite_parameters(tmp_path):
    c = tiny_config()
    mesh = sharding.make_mesh(c.mesh)
    state, _ = train.create_train_state(c, mesh)
    with checkpoint.Checkpointer(tmp_path, async_save=False) as ck:
        nan_state = state.replace(ema_params=jax.tree.map(lambda x: x * jnp.nan, state.ema_params))
        with pytest.raises(
            guards.Diverged, match="refusing to save checkpoint step 3: non-finite values in ema_params/"
        ):
            ck.save(3, nan_state, {"index": 3})
        assert ck.all_steps() == []
        # A checkpoint written without the guard (an older version of this code) is refused on read.
        ck._manager.save(
            3,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(nan_state), data=ocp.args.JsonSave({"index": 3})
            ),
        )
    with pytest.raises(
        guards.Diverged,
        match="checkpoint step 3 .* holds non-finite EMA parameters "
        r"\(ema_params/block_0",
    ):
        runs.restore_params(c, str(tmp_path))
    params, step, _, _ = runs.restore_params(c, str(tmp_path), use_ema=False)  # the raw ones are fine
    assert step == 3
