"""Every config in configs/ loads, uses only schema fields, validates, and documents a working command."""

from __future__ import annotations

import ast
import glob
import json
import os
import re
import shlex

import pytest
from absl import flags
from ml_collections import config_dict

from conftest import ROOT, load_config
from mdm_jax import cli, config as config_lib, sharding, train
from mdm_jax.data import pipeline

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
NAMES = [os.path.basename(p)[:-3] for p in CONFIGS]
GPT2_VOCAB = 50257


def _load(name):
    return load_config(f"configs/{name}.py")


def _leaves(c, prefix=""):
    out = {}
    for k, v in c.items():
        if isinstance(v, config_dict.ConfigDict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """Vocabulary files in the GPT-2 format with GPT-2's size (50,257 ids, <|endoftext|> last).

    Only the vocabulary size and separator matter for config validation; no merges are needed.
    """
    d = tmp_path_factory.mktemp("gpt2")
    vocab = {f"t{i}": i for i in range(GPT2_VOCAB - 1)}
    vocab["<|endoftext|>"] = GPT2_VOCAB - 1
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    return str(d)


def test_all_expected_configs_exist():
    assert {"quickstart", "quickstart_arm", "owt_mdm_small", "owt_arm_small", "text8_mdm",
            "lm1b_mdm"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_config_uses_schema_fields_and_validates(name, gpt2_dir):
    c = _load(name)
    base = _leaves(config_lib.base())
    leaves = _leaves(c)
    # A config may only override schema fields (a typo would otherwise add a silent new field).
    assert set(leaves) == set(base), set(leaves) ^ set(base)
    for k, v in leaves.items():
        assert type(v) is type(base[k]) or (isinstance(base[k], float) and isinstance(v, int)), (k, v)

    if c.data.tokenizer == "gpt2":
        with pytest.raises(ValueError, match="gpt2_vocab_dir"):  # a clear error without the files
            pipeline.validate(c)
        c.data.gpt2_vocab_dir = gpt2_dir
    tok = pipeline.validate(c, process_count=1)
    assert tok.vocab_size == c.model.vocab_size  # the model's vocabulary is exactly the tokenizer's
    train.check_config(c)
    assert c.data.seq_len <= c.model.max_len
    assert c.model.emb_dim % c.model.num_heads == 0
    assert c.sampling.precision in config_lib.PRECISIONS
    arm = c.objective.kind == "arm"
    assert (c.sampling.method == "autoregressive") == arm
    # The batch splits over a data-parallel mesh of 8 devices (a GPU node / small pod slice).
    mesh = sharding.mesh_shape(c.mesh, 8)
    assert c.train.batch_size % (mesh[0] * mesh[1]) == 0


def _docstring_commands(path) -> list[list[str]]:
    doc = ast.get_docstring(ast.parse(open(path).read())) or ""
    doc = doc.replace("\\\n", " ")
    return [shlex.split(m.group(0)) for m in re.finditer(r"python -m mdm_jax\.main[^\n]*", doc)]


@pytest.mark.parametrize("name", NAMES)
def test_docstring_command_flags_parse(name, monkeypatch):
    path = os.path.join(ROOT, "configs", f"{name}.py")
    commands = _docstring_commands(path)
    assert commands, f"configs/{name}.py docstring has no `python -m mdm_jax.main ...` command"
    monkeypatch.chdir(ROOT)  # the commands are written for the repository root
    for argv in commands:
        args = argv[2:]  # drop "python -m"
        assert cli.unknown_override_message(args) is None
        fv = flags.FlagValues()
        cli.define_flags(fv, sys_argv=args)
        fv(args)
        assert fv.workdir and fv["config"].config_filename == f"configs/{name}.py"
        assert isinstance(fv.config, config_dict.ConfigDict) and fv.config.is_locked
        for a in args:  # overrides in the command really reached the config
            m = re.match(r"--config\.([\w.]+)=(.*)", a)
            if m:
                node = fv.config
                for part in m.group(1).split("."):
                    node = node[part]
                assert str(node) == m.group(2)


def test_pairs_differ_only_in_objective_and_sampler():
    skip = ("objective.", "sampling.method", "model.time_conditioning", "train.sample_at_end")
    for mdm, arm in (("quickstart", "quickstart_arm"), ("owt_mdm_small", "owt_arm_small")):
        a, b = _leaves(_load(mdm)), _leaves(_load(arm))
        diff = {k for k in a if a[k] != b[k] and not k.startswith(skip)}
        assert not diff, (mdm, arm, diff)
        assert _load(arm).objective.kind == "arm" and _load(mdm).objective.kind != "arm"
