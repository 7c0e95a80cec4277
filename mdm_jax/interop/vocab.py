"""A tokenizer must number tokens exactly as the model it feeds: same vocabulary size, same end-of-text."""

from __future__ import annotations

__all__ = ["check_tokenizer"]


def check_tokenizer(tok, *, vocab_size: int, eot_id: int | None = None, model: str, field: str) -> None:
    """Raises unless `tok` (a `mdm_jax.data.tokenizers` tokenizer) has the model's `vocab_size` ids
    (and its end-of-text id `eot_id`, when the model has one). `model` names the model in the
    message, `field` the config field or argument that chose the tokenizer."""
    problems = []
    if tok.vocab_size != vocab_size:
        problems.append(f"it has {tok.vocab_size} token ids, the model {vocab_size}")
    if eot_id is not None and tok.eot_id != eot_id:
        problems.append(f"its end-of-text id is {tok.eot_id}, the model's {eot_id}")
    if problems:
        raise ValueError(
            f"{field}: the {tok.name!r} tokenizer does not match {model}: "
            + "; ".join(problems)
            + ". Token ids would mean different words; use the tokenizer the model was trained with "
            "(for GPT-2 and MDLM OpenWebText: data.tokenizer='gpt2' with the GPT-2 vocabulary, "
            "50,257 ids, end-of-text 50256; see mdm_jax/data/tokenizers.py)."
        )
