"""A config file that reads a workdir's `config.json`: `--config=mdm_jax/saved_config.py:WORKDIR`.

`--mode=sample` and `--mode=eval` use it when no `--config` is given, so a trained run is sampled
or evaluated with exactly the config it was trained with, plus any `--config.<field>=...`
overrides on the command line (typed like the saved fields).
"""

from mdm_jax import runs


def get_config(workdir: str):
    return runs.workdir_config(workdir)
