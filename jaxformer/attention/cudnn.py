"""The `cudnn` backend: cuDNN fused flash attention via `jax.nn.dot_product_attention(implementation="cudnn")`.

What jax.nn exposes (same signature in JAX 0.10.2 and 0.11: q/k/v, bias, mask, scale, is_causal,
query_seq_lengths, key_value_seq_lengths, local_window_size, implementation, return_residual) and what
cuDNN accepts behind it (jax/_src/cudnn/fused_attention_stablehlo.py) decide `_supports`:

  * GPU only; q/k/v float16 or bfloat16 (float32 raises NotImplementedError in `check_layout`).
  * head dim a multiple of 8, <= 256 on Hopper or newer (compute capability >= 9.0), else <= 128.
  * v must have k's shape in jax.nn, so Dv == D (cuDNN's own MLA path is private API).
  * no segment ids (the packed-layout offsets are private API), no softcap, no dropout.
  * masks are anchored at query row 0 and cuDNN has only a top-left causal diagonal: no q_offset.
    Causal cross-attention (T != S) is then jaxformer's q_offset = 0, as in jax.nn's xla path.
  * windows: cuDNN has only a left sliding window (`sliding_window_length = left + 1`) on top of causal
    masking, so only causal + (left, right >= 0 or None) maps exactly; checked again at call time,
    since `Request` carries no window sizes.
  * bias: added before softmax; cuDNN wants its T and S dims full (broadcast here) and, for the
    backward, even T and S. Batch/head dims of 1 are passed through.
  * lengths map to query_seq_lengths / key_value_seq_lengths; rows that see no key (q padding,
    kv_length 0, a window past the keys) are set to zero here, as jaxformer promises.
  * no lse: jax.nn returns cuDNN's logsumexp rounded to the input dtype and drops its cotangent.
  * cuDNN 9.18 known issues: no backward for S == 1; causal decode (T == 1) with GQA may be wrong.

cuDNN attention is skipped in JAX's own tests on CUDA 13, so a tiny forward + backward call is probed
once per process; when it fails, `_supports` says so and automatic selection falls back.
"""
from __future__ import annotations

import concurrent.futures

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer.attention.api import Backend, Request, register_backend
from jaxformer.attention.masks import MaskSpec

_probe_result: list[str | None] = []  # [] until probed, then [None] or [error]


def _run_probe() -> str | None:
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(1, 16, 2, 64)).astype(jnp.bfloat16) for _ in range(3))

  def loss(q, k, v):
    out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
    return jnp.sum(out.astype(jnp.float32))

  try:
    grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)
    grads = jax.block_until_ready(grads)
    if not all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in jax.tree.leaves(grads)):
      return "non-finite result"
    return None
  except Exception as e:  # any failure means: do not use cuDNN here
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def _probe() -> str | None:
  """None if cuDNN attention compiles and runs on this machine, else the error (cached per process)."""
  if not _probe_result:
    # A fresh thread has no ambient trace, so the probe really runs even when attention() is being traced.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      _probe_result.append(pool.submit(_run_probe).result())
  return _probe_result[0]


def _max_head_dim() -> int:
  try:
    major, minor = (int(x) for x in jax.devices("gpu")[0].compute_capability.split(".")[:2])
  except Exception:  # no GPU visible: assume the stricter pre-Hopper limit
    return 128
  return 256 if (major, minor) >= (9, 0) else 128


def _supports(request: Request) -> str | None:
  if request.platform != "gpu":
    return f"cuDNN attention runs only on GPU (platform is {request.platform!r})"
  if request.dtype not in ("float16", "bfloat16"):
    return f"dtype {request.dtype}: cuDNN flash attention takes float16/bfloat16 only"
  h_max = _max_head_dim()
  if request.head_dim % 8 or request.head_dim > h_max:
    return f"head dim {request.head_dim}: cuDNN needs a multiple of 8 and <= {h_max} on this GPU"
  if request.value_head_dim != request.head_dim:
    return (f"value head dim {request.value_head_dim} != head dim {request.head_dim}: "
            "jax.nn.dot_product_attention needs v shaped like k")
  if request.segments:
    return "segment ids are not supported by cuDNN attention through jax.nn"
  if request.softcap:
    return "softcap is not supported by cuDNN attention"
  if request.dropout:
    return "dropout is not exposed by jax.nn.dot_product_attention"
  if request.q_offset:
    return "q_offset is not supported by cuDNN attention (its masks start at query row 0)"
  if request.return_lse:
    return "return_lse is not supported: jax.nn gives cuDNN's lse only rounded to the input dtype, without gradient"
  if request.window:
    left, right = request.window_size
    if not request.causal or (left is not None and left < 0) or (right is not None and right < 0):
      return (f"window {request.window_size} with causal={request.causal}: cuDNN has only a left sliding window "
              "on a causal mask")
  if request.bias and (request.q_len % 2 or request.kv_len % 2):
    return f"bias with odd T={request.q_len} or S={request.kv_len}: cuDNN's backward with bias needs even lengths"
  if request.kv_len < 2:
    return "kv length 1: cuDNN has no backward for S == 1 (cuDNN 9.18 known issue)"
  if request.causal and request.q_len == 1 and request.num_heads != request.num_kv_heads:
    return "causal decode (T == 1) with grouped kv heads: cuDNN known issue, results may be wrong"
  error = _probe()
  if error:
    return f"cuDNN attention failed its probe on this machine: {error}"
  return None


def _left_window(mask: MaskSpec) -> int | None:
  """jaxformer's (left, right) window as cuDNN's left extent, or a ValueError if it does not map exactly."""
  if mask.window is None:
    return None
  left, right = mask.window
  if not mask.causal or (right is not None and right < 0) or (left is not None and left < 0):
    raise ValueError(f"window {mask.window} with causal={mask.causal} does not map to cuDNN's sliding window; "
                     "use implementation='blockwise'")
  return left  # right >= 0 adds nothing to a causal mask; left None is unbounded


def _live_rows(mask: MaskSpec, left: int | None, T: int, S: int):
  """[B|1, T] True where a query row can see at least one key (q_offset is 0 here)."""
  rows = jnp.arange(T)[None, :]
  lo = jnp.zeros_like(rows) if left is None else jnp.maximum(rows - left, 0)
  hi = jnp.full_like(rows, S)  # exclusive
  if mask.causal:
    hi = jnp.minimum(hi, rows + 1)
  if mask.kv_lengths is not None:
    hi = jnp.minimum(hi, mask.kv_lengths[:, None])
  live = lo < hi
  if mask.q_lengths is not None:
    live = live & (rows < mask.q_lengths[:, None])
  return live


def cudnn_attention(q, k, v, *, mask: MaskSpec, bias=None, softcap=None, scale: float, dropout_rate: float = 0.0,
                    dropout_rng=None):
  """q [B,T,N,D], k [B,S,K,D], v [B,S,K,D] -> (out [B,T,N,D], lse=None); see the module docstring."""
  del dropout_rng
  if (softcap is not None or dropout_rate > 0.0 or mask.q_segment_ids is not None
      or not (isinstance(mask.q_offset, int) and mask.q_offset == 0)):
    raise ValueError("the cudnn attention backend supports no softcap, dropout, segment ids or q_offset")
  B, T = q.shape[:2]
  S = k.shape[1]
  left = _left_window(mask)
  as_int = lambda x: None if x is None else jnp.asarray(x, jnp.int32)
  q_len, kv_len = as_int(mask.q_lengths), as_int(mask.kv_lengths)
  if bias is not None:
    bias = jnp.asarray(bias)
    bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
    # cuDNN requires the bias's T and S dims to be full; batch and head dims of 1 broadcast inside cuDNN.
    bias = jnp.broadcast_to(bias, bias.shape[:2] + (T, S)).astype(q.dtype)
  out = jax.nn.dot_product_attention(
      q, k, v, bias=bias, scale=scale, is_causal=bool(mask.causal), query_seq_lengths=q_len,
      key_value_seq_lengths=kv_len, local_window_size=None if left is None else (left, 0), implementation="cudnn")
  if q_len is not None or kv_len is not None or left is not None:
    live = _live_rows(MaskSpec(causal=mask.causal, q_lengths=q_len, kv_lengths=kv_len), left, T, S)
    out = jnp.where(live[:, :, None, None], out, jnp.zeros((), out.dtype))
  return out, None


register_backend(Backend("cudnn", cudnn_attention, _supports, platforms=("gpu",)))
