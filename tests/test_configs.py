"""The config schema documents every field, and every config in configs/ (experiments and their
variants included) loads, uses only schema fields, validates, and documents a working command."""

from __future__ import annotations

import ast
import glob
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_dict

from conftest import ROOT, load_config
from mdm_jax import cli, config as config_lib, experiments, sampling, sharding, train
from mdm_jax.data import pipeline

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
NAMES = [os.path.basename(p)[:-3] for p in CONFIGS]
GPT2_VOCAB = 50257


def _variants(name):
    """(experiment config name, variant) of every configs/experiments/*.py variant (`:variant`)."""
    path = os.path.join(ROOT, "configs", "experiments", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_variants_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Variants: the keys of _BASES (variant -> base config file), or VARIANTS for an experiment whose
    # variants all start from config.base() (table2: its model comes from a checkpoint).
    return [(name, v) for v in getattr(module, "VARIANTS", None) or module._BASES]


EXPERIMENT_VARIANTS = [nv for n in sorted(config_lib.EXPERIMENT_FIELDS) for nv in _variants(n)]


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
    assert {"quickstart", "quickstart_arm", "owt_mdm_small", "owt_arm_small", "text8_mdm", "lm1b_mdm"} <= set(
        NAMES
    )


@pytest.mark.parametrize("name", NAMES)
def test_config_uses_schema_fields_and_validates(name, gpt2_dir):
    c = _load(name)
    _assert_schema_fields(c)

    if c.data.tokenizer == "gpt2":
        with pytest.raises(ValueError, match="gpt2_vocab_dir"):  # a clear error without the files
            pipeline.validate(c)
        c.data.gpt2_vocab_dir = gpt2_dir
    tok = pipeline.validate(c, process_count=1)
    assert tok.vocab_size == c.model.vocab_size  # the model's vocabulary is exactly the tokenizer's
    train.check_config(c)
    assert c.data.seq_len <= c.model.max_len
    assert c.model.emb_dim % c.model.num_heads == 0
    assert c.sampling.precision in sampling.PRECISIONS
    arm = c.objective.kind == "arm"
    assert (c.sampling.method == "autoregressive") == arm
    # The batch splits over a data-parallel mesh of 8 devices (a GPU node / small pod slice).
    mesh = sharding.mesh_shape(c.mesh, 8)
    assert c.train.batch_size % (mesh[0] * mesh[1]) == 0


def _assert_schema_fields(c):
    """Only schema fields (a typo would otherwise add a silent new field), each of its schema type."""
    schema = config_lib.fields(c.experiment.name)
    leaves = _leaves(c)
    assert set(leaves) == set(schema), set(leaves) ^ set(schema)
    for k, v in leaves.items():
        default = schema[k].default
        assert type(v) is type(default) or (isinstance(default, float) and isinstance(v, int)), (k, v)


def test_schema_documents_every_field_with_type_and_default():
    for name in ("", *config_lib.EXPERIMENT_FIELDS):
        fields = config_lib.fields(name)
        assert _leaves(config_lib.base(name)).keys() == fields.keys()
        for path, f in fields.items():
            assert f.doc.strip() and "\n" not in f.doc, path
            assert isinstance(f.default, (bool, int, float, str, tuple)), path
            assert f.type_name, path
    # Experiment fields are their own: none shadows a field of another group by accident.
    assert all(k not in config_lib.SCHEMA for k in config_lib.EXPERIMENT_FIELDS)
    assert experiments.EXPERIMENTS == tuple(config_lib.EXPERIMENT_FIELDS)


def test_describe_lists_every_field_with_its_description_and_changed_defaults():
    c = _experiment("sampler_speed", "tiny")
    text = config_lib.describe(c)
    lines = {ln.split(" = ")[0].strip(): ln for ln in text.splitlines() if " = " in ln}
    assert set(lines) == set(config_lib.fields("sampler_speed"))
    for path, f in config_lib.fields("sampler_speed").items():
        assert f.doc in lines[path], path
    assert "[default" not in lines["objective.kind"]  # unchanged: no default shown
    assert "[default (256, 50257)]" in lines["experiment.vocab_sizes"]  # changed by the variant
    assert "# sampling: " in text and "# experiment: " in text  # group headers
    with c.unlocked():
        c.train.stale = 1
    assert "train.stale" in config_lib.describe(c).split("not in the schema")[1]


def test_print_config_flag_prints_the_resolved_config():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mdm_jax.main",
            "--config=configs/quickstart.py",
            "--config.train.lr=0.002",
            "--print_config",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("train.lr "))
    assert "0.002" in line and "peak AdamW learning rate" in line and "[default 0.0003]" in line


def _experiment(name, variant):
    return config_lib.load_file(os.path.join(ROOT, "configs", "experiments", f"{name}.py"), variant)


@pytest.mark.parametrize("name,variant", EXPERIMENT_VARIANTS)
def test_experiment_config_uses_its_schema_fields(name, variant):
    c = _experiment(name, variant)
    assert c.experiment.name == name
    _assert_schema_fields(c)
    # The JSON a run records (config.json, the results' metadata) reads back as the same config.
    back = config_lib.from_dict(json.loads(c.to_json()))
    assert back.to_dict() == c.to_dict()


def _cli_value(v) -> str:
    return str(v).lower() if isinstance(v, bool) else (repr(v) if isinstance(v, tuple) else str(v))


@pytest.mark.parametrize("name", sorted(config_lib.EXPERIMENT_FIELDS))
def test_every_experiment_field_can_be_overridden_on_the_command_line(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    c = _experiment(name, None)
    args = ["m", f"--config=configs/experiments/{name}.py", "--workdir=w"]
    args += [f"--config.{k}={_cli_value(v)}" for k, v in _leaves(c).items() if k != "experiment.name"]
    assert cli.unknown_override_message(args) is None
    fv = flags.FlagValues()
    cli.define_flags(fv, sys_argv=args)
    fv(args)
    assert fv.config.to_dict() == c.to_dict()
    # Lists in their natural command-line form: numbers and names separated by commas.
    args = ["m", f"--config=configs/experiments/{name}.py", "--workdir=w"]
    lists = {
        k: v for k, v in _leaves(c).items() if isinstance(v, tuple) and v and not isinstance(v[0], tuple)
    }
    args += [f"--config.{k}={','.join(map(str, v))}" for k, v in lists.items()]
    fv = flags.FlagValues()
    cli.define_flags(fv, sys_argv=args)
    fv(args)
    for k, v in lists.items():
        got = experiments.parse_list(_leaves(fv.config)[k], type(v[0]), k)
        assert tuple(got) == v, k


def _docstring_commands(path) -> list[list[str]]:
    doc = ast.get_docstring(ast.parse(open(path).read())) or ""
    doc = doc.replace("\\\n", " ")
    return [shlex.split(m.group(0)) for m in re.finditer(r"python -m mdm_jax\.main[^\n]*", doc)]


@pytest.mark.parametrize("name", NAMES + [f"experiments/{n}" for n in sorted(config_lib.EXPERIMENT_FIELDS)])
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
        assert fv.workdir and fv["config"].config_filename.partition(":")[0] == f"configs/{name}.py"
        assert isinstance(fv.config, config_dict.ConfigDict) and fv.config.is_locked
        for a in args:  # overrides in the command really reached the config
            m = re.match(r"--config\.([\w.]+)=(.*)", a)
            if m:
                node = fv.config
                for part in m.group(1).split("."):
                    node = node[part]
                assert _cli_value(node) == m.group(2) or str(node) == m.group(2)


def test_pairs_differ_only_in_objective_and_sampler():
    skip = ("objective.", "sampling.method", "model.time_conditioning", "train.sample_at_end")
    for mdm, arm in (("quickstart", "quickstart_arm"), ("owt_mdm_small", "owt_arm_small")):
        a, b = _leaves(_load(mdm)), _leaves(_load(arm))
        diff = {k for k in a if a[k] != b[k] and not k.startswith(skip)}
        assert not diff, (mdm, arm, diff)
        assert _load(arm).objective.kind == "arm" and _load(mdm).objective.kind != "arm"
