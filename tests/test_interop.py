"""Parity of the GPT-2 and MDLM loaders with the reference implementations, and their errors.

`tests/fixtures/` holds small random-weight checkpoints in the real Hugging Face layouts with the
outputs of the reference code (transformers' GPT2LMHeadModel; MDLM's DiT and SUBS) on fixed
inputs; `tests/fixtures/README.md` gives the arithmetic and justifies the tolerances used here
(float32 with the highest matmul precision: logits <= 5e-5, NLL <= 1e-5; SUBS unmasked rows exact).
No torch is needed to run these tests.

The fixtures were made with torch 2.14.1 and transformers 5.24.0 following the README's
"Production" sections. These one-line commands redo those steps (in a scratch environment with
`pip install torch==2.14.1 transformers==5.24.0 safetensors numpy einops omegaconf huggingface_hub`,
run on the CPU; they are not run by the test suite, which has no torch). GPT-2, in any directory:

    python -c "import numpy as np,torch,transformers as T;torch.set_num_threads(1);torch.manual_seed(0);c=T.GPT2Config(vocab_size=512,n_positions=64,n_embd=64,n_layer=2,n_head=4,activation_function='gelu_new',layer_norm_epsilon=1e-5,initializer_range=0.2,bos_token_id=511,eos_token_id=511,attn_implementation='eager');m=T.GPT2LMHeadModel(c).eval();[p.data.add_((0.1 if 'ln_' in n and n.endswith('weight') else 0.05)*torch.randn_like(p)) for n,p in m.named_parameters() if ('ln_' in n and n.endswith('weight')) or n.endswith('bias')];x=torch.randint(0,512,(3,64));l=m(input_ids=x).logits.detach();lp=torch.log_softmax(l.double(),-1);nll=-lp[:,:-1].gather(-1,x[:,1:,None])[...,0].mean(1);m.save_pretrained('gpt2-tiny',safe_serialization=True);np.savez('gpt2-tiny/reference.npz',tokens=x.int().numpy(),logits=l.numpy(),nll=nll.numpy(),torch_version=np.array(torch.__version__),transformers_version=np.array(T.__version__))"

MDLM, inside a checkout of github.com/kuleshov-group/mdlm at c112c526d193436838c98d81455ee51f90309470
(flash-attn's two CUDA kernels replaced by the float32 formulas the README states, autocast off,
`torch.jit.script` dropped); TC=False OUT=mdlm-tiny, then TC=True OUT=mdlm-tiny-tc:

    TC=False OUT=mdlm-tiny python -c "import os,sys,json,types,contextlib,numpy as np,torch,torch.nn.functional as F,transformers;from safetensors.torch import save_file;torch.jit.script=lambda f:f;torch.cuda.amp.autocast=lambda **k:contextlib.nullcontext();R=lambda x,c,s:torch.cat([x[...,:x.shape[-1]//2]*c-x[...,x.shape[-1]//2:]*s,x[...,:x.shape[-1]//2]*s+x[...,x.shape[-1]//2:]*c],-1);fa=types.ModuleType('flash_attn');fa.layers=types.ModuleType('flash_attn.layers');fa.layers.rotary=types.ModuleType('flash_attn.layers.rotary');fa.layers.rotary.apply_rotary_emb_qkv_=lambda q,c,s:torch.stack([R(q[:,:,0],c[:,None],s[:,None]),R(q[:,:,1],c[:,None],s[:,None]),q[:,:,2]],2);fa.flash_attn_interface=types.SimpleNamespace(flash_attn_varlen_qkvpacked_func=lambda q,cu,L,p,causal=False:F.scaled_dot_product_attention(*[q.view(-1,L,*q.shape[1:])[:,:,i].transpose(1,2) for i in range(3)]).transpose(1,2).reshape(-1,*q.shape[2:]));sys.modules.update({'flash_attn':fa,'flash_attn.layers':fa.layers,'flash_attn.layers.rotary':fa.layers.rotary});import models.dit as D;torch.set_num_threads(1);torch.manual_seed(0);tc=os.environ['TC']=='True';out=os.environ['OUT'];m=D.DIT(dict(model=dict(hidden_size=64,cond_dim=32,length=64,n_blocks=2,n_heads=4,scale_by_sigma=False,dropout=0.1)),601).eval();w=lambda n:n.endswith('weight');s=lambda n:(1,.1) if 'norm' in n else (0,.2) if 'vocab_embed' in n else (0,.1) if 'sigma_map.mlp.0' in n else (0,.2 if w(n) else .1) if 'sigma_map.mlp.2' in n else (0,.15) if 'attn_qkv' in n else (0,.1) if 'attn_out' in n else (0,.1 if w(n) else .05) if 'mlp.0' in n else (0,.05) if 'mlp.2' in n else (0,.1) if 'adaLN' in n else (0,.2 if w(n) else .1);[p.data.copy_(s(n)[0]+s(n)[1]*torch.randn(p.shape)) for n,p in m.named_parameters()];x=torch.randint(0,600,(3,64));x=torch.where(torch.rand(3,64)<0.5,600,x);sig=-torch.log1p(-(1-1e-3)*(0.1+0.8*torch.rand(3)));raw=m(x,sig if tc else torch.zeros_like(sig)).detach();l=raw.clone();l[:,:,600]+=-1e6;l=l-torch.logsumexp(l,-1,keepdim=True);u=x!=600;l[u]=-1e6;l[u,x[u]]=0;os.makedirs(out,exist_ok=True);save_file({'backbone.'+k:v.contiguous() for k,v in m.state_dict().items()},out+'/model.safetensors',metadata={'format':'pt'});json.dump(dict(architectures=['MDLM'],cond_dim=32,dropout=0.1,hidden_dim=64,model_length=64,model_type='mdlm',n_blocks=2,n_heads=4,time_conditioning=tc,vocab_size=601),open(out+'/config.json','w'),indent=2);np.savez(out+'/reference.npz',tokens=x.int().numpy(),sigma=sig.numpy(),logits_raw=raw.numpy(),log_probs_subs=l.numpy(),torch_version=np.array(torch.__version__),transformers_version=np.array(transformers.__version__))"

(The MDLM command builds `models/dit.py`'s DIT, whose parameters and RNG draws are those of the
Hugging Face `MDLM` wrapper's backbone; it feeds sigma = 0 when time_conditioning is false, as
that wrapper does, and applies `Diffusion._subs_parameterization`'s SUBS.)
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mdm_jax import interop
from mdm_jax.data import tokenizers
from mdm_jax.interop import vocab

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
GPT2 = os.path.join(FIXTURES, "gpt2-tiny")
MDLM = {name: os.path.join(FIXTURES, name) for name in ("mdlm-tiny", "mdlm-tiny-tc")}
LOGITS_TOL, NLL_TOL = 5e-5, 1e-5


def reference(path):
    return dict(np.load(os.path.join(path, "reference.npz")))


@pytest.fixture(autouse=True)
def highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


def rewrite(src, dst, *, tensors=None, config=None, drop=()):
    """A copy of checkpoint `src` with its tensors and/or config.json replaced or files dropped."""
    shutil.copytree(src, dst)
    for name in drop:
        os.remove(os.path.join(dst, name))
    if tensors is not None:
        save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    if config is not None:
        with open(os.path.join(dst, "config.json"), "w") as f:
            json.dump(config, f)
    return dst


def gpt2_tensors():
    return load_file(os.path.join(GPT2, "model.safetensors"))


def gpt2_config():
    with open(os.path.join(GPT2, "config.json")) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- GPT-2 parity


def test_gpt2_logits_and_nll_match_transformers():
    ref = reference(GPT2)
    apply_fn, params, info = interop.load_gpt2(GPT2)
    logits = np.asarray(apply_fn(params, ref["tokens"]))
    assert logits.dtype == np.float32 and logits.shape == (3, 64, 512)
    assert np.max(np.abs(logits - ref["logits"])) <= LOGITS_TOL
    nll = np.asarray(interop.sequence_nll(apply_fn, params, ref["tokens"]))
    assert np.max(np.abs(nll - ref["nll"])) <= NLL_TOL
    assert (info.vocab_size, info.context_length, info.eot_id) == (512, 64, 511)
    assert (info.num_layers, info.num_heads, info.emb_dim) == (2, 4, 64)


def test_gpt2_original_layout_sharded_files_and_tied_head(tmp_path):
    """openai-community's layout (no `transformer.` prefix, causal-mask buffers), a sharded
    directory (index + two files) and a stored lm_head equal to wte all load to the same logits."""
    ref = reference(GPT2)
    bare = {k.removeprefix("transformer."): v for k, v in gpt2_tensors().items()}
    for i in range(2):
        bare[f"h.{i}.attn.bias"] = np.tril(np.ones((64, 64), np.float32))[None, None]
        bare[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    bare["lm_head.weight"] = bare["wte.weight"].copy()
    d = rewrite(GPT2, tmp_path / "bare", tensors=bare)
    apply_fn, params, _ = interop.load_gpt2(d)
    assert np.max(np.abs(np.asarray(apply_fn(params, ref["tokens"])) - ref["logits"])) <= LOGITS_TOL

    sharded = rewrite(GPT2, tmp_path / "sharded", drop=("model.safetensors",))
    names = sorted(gpt2_tensors())
    weight_map = {}
    for j, part in enumerate((names[:10], names[10:])):
        fname = f"model-0000{j + 1}-of-00002.safetensors"
        save_file({k: gpt2_tensors()[k] for k in part}, os.path.join(sharded, fname))
        weight_map.update({k: fname for k in part})
    with open(os.path.join(sharded, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    apply_fn, params, _ = interop.load_gpt2(sharded)
    assert np.max(np.abs(np.asarray(apply_fn(params, ref["tokens"])) - ref["logits"])) <= LOGITS_TOL

    untied = dict(bare, **{"lm_head.weight": bare["wte.weight"] + 1.0})
    with pytest.raises(ValueError, match="lm_head.weight differs from the token embedding"):
        interop.load_gpt2(rewrite(GPT2, tmp_path / "untied", tensors=untied))


def test_gpt2_bfloat16_compute_is_close_but_not_float32():
    ref = reference(GPT2)
    apply_fn, params, _ = interop.load_gpt2(GPT2, dtype="bfloat16")
    logits = np.asarray(apply_fn(params, ref["tokens"]))
    err = np.max(np.abs(logits - ref["logits"]))
    assert logits.dtype == np.float32
    # The fixture README measures 8.3e-2 for bf16-rounded matmul operands alone.
    assert 1e-3 < err < 0.5, err


# ----------------------------------------------------------------------------- MDLM parity


@pytest.mark.parametrize("name", sorted(MDLM))
def test_mdlm_raw_logits_and_subs_match_reference(name):
    ref = reference(MDLM[name])
    model, params, info = interop.load_mdlm_model(MDLM[name])
    assert (info.vocab_size, info.mask_id, info.model_length) == (600, 600, 64)
    assert info.time_conditioning == (name == "mdlm-tiny-tc")
    raw = model.apply({"params": params}, ref["tokens"], ref["sigma"], method=model.backbone)
    assert raw.shape == (3, 64, 601) and raw.dtype == jnp.float32
    assert np.max(np.abs(np.asarray(raw) - ref["logits_raw"])) <= LOGITS_TOL

    subs = np.asarray(interop.log_probs_subs(raw, jnp.asarray(ref["tokens"])))
    want = ref["log_probs_subs"]
    masked = ref["tokens"] == 600
    assert masked.sum() == 88
    np.testing.assert_array_equal(subs[~masked], want[~masked])  # only 0.0 and -1e6: exact
    assert set(np.unique(subs[~masked]).tolist()) == {0.0, -1e6}
    assert np.max(np.abs(subs[masked][:, :600] - want[masked][:, :600])) <= LOGITS_TOL
    assert np.max(np.abs(subs[masked][:, 600] - want[masked][:, 600])) <= 0.25  # near -1e6: spacing 0.0625
    assert np.all(subs[masked][:, 600] < -1e6)  # the constant is added to the mask logit, not assigned


@pytest.mark.parametrize("name", sorted(MDLM))
def test_mdlm_denoise_fn_follows_the_sampler_contract(name):
    """denoise_fn(tokens, t): t -> sigma = -log1p(-(1 - 1e-3) t); SUBS log-probs with the mask
    column dropped; time ignored exactly when the checkpoint has time_conditioning false."""
    ref = reference(MDLM[name])
    denoise_fn, info = interop.load_mdlm(MDLM[name])
    assert isinstance(denoise_fn, jax.tree_util.Partial)  # params travel as traced jit arguments
    t = (-np.expm1(-ref["sigma"].astype(np.float64)) / (1 - 1e-3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(interop.sigma_of_t(jnp.asarray(t))), ref["sigma"], rtol=1e-6)
    out = np.asarray(denoise_fn(ref["tokens"], t))
    assert out.shape == (3, 64, info.vocab_size)
    masked = ref["tokens"] == info.mask_id
    # float32 round trip sigma -> t -> sigma moves sigma by ~1e-7 relative: within the logit tolerance.
    assert np.max(np.abs(out[masked] - ref["log_probs_subs"][masked][:, :600])) <= LOGITS_TOL
    np.testing.assert_allclose(np.exp(out[masked]).sum(-1), 1.0, rtol=1e-5)
    other = np.asarray(denoise_fn(ref["tokens"], np.full((3,), 0.5, np.float32)))
    if info.time_conditioning:
        assert np.max(np.abs(other - out)) > 1e-2
    else:
        np.testing.assert_array_equal(other, out)


@pytest.mark.slow
def test_float64_reference_agrees_with_float32_reference_to_its_rounding():
    """dtype="float64" (under x64) recomputes both fixtures in float64: the stored float32 outputs
    differ from it by their own rounding, which the fixture README measured in float64 torch
    (5.06e-6 for GPT-2, 3.93e-6 for mdlm-tiny-tc)."""
    with jax.enable_x64(True):
        ref = reference(GPT2)
        apply_fn, params, _ = interop.load_gpt2(GPT2, dtype="float64")
        logits = apply_fn(params, ref["tokens"])
        assert logits.dtype == jnp.float64
        err = np.max(np.abs(np.asarray(logits) - ref["logits"]))
        assert 1e-6 < err < 1e-5, err
        ref = reference(MDLM["mdlm-tiny-tc"])
        model, params, _ = interop.load_mdlm_model(MDLM["mdlm-tiny-tc"], dtype="float64")
        raw = model.apply({"params": params}, ref["tokens"], ref["sigma"], method=model.backbone)
        assert raw.dtype == jnp.float64
        err = np.max(np.abs(np.asarray(raw) - ref["logits_raw"]))
        assert 1e-6 < err < 1e-5, err
    with pytest.raises(ValueError, match="enable_x64"):
        interop.load_mdlm(MDLM["mdlm-tiny"], dtype="float64")
    with pytest.raises(ValueError, match="dtype='float16'"):
        interop.load_gpt2(GPT2, dtype="float16")


# ----------------------------------------------------------------------------- bad input


def test_directory_missing_a_file(tmp_path):
    d = rewrite(GPT2, tmp_path / "no_weights", drop=("model.safetensors",))
    with pytest.raises(
        FileNotFoundError, match=r"'model.safetensors' is missing.*config.json.*huggingface-cli"
    ):
        interop.load_gpt2(d)
    d = rewrite(MDLM["mdlm-tiny"], tmp_path / "no_config", drop=("config.json",))
    with pytest.raises(FileNotFoundError, match=r"'config.json' is missing"):
        interop.load_mdlm(d)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        interop.load_mdlm(tmp_path / "nowhere")


def test_config_of_another_model_type():
    with pytest.raises(ValueError, match=r"type 'mdlm'.*\['MDLM'\].*a 'gpt2' checkpoint"):
        interop.load_gpt2(MDLM["mdlm-tiny"])
    with pytest.raises(ValueError, match=r"type 'gpt2'.*a 'mdlm' checkpoint"):
        interop.load_mdlm(GPT2)


def test_missing_and_extra_tensors_are_named(tmp_path):
    t = gpt2_tensors()
    del t["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(
        ValueError,
        match=r"missing 1 tensor\(s\): h\.1\.mlp\.c_fc\.bias\).*Expected tensors: "
        r"h\.0\.attn\.c_attn\.bias",
    ):
        interop.load_gpt2(rewrite(GPT2, tmp_path / "missing", tensors=t))
    t = dict(gpt2_tensors(), **{f"transformer.h.0.adapter_{i}": np.zeros(3, np.float32) for i in range(7)})
    with pytest.raises(ValueError, match=r"unexpected 7 tensor\(s\): h\.0\.adapter_0, .* \.\.\. and 2 more"):
        interop.load_gpt2(rewrite(GPT2, tmp_path / "extra", tensors=t))
    m = load_file(os.path.join(MDLM["mdlm-tiny"], "model.safetensors"))
    m["backbone.blocks.0.attn_qkv.bias"] = np.zeros(192, np.float32)
    with pytest.raises(ValueError, match=r"unexpected 1 tensor\(s\): blocks\.0\.attn_qkv\.bias"):
        interop.load_mdlm(rewrite(MDLM["mdlm-tiny"], tmp_path / "mdlm_extra", tensors=m))


def test_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path):
    cfg = dict(gpt2_config(), n_positions=32)
    with pytest.raises(
        ValueError,
        match=r"'transformer\.wpe\.weight' has shape \(64, 64\), but config\.json "
        r"implies \(32, 64\)",
    ):
        interop.load_gpt2(rewrite(GPT2, tmp_path / "short", config=cfg))
    with open(os.path.join(MDLM["mdlm-tiny"], "config.json")) as f:
        cfg = dict(json.load(f), cond_dim=16)
    with pytest.raises(
        ValueError,
        match=r"'backbone\.sigma_map\.mlp\.0\.weight' has shape \(32, 256\), but "
        r"config\.json implies \(16, 256\)",
    ):
        interop.load_mdlm(rewrite(MDLM["mdlm-tiny"], tmp_path / "cond", config=cfg))


def test_rotary_buffer_must_match_the_rotary_base(tmp_path):
    m = load_file(os.path.join(MDLM["mdlm-tiny"], "model.safetensors"))
    m["backbone.rotary_emb.inv_freq"] = 1.0 / 500.0 ** (np.arange(0, 16, 2, dtype=np.float32) / 16)
    with pytest.raises(ValueError, match=r"rotary_emb\.inv_freq is not the rotary frequencies of base 10000"):
        interop.load_mdlm(rewrite(MDLM["mdlm-tiny"], tmp_path / "rope", tensors=m))


def test_unsupported_gpt2_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx=True"):
        cfg = dict(gpt2_config(), scale_attn_by_inverse_layer_idx=True)
        interop.load_gpt2(rewrite(GPT2, tmp_path / "a", config=cfg))
    with pytest.raises(ValueError, match="activation_function='relu'"):
        cfg = dict(gpt2_config(), activation_function="relu")
        interop.load_gpt2(rewrite(GPT2, tmp_path / "b", config=cfg))


def test_tokenizer_whose_vocabulary_does_not_match_the_model():
    _, _, info = interop.load_gpt2(GPT2)
    real = tokenizers.GPT2Tokenizer(tokenizers.BUNDLED_GPT2_DIR)
    with pytest.raises(
        ValueError,
        match=r"eval.evaluator.*50257 token ids, the model 512; its end-of-text "
        r"id is 50256, the model's 511",
    ):
        vocab.check_tokenizer(
            real, vocab_size=info.vocab_size, eot_id=info.eot_id, model="gpt2-tiny", field="eval.evaluator"
        )
    vocab.check_tokenizer(real, vocab_size=50257, eot_id=50256, model="GPT-2", field="x")  # matches: silent
