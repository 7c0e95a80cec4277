"""Explicit PRNG streams.

One root key per run: `root_key(config.seed)`. Every random draw of the package uses a key
derived from it by folding in a *purpose* and then integers such as the step, so that:
- no key is ever reused for two purposes (a purpose is a stable 31-bit hash of its name);
- a draw depends only on (seed, purpose, step, ...), never on the number of devices or on
  how many draws happened before it (resumed runs replay exactly).
Training, evaluation, sampling and the experiments all start from `root_key(config.seed)`; a
TrainState also carries the root key's data, so that a checkpoint records the run it belongs to
and a resume under another seed is refused (`train.check_root_key`).

Below a purpose, a function may split further with sub-purposes (`fold(key, "mask")`).
Samplers fold only integers below the key they are given (the row, then the step:
`sampling.plumbing.row_keys`), so a row's sample does not depend on the batch it is drawn in.

`PURPOSES` lists every purpose the package and its benchmarks fold in, with the integers that
follow it; `tests/test_rng.py` fails when code folds in a purpose that is not listed.
"""

from __future__ import annotations

import zlib

import jax
import numpy as np

PURPOSES = {
    # the training run (root: root_key(config.seed))
    "params": "() parameter initialisation",
    "train": "(step,) a train step's draws: t / n, masks, dropout",
    "eval": "(draw, batch) Monte Carlo draws of the validation NELBO (train loop: draw 0)",
    "sample": "(batch_index,) one sampler call of --mode=sample",
    "data": "(epoch,) data shuffling (numpy_seed: a numpy generator's seed)",
    # sub-purposes below a train / eval key (mdm_jax.objectives, mdm_jax.train)
    "t": "() the estimator's times t, or mask counts n",
    "mask": "() which positions are masked",
    "dropout": "() or (micro_batch,) dropout of the network",
    # experiments (root: root_key(config.seed))
    "precision_sweep": "(sampler, precision, num_steps) one cell of the precision sweep",
    "batch": "(batch_index,) one sampler batch below a precision_sweep cell's key",
    "mdm_vs_arm_mdm": "(temperature_index, batch_index) MDM samples of mdm_vs_arm",
    "mdm_vs_arm_arm": "(temperature_index, batch_index) ARM samples of mdm_vs_arm",
    "mdm_vs_arm_speed": "(seq_len, repeat) mdm_vs_arm's timed sampler calls",
    "time_agnostic_kl": "(ratio_index,) the masks of time_agnostic's KL inputs",
    "table2": '(row_index,) one row of table2 (its batches below: "batch", batch_index)',
    "sampler_speed": "(vocab, sampler, num_steps, repeat) sampler_speed's timed MDM sampler calls",
    "sampler_speed_arm": "(seq_len, repeat) sampler_speed's timed ARM decoding calls",
    "params_mdm": "(vocab,) sampler_speed's untrained MDM",
    "params_arm": "() sampler_speed's untrained ARM",
    # benchmarks/numerics.py (root: root_key(0))
    "cap": "(precision_index,) Gumbel-cap draws",
    "tail": "(precision_index,) tail-rate draws",
    "same": "(precision_index,) the cross-device identical-token check",
    "zipf": "() one-step draws from a Zipf law (below a same key)",
    "fhs": "() first-hitting samples (below a same key)",
    "numerics-sample/<network>": "() the numerics report's samples of one network (mdm_jax/numerics)",
    "numerics-weights": "numpy_seed(seed, ...): the numerics report's redrawn network weights",
    "numerics-inputs": "numpy_seed(seed, ...): the numerics report's fixed network inputs",
}


def purpose_id(purpose: str) -> int:
    """A stable (process- and run-independent) 31-bit id for a purpose name."""
    return zlib.crc32(purpose.encode("utf-8")) & 0x7FFFFFFF


def root_key(seed: int) -> jax.Array:
    """The root key of a run; every stream folds a purpose into it (see the module docstring)."""
    return jax.random.key(int(seed))


def fold(key: jax.Array, purpose: str, *indices) -> jax.Array:
    """key -> key folded with the purpose and then each index (ints or traced int32 scalars)."""
    key = jax.random.fold_in(key, purpose_id(purpose))
    for i in indices:
        key = jax.random.fold_in(key, i)
    return key


def numpy_seed(seed: int, purpose: str, *indices: int) -> np.random.SeedSequence:
    """The host-side counterpart for numpy generators (data shuffling)."""
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, purpose_id(purpose), *map(int, indices)])
