"""MDLM's original sampler (`sampling.mdlm_ancestral`) against its exact laws.

The whole procedure (MDLM's time grid, the unnormalised (V+1)-way step, the cache, the greedy noise
removal) is checked by a chi-square test of the sampled sequences against the exact law of that
procedure on an enumerable joint (mdm_jax/reference/joint.py), enumerated here independently.
The draw itself (`race`) is checked on a coarse uniform grid (6 bits) where its finite-precision
law is far from the true one and can be enumerated over every uniform tuple.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax import sampling
from mdm_jax.reference.joint import ReferenceJoint, _conditionals, chisquare_pvalue
from mdm_jax.sampling import mdlm

ALPHA, REJECT = 1e-3, 1e-8  # a correct law passes at ALPHA; the power checks reject at REJECT
V, L, B = 3, 3, 20000
REF = ReferenceJoint(V, L, seed=1)


def _run(seed, n, b=B, **kw):
    return sampling.mdlm_ancestral(
        REF.denoise_fn, jax.random.key(seed), batch_size=b, seq_len=L, mask_id=V, num_steps=n, **kw
    )


def mdlm_law(n, eps, noise_removal=True, init=None):
    """Exact law of MDLM's procedure on REF (float64 arithmetic of the grid, real-valued draws).

    Each step every masked position stays masked with probability s / (d + s) or takes token v
    with probability d mu_l(v | x) / (d + s) (q = [d mu, s] normalised); at the end every position
    still masked takes argmax mu_l(. | x), all from the same x.
    """
    _, s, d = mdlm.time_grid(n, eps, np.float64)
    start = tuple([V] * L) if init is None else tuple(int(v) for v in init)
    dist = {start: 1.0}
    for d_i, s_i in zip(d, s):
        new = {}
        for x, px in dist.items():
            masked = [pos for pos in range(L) if x[pos] == V]
            mu = _conditionals(REF, x)
            options = [
                [(V, s_i / (d_i + s_i))] + [(v, d_i * mu[pos, v] / (d_i + s_i)) for v in range(V)]
                for pos in masked
            ]
            for combo in itertools.product(*options):
                y, q = list(x), px
                for pos, (v, pv) in zip(masked, combo):
                    y[pos] = v
                    q *= pv
                new[tuple(y)] = new.get(tuple(y), 0.0) + q
        dist = new
    out = np.zeros(V**L)
    for x, px in dist.items():
        if V in x:
            if not noise_removal:
                continue
            greedy = np.argmax(_conditionals(REF, x), axis=1)
            x = tuple(greedy[pos] if x[pos] == V else x[pos] for pos in range(L))
        out[REF.index(np.array([x]))[0]] += px
    return out


@pytest.mark.parametrize("precision", ["float64", "float32-pytorch"])
def test_follows_the_exact_law_of_mdlms_procedure(precision):
    # eps = 0.2 (MDLM: 1e-5) ends the loop at s = 0.2, so half of the positions still masked at the
    # last step are filled greedily: the noise-removal step carries real weight in the law.
    n, eps = 4, 0.2
    tokens, st = _run(1, n, precision=precision, eps=eps)
    tokens = np.asarray(tokens)
    assert not (tokens == V).any() and st["noise_removal"] and st["precision"] == precision
    law = mdlm_law(n, eps)
    assert chisquare_pvalue(REF.index(tokens), law) > ALPHA
    # Power: the same samples reject the law without the greedy completion (renormalised), and
    # the law of the sampler's exact limit (the joint itself).
    without = mdlm_law(n, eps, noise_removal=False)
    assert chisquare_pvalue(REF.index(tokens), without / without.sum()) < REJECT
    assert chisquare_pvalue(REF.index(tokens), REF.probs) < REJECT


def test_truncated_uniforms_and_prompts_follow_the_law():
    # float64 arithmetic on 24-bit uniforms (Table 2's third row): at these probabilities the grid
    # changes nothing measurable, so the exact law holds; set positions are never touched.
    n, eps = 3, 0.1
    init = np.tile(np.array([[V, 2, V]], np.int32), (B, 1))
    tokens, st = _run(2, n, precision="float64", uniform_bits=24, eps=eps, init=jnp.asarray(init))
    tokens = np.asarray(tokens)
    assert st["uniform_bits"] == 24 and (tokens[:, 1] == 2).all()
    assert chisquare_pvalue(REF.index(tokens), mdlm_law(n, eps, init=init[0])) > ALPHA


def test_normalized_log_probs_are_only_exponentiated():
    # MDLM's forward() returns normalised SUBS log-probabilities, which MDLM only exponentiates.
    # normalized=True does the same; raw logits need normalized=False (a constant shift of the
    # logits is then removed), and the shifted logits taken as log-probabilities change the law.
    n, eps, b = 4, 0.2, 8000
    shifted = lambda x, t: REF.denoise_fn(x, t) + 3.0  # noqa: E731
    base, st = _run(6, n, b=b, eps=eps, normalized=True)
    assert st["normalized"]
    same, _ = sampling.mdlm_ancestral(
        shifted, jax.random.key(6), batch_size=b, seq_len=L, mask_id=V, num_steps=n, eps=eps
    )
    assert np.mean(np.asarray(base) == np.asarray(same)) > 0.999  # equal up to float32 rounding
    assert chisquare_pvalue(REF.index(np.asarray(base)), mdlm_law(n, eps)) > ALPHA
    wrong, _ = sampling.mdlm_ancestral(
        shifted, jax.random.key(6), batch_size=b, seq_len=L, mask_id=V, num_steps=n, eps=eps, normalized=True
    )
    assert chisquare_pvalue(REF.index(np.asarray(wrong)), mdlm_law(n, eps)) < REJECT


def test_time_grid_is_mdlms():
    for n in (1, 7, 2048):
        t, s, d = mdlm.time_grid(n)
        assert t.dtype == s.dtype == d.dtype == np.float32 and t.shape == (n + 1,) and s.shape == (n,)
        # torch's two-sided linspace hits both ends exactly, and is monotone.
        assert t[0] == np.float32(1.0) and t[-1] == np.float32(1e-5) and np.all(np.diff(t) < 0)
        np.testing.assert_allclose(t, np.linspace(1.0, 1e-5, n + 1), rtol=0, atol=2e-7)
        # s = t - dt with dt the float64 (1 - eps)/N rounded once to float32, then t - s.
        assert np.array_equal(s, t[:-1] - np.float32((1 - 1e-5) / n))
        assert np.array_equal(d, t[:-1] - s)
    _, s, _ = mdlm.time_grid(2048)
    assert 0 < s[-1] < 2e-5  # MDLM's loop stops just short of 0: noise removal does the rest


def test_network_times_cache_and_nfe():
    n, b = 24, 2
    calls = []

    def recording(x, t):
        jax.debug.callback(lambda xx, tt: calls.append((np.asarray(xx).copy(), np.asarray(tt).copy())), x, t)
        return REF.denoise_fn(x, t)

    tok_nc, st_nc = sampling.mdlm_ancestral(
        recording, jax.random.key(3), batch_size=b, seq_len=L, mask_id=V, num_steps=n, cache=False
    )
    uncached = list(calls)
    calls.clear()
    tok_c, st_c = sampling.mdlm_ancestral(
        recording, jax.random.key(3), batch_size=b, seq_len=L, mask_id=V, num_steps=n, cache=True
    )
    # Without the cache: one call per step at t_i, then the noise-removal call at t = eps.
    t, _, _ = mdlm.time_grid(n)
    assert st_nc["nfe"] == n + 1 == len(uncached)
    assert np.array_equal(np.stack([c[1][0] for c in uncached]), t)
    # The cache is exact for a time-free network: the same key gives the same tokens.
    np.testing.assert_array_equal(tok_c, tok_nc)
    # MDLM's rule: a call at step 0 and after every step that changed a token anywhere in the batch.
    steps = [c[0] for c in uncached[:n]]
    changed = sum(not np.array_equal(a, c) for a, c in zip(steps, steps[1:]))
    assert st_c["nfe"] == len(calls) == 1 + changed + 1 < n + 1


def _race_law(q, bits, dtype):
    """Exact law of `race` over every tuple of grid uniforms (same float ops, numpy)."""
    k = np.arange(2**bits, dtype=np.float64) * 2.0**-bits
    u = k.astype(dtype)
    shift = dtype(1e-10)
    denom = shift - np.log(u + shift)  # [K]
    grids = np.meshgrid(*([denom] * len(q)), indexing="ij")  # C x [K, ..., K]
    ratio = np.stack([dtype(qi) / g for qi, g in zip(q, grids)], axis=-1)
    win = np.argmax(ratio, axis=-1)
    return np.bincount(win.ravel(), minlength=len(q)) / win.size


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_race_follows_its_grid_law(dtype):
    # Unnormalised q with one small category, uniforms on a 2^-6 grid: the grid law gives the small
    # category ~0.47x its true share (see the power check), the draw must follow the grid law.
    bits, n = 6, 200_000
    q = np.array([0.6, 0.25, 0.012])
    law = _race_law(q, bits, dtype)
    ctx = jax.enable_x64(True) if dtype == np.float64 else jax.enable_x64(False)
    with ctx:
        qq = jnp.broadcast_to(jnp.asarray(q, dtype), (n, 3))
        draws = np.asarray(jax.jit(lambda key: mdlm.race(key, qq, bits))(jax.random.key(4)))
    counts = np.bincount(draws, minlength=3)
    assert chisquare_pvalue(draws, law) > ALPHA, (counts / n, law)
    assert chisquare_pvalue(draws, q / q.sum()) < REJECT
    assert law[2] < 0.6 * q[2] / q.sum()


def test_subs_probs_round_like_torch_in_bfloat16():
    logits = jax.random.normal(jax.random.key(5), (4, 50)) * 3
    p32 = mdlm.subs_probs(logits, "float32-pytorch")
    np.testing.assert_allclose(p32, jax.nn.softmax(logits, axis=-1), rtol=2e-6)
    pbf = mdlm.subs_probs(logits.astype(jnp.bfloat16), "float32-pytorch")
    assert pbf.dtype == jnp.float32
    # Every value is a bfloat16 number (each op rounded); log p within bfloat16's relative precision
    # (2^-8) of the true log-probabilities of the same bfloat16 logits, and not float32's result.
    assert np.array_equal(pbf, pbf.astype(jnp.bfloat16).astype(jnp.float32))
    true = jax.nn.log_softmax(logits.astype(jnp.bfloat16).astype(jnp.float32), axis=-1)
    np.testing.assert_allclose(np.log(pbf), true, rtol=2**-7, atol=2**-6)
    assert np.abs(np.log(pbf) - true).max() > 1e-3
    with jax.enable_x64(True):
        assert mdlm.subs_probs(logits, "float64").dtype == jnp.float64


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="sampling.precision"):
        _run(0, 2, b=2, precision="float32")
    with pytest.raises(ValueError, match="sampling.uniform_bits"):
        _run(0, 2, b=2, precision="float32-pytorch", uniform_bits=30)
    with pytest.raises(ValueError, match="num_steps"):
        _run(0, 0, b=2)


def test_sample_mode_checks_the_mdlm_settings():
    from mdm_jax import config as config_lib, generate

    c = config_lib.base()
    c.sampling.method, c.sampling.precision = "mdlm_ancestral", "float64"
    assert generate.check_method(c) == "mdlm_ancestral"
    for field, value, match in (
        ("objective.schedule", "cosine", "objective.schedule"),
        ("sampling.temperature", 0.9, "sampling.temperature"),
        ("sampling.precision", "bfloat16", "sampling.precision"),
    ):
        bad = config_lib.base()
        bad.sampling.method, bad.sampling.precision = "mdlm_ancestral", "float64"
        section, name = field.split(".")
        bad[section][name] = value
        with pytest.raises(ValueError, match=match):
            generate.check_method(bad)
    other = config_lib.base()
    other.sampling.uniform_bits = 24  # only MDLM's sampler has this setting
    with pytest.raises(ValueError, match="sampling.uniform_bits"):
        generate.check_method(other)


@pytest.mark.slow
def test_sample_mode_runs_mdlms_sampler_on_a_project_model():
    from mdm_jax import config as config_lib, generate, models, sharding

    c = config_lib.base()
    c.model.update(vocab_size=16, max_len=8, num_layers=1, num_heads=2, emb_dim=16, mlp_dim=32)
    c.data.seq_len = 8
    c.sampling.update(method="mdlm_ancestral", precision="float32-pytorch", num_steps=16, cache=False)
    model = models.build(c)
    init = jax.jit(model.init, static_argnames="deterministic")  # eager init compiles op by op
    params = init(
        jax.random.key(0), jnp.zeros((1, 8), jnp.int32), jnp.zeros((1,), jnp.float32), deterministic=True
    )["params"]
    run, seq_len, _ = generate.make_sampler(c, params, sharding.make_mesh(c.mesh))
    tokens, st = run(jax.random.key(1), 2)
    tokens = np.asarray(tokens)
    assert tokens.shape == (2, 8) and tokens.max() < 16 and st["method"] == "mdlm_ancestral"
    assert st["nfe"] == 17 and st["uniform_bits"] == 24  # no cache: 16 steps + noise removal
