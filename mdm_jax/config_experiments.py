"""The `experiment.*` fields of each experiment (`EXPERIMENT_FIELDS`), declared like `SCHEMA`.

`mdm_jax.config` adds an experiment's fields to the schema's experiment group (`base(name)`,
`schema(name)`); each experiment module in `mdm_jax/experiments/` reads them from
`config.experiment`.
"""

from __future__ import annotations

from mdm_jax.config_fields import Field

F = Field
EXPERIMENT_FIELDS: dict[str, dict[str, Field]] = {
    "precision_sweep": {
        "model": F("checkpoint", "checkpoint (a trained MDM workdir) | reference (exact head+tail model)"),
        "checkpoint_workdir": F("workdirs/quickstart", "model=checkpoint: the MDM workdir"),
        "evaluator_workdir": F("workdirs/quickstart_arm", "model=checkpoint: ARM workdir scoring gen PPL"),
        "samplers": F(
            ("ancestral", "factorized", "first_hitting", "parallel"),
            "ancestral ((V+1)-way) | factorized | first_hitting | parallel (k tokens per call)",
        ),
        "precisions": F(
            ("float32-pytorch", "float32", "float32-high", "bfloat16", "float64"),
            "sampling precisions swept (mdm_jax.sampling.PRECISIONS)",
        ),
        "steps": F((128, 512, 1280), "ancestral steps N swept (first-hitting does not depend on N)"),
        "predict_t": F(0.5, "time t of the one-step prediction"),
        "predict_points": F(16, "law evaluations per predicted run"),
        "predict_low_precision": F(True, "also predict bfloat16/float16 runs (exact enumeration, slow)"),
        "reference_vocab": F(256, "model=reference: vocabulary size V"),
        "reference_head": F(4, "model=reference: number of head tokens"),
        "reference_tail_mass": F(0.5, "model=reference: probability of the tail"),
        "reference_seed": F(0, "model=reference: seed of the law and of its entropy estimate"),
    },
    "sampler_speed": {
        "vocab_sizes": F((256, 50257), "vocabulary sizes V timed"),
        "steps": F(
            ((16, 128, 1024, 10000), (16, 64, 256, 1024)),
            "ancestral N timed: one tuple per vocab_sizes entry, or one flat tuple for all",
        ),
        "predict_steps": F((10000,), "further N the fitted cost model extrapolates to (not run)"),
        "repeats": F(2, "timed runs per cell after one warm-up run (the best is kept)"),
        "arm_vocab": F(256, "vocabulary of the ARM cache timing"),
        "arm_lengths": F((32, 64, 128, 256), "sequence lengths of the ARM cache timing (() = skip it)"),
    },
    "time_agnostic": {
        "variants": F(
            ("tc_continuous", "tf_continuous", "tf_discrete", "arm"),
            "models trained: tc_continuous, tf_continuous, tf_discrete, tc_discrete, arm",
        ),
        "num_steps": F(300, "training budget of each variant (0 = train.num_steps)"),
        "kl_ratios": F((0.15, 0.5, 0.85), "mask ratios n/L of the fixed inputs of the KL-vs-t probe"),
        "kl_num_times": F(24, "points of the t grid of the KL probe"),
        "kl_num_sequences": F(16, "validation sequences per mask ratio in the KL probe"),
    },
    "table2": {
        "mdlm_dir": F("checkpoints/mdlm-owt", "Hugging Face MDLM directory (kuleshov-group/mdlm-owt)"),
        "evaluator_dir": F("checkpoints/gpt2-large", "Hugging Face GPT-2 directory scoring the samples"),
        "rows": F(
            ("mdlm_float32", "mdlm_float64", "mdlm_float64_truncated", "fhs_float64", "parallel_fhs_float64"),
            "rows of the table (mdm_jax/experiments/table2.py ROWS)",
        ),
        "mdlm_dtype": F("float32", "compute dtype of the MDLM network"),
        "evaluator_dtype": F("float32", "compute dtype of the GPT-2 evaluator"),
    },
    "mdm_vs_arm": {
        "mdm_workdir": F("", 'a trained MDM workdir ("" = train the config\'s MDM in workdir/runs/mdm)'),
        "arm_workdir": F("", 'a trained ARM workdir ("" = train the MDM\'s ARM twin in workdir/runs/arm)'),
        "num_steps": F(300, "training budget of each model trained here (0 = train.num_steps)"),
        "evaluator": F("train", "gen PPL scorer: train (a second ARM, another seed) | self | an ARM workdir"),
        "temperatures": F((0.7, 0.8, 0.9, 1.0), "sampling temperatures of both models"),
        "speed_lengths": F((), "lengths L of the timing (() = 16, 32, ... up to model.max_len)"),
        "speed_batch": F(4, "sequences per sampler call in the timing"),
        "speed_repeats": F(2, "timed runs per length after one warm-up run (the best is kept)"),
    },
}
