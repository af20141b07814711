"""FLOP accounting (jaxformer.train.flops) against the real parameter tree, a brute-force mask count and XLA."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.attention.masks import MaskSpec
from jaxformer.models import TransformerConfig, build_model
from jaxformer.train import flops
from jaxformer.train.step import forward, init_params

SMALL = dict(vocab_size=256, d_model=64, num_heads=4, mlp_dim=160, num_layers=2, max_len=32, dropout_rate=0.0)
CONFIGS = {  # every matmul kind the models have: tied/untied head, GQA, gated MLP, cross-attention, head_dim != D/N
    "gpt2": ("decoder_only", TransformerConfig.gpt2(**SMALL)),
    "llama": ("decoder_only", TransformerConfig.llama(**{**SMALL, "num_kv_heads": 2, "head_dim": 24})),
    "aiayn": ("encoder_decoder", TransformerConfig.aiayn_base(**{**SMALL, "num_encoder_layers": 3,
                                                                  "activation": "geglu"})),
    "classifier": ("encoder_classifier", TransformerConfig(**{**SMALL, "num_classes": 5, "num_kv_heads": 1})),
}


def _batch(kind, B=2, T=16):
  x = jnp.ones((B, T), jnp.int32)
  return {"inputs": x, "decoder_inputs": x} if kind == "encoder_decoder" else {"inputs": x}


def _tree_matmul_params(cfg, kind, params) -> int:
  """Every Dense kernel in the tree, plus the token embedding when it is the (tied) output projection."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  kernels = sum(leaf.size for path, leaf in flat if path[-1].key == "kernel")
  tied_head = cfg.tie_embeddings and kind != "encoder_classifier"
  return kernels + (params["embedder"]["tokens"]["embedding"].size if tied_head else 0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matmul_params_match_the_parameter_tree(name):
  kind, cfg = CONFIGS[name]
  params = jax.eval_shape(lambda: init_params(build_model(kind, cfg), kind, _batch(kind), seed=0)[0])  # shapes only
  tree = _tree_matmul_params(cfg, kind, params)
  assert flops.matmul_params(cfg, kind) == tree
  # Forward matmul FLOPs per token = 2 x matmul params: what is left of the forward count once the
  # attention pairs are taken out (encoder_decoder: source length = target length, so every param
  # acts once per target token; classifier: its head acts once per sequence).
  T = 16
  d_attn = cfg.num_heads * cfg.dim_per_head
  layers = cfg.num_layers + (cfg.encoder_layers if kind == "encoder_decoder" else 0)
  pairs = layers * T * T + (cfg.num_layers * T * T if kind == "encoder_decoder" else 0)  # + cross
  fwd = flops.model_flops(cfg, kind, T, causal=False, training=False)
  head = cfg.d_model * cfg.num_classes if kind == "encoder_classifier" else 0
  assert fwd - 4 * d_attn * pairs == pytest.approx(2 * (tree - head) * T + 2 * head)
  per_token = flops.model_flops_per_token(cfg, kind, T, causal=False)
  assert per_token == pytest.approx(3 * fwd / T)
  if kind == "decoder_only":  # PaLM's 6N + 12·L·T·d_attn
    assert per_token == pytest.approx(6 * tree + 12 * cfg.num_layers * T * d_attn)


@pytest.mark.parametrize("T", [1, 2, 7, 33])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [None, (0, 0), (3, None), (None, 2), (4, 1), (40, 40)])
def test_visible_fraction_counts_the_mask(T, causal, window):
  mask = MaskSpec(causal=causal, window=window)
  brute = np.asarray(mask.visible(jnp.arange(T), jnp.arange(T))).sum()
  assert flops.visible_fraction(T, causal, window) * T * T == pytest.approx(brute)


def test_visible_fraction_closed_forms():
  assert flops.visible_fraction(1024, causal=True) == pytest.approx(1025 / 2048)
  assert flops.visible_fraction(1024, causal=False) == 1.0
  w = 128  # causal sliding window: w + 1 keys per query once the window is full
  full = (1024 - w) * (w + 1) + w * (w + 1) // 2
  assert flops.visible_fraction(1024, True, (w, None)) == pytest.approx(full / 1024**2)
  with pytest.raises(ValueError, match="pair"):
    flops.visible_fraction(16, True, 4)


def test_causal_and_window_count_only_visible_pairs():
  kind, cfg = CONFIGS["gpt2"]
  T, w = 32, 5
  d_attn = cfg.num_heads * cfg.dim_per_head
  full = flops.model_flops(cfg, kind, T, causal=False)
  for causal, window, pairs in ((True, None, T * (T + 1) // 2),
                                (True, (w, None), (T - w) * (w + 1) + w * (w + 1) // 2),
                                (False, (w, w), sum(min(T - 1, i + w) - max(0, i - w) + 1 for i in range(T)))):
    hidden = T * T - pairs
    got = flops.model_flops(cfg, kind, T, causal=causal, window=window)
    assert full - got == pytest.approx(3 * 4 * d_attn * cfg.num_layers * hidden)


@pytest.mark.parametrize("name", ["gpt2", "llama", "aiayn"])
def test_forward_and_backward_flops_match_xla(name):
  """XLA's cost analysis of the compiled forward (and of its gradient) against the formula with
  causal=False: the reference backend computes every (query, key) pair, masked or not. XLA also
  counts elementwise work (norms, activations, softmax, the mask and their gradients) that the
  formula leaves out: at these sizes the two agree to ~2% (measured, jax 0.10); 10% leaves room for
  XLA version drift."""
  kind, cfg = CONFIGS[name]
  cfg = cfg.replace(attention_impl="reference", d_model=128, mlp_dim=384, max_len=64)
  B, T = 2, 64
  model = build_model(kind, cfg)
  batch = _batch(kind, B, T)
  params = jax.eval_shape(lambda: init_params(model, kind, batch, seed=0)[0])  # compiling needs shapes only

  def xla_flops(fn):
    cost = jax.jit(fn).lower(params, batch).compile().cost_analysis()
    return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]

  fwd = xla_flops(lambda p, b: forward(model, kind, p, b))
  both = xla_flops(jax.grad(lambda p, b: forward(model, kind, p, b).sum()))
  assert fwd == pytest.approx(B * flops.model_flops(cfg, kind, T, causal=False, training=False), rel=0.1)
  assert both == pytest.approx(B * flops.model_flops(cfg, kind, T, causal=False, training=True), rel=0.1)


def test_peak_flops_table():
  assert flops.peak_flops("NVIDIA H200", "bfloat16") == 989e12
  assert flops.peak_flops("NVIDIA H100 80GB HBM3", jnp.bfloat16) == 989e12
  assert flops.peak_flops("NVIDIA A100-SXM4-40GB", "float32") == 156e12
  assert flops.peak_flops("TPU v5 lite", "bfloat16") == 197e12
  assert flops.peak_flops("TPU v5", "bfloat16") == 459e12
  assert flops.peak_flops(jax.devices("cpu")[0], "float32") is None
  assert flops.peak_flops("Some new chip", "bfloat16") is None
