"""Block-sparse attention: Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences" (arXiv:2007.14062).

The sequence is cut into blocks of `block_size` tokens and a static boolean
layout [nb, nb] (row i = query block i) says which key blocks each query block
may look at (section 2, the generalised attention mechanism as a graph). BigBird's
ITC layout (section 2, appendix D) combines three kinds of blocks:

  * global: the first g blocks attend to every block and every block attends to
    them (the "internal transformer construction": global tokens are existing tokens);
  * sliding window: block i attends to the w blocks centred on it;
  * random: block i attends to r further blocks drawn at random.

so each non-global row sees O(g + w + r) blocks and the cost is linear in T.
Inside the visible blocks the usual token-level masks still apply (causal, segment
ids), and the softmax runs over exactly the visible keys.

Implementation (appendix D's "blockify and gather"): every query block that is not
dense gathers its visible key/value blocks, padded to the same count R (the largest
row count, with a repeated index flagged invalid so nothing is counted twice), and
runs an ordinary masked softmax over [bs, R·bs] scores. Dense (global) query
blocks would make R = nb, so they are detected from the layout and computed with the
exact kernel `jaxformer.attention.attention` instead (see `block_sparse_attention`).

Shape names: B batch, T sequence length (T == S, self-attention), N query heads,
K kv heads, G = N // K query heads per kv head, H head dim (q, k), Hv value head
dim, bs block size, nb = ceil(T / bs) blocks, R the most key blocks of a sparse row.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer.attention.api import attention, check_qkv


def _is_int(x) -> bool:
  return not isinstance(x, bool) and isinstance(x, (int, np.integer))


def bigbird_layout(num_blocks: int, *, num_global: int = 1, num_window: int = 3, num_random: int = 2,
                   causal: bool = False, seed: int = 0) -> np.ndarray:
  """BigBird's ITC block layout (section 2, appendix D): bool [num_blocks, num_blocks], row i = query block i.

  * global: blocks 0 .. num_global-1 see every block and are seen by every block
    (num_global is clipped to num_blocks);
  * window: block i sees blocks i - num_window//2 .. i + num_window//2 (clipped to
    the sequence); num_window must be odd (>= 1, so a block always sees itself);
  * random: each non-global row additionally sees num_random distinct blocks drawn
    uniformly (numpy, `np.random.default_rng(seed)`, rows in order) from the blocks it
    does not already see; fewer when not enough remain. Global rows draw nothing.
    Rows whose window overlaps the global blocks or the sequence ends therefore see
    fewer than num_global + num_window + num_random blocks (the paper's r random
    blocks per row, not a top-up to a fixed count).

  causal=True gives the lower-triangular layout for autoregressive use: the window
  is its causal half, the num_window//2 + 1 blocks ending at block i; random blocks
  are drawn only from earlier blocks (j < i); global block j is seen by every block
  i >= j, and global row i sees blocks 0 .. i. Every entry above the diagonal is False.

  Deterministic given the arguments: the same seed gives the same layout.
  """
  for name, value, low in (("num_blocks", num_blocks, 0), ("num_global", num_global, 0),
                           ("num_window", num_window, 1), ("num_random", num_random, 0)):
    if not _is_int(value) or value < low:
      raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
  if num_window % 2 == 0:
    raise ValueError(f"num_window must be odd (a window centred on its block); got {num_window}")
  nb, g, half = int(num_blocks), min(int(num_global), int(num_blocks)), int(num_window) // 2
  layout = np.zeros((nb, nb), bool)
  layout[:g, :] = True
  layout[:, :g] = True
  rows = np.arange(nb)[:, None]
  cols = np.arange(nb)[None, :]
  layout |= (cols >= rows - half) & (cols <= rows + (0 if causal else half))
  if causal:
    layout &= cols <= rows
  rng = np.random.default_rng(seed)
  for i in range(g, nb):
    candidates = np.flatnonzero(~layout[i, :i] if causal else ~layout[i])
    count = min(int(num_random), candidates.size)
    if count:
      layout[i, rng.choice(candidates, size=count, replace=False)] = True
  return layout


def _check_args(q, k, v, layout, block_size, causal, segment_ids):
  B, T, _, S, _ = check_qkv(q, k, v, "block_sparse_attention", causal)
  if T != S:
    raise ValueError(f"block_sparse_attention is self-attention: needs T == S, got T={T}, S={S}")
  if not _is_int(block_size) or block_size < 1:
    raise ValueError(f"block_size must be a positive int; got {block_size!r}")
  if segment_ids is not None:
    if tuple(segment_ids.shape) != (B, T):
      raise ValueError(f"segment_ids must have shape [B,T]={B, T}; got {tuple(segment_ids.shape)}")
    if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
      raise ValueError(f"segment_ids must be integers; got dtype {segment_ids.dtype}")
  try:
    layout = np.asarray(layout)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    raise ValueError("layout must be static (a concrete numpy bool array), not traced: "
                     "close over it under jit") from None
  nb = -(-T // block_size)
  if layout.dtype != np.bool_:
    raise ValueError(f"layout must be a boolean array; got dtype {layout.dtype}")
  if layout.shape != (nb, nb):
    raise ValueError(f"layout must have shape [ceil(T/block_size)]*2 = {(nb, nb)} for T={T}, "
                     f"block_size={block_size}; got {layout.shape}")
  return layout


def _plan(layout: np.ndarray, causal: bool):
  """Static split of the query blocks. Returns (sparse_rows [ns], idx [ns,R], valid [ns,R], dense runs [(a, b)])."""
  nb = layout.shape[0]
  if causal:
    layout = layout & np.tril(np.ones((nb, nb), bool))  # blocks above the diagonal hold only future keys
  counts = layout.sum(axis=1)
  reachable = np.arange(nb) + 1 if causal else np.full(nb, nb)
  full = counts == reachable
  r_sparse = int(counts[~full].max(initial=0))
  dense = full & (counts > r_sparse)  # a full row with <= R blocks is as cheap through the gather path
  sparse_rows = np.flatnonzero(~dense)
  R = max(int(counts[sparse_rows].max(initial=0)), 1)
  idx = np.zeros((sparse_rows.size, R), np.int32)
  valid = np.zeros((sparse_rows.size, R), bool)
  for n, i in enumerate(sparse_rows):
    cols = np.flatnonzero(layout[i])
    idx[n, :cols.size] = cols
    idx[n, cols.size:] = cols[0] if cols.size else 0  # padding: a repeated index, flagged invalid
    valid[n, :cols.size] = True
  runs, start = [], None
  for i in range(nb + 1):
    if i < nb and dense[i]:
      start = i if start is None else start
    elif start is not None:
      runs.append((start, i))
      start = None
  return sparse_rows, idx, valid, runs


def _sparse(q, k, v, seg, rows, idx, valid, *, bs, T, causal, scale):
  """The gather path for query blocks `rows` [ns]: out [B, ns, bs, K, G, Hv] in float32."""
  B, Tp, N, H = q.shape
  K, Hv = k.shape[2], v.shape[-1]
  G, nb, ns, R = N // K, Tp // bs, rows.size, idx.shape[1]
  offsets = np.arange(bs)
  q_pos = rows[:, None] * bs + offsets  # [ns, bs]
  k_pos = (idx[:, :, None] * bs + offsets).reshape(ns, R * bs)  # gathered original key positions
  visible = np.repeat(valid, bs, axis=1) & (k_pos < T)  # [ns, R·bs]: padded slots and padded keys are invisible
  visible = np.broadcast_to(visible[:, None, :], (ns, bs, R * bs))
  if causal:
    visible = visible & (k_pos[:, None, :] <= q_pos[:, :, None])
  visible = jnp.asarray(visible)[None]  # [1, ns, bs, R·bs]
  if seg is not None:
    visible = visible & (seg[:, q_pos][:, :, :, None] == seg[:, k_pos][:, :, None, :])  # [B, ns, bs, R·bs]
  qb = q.reshape(B, nb, bs, K, G, H)[:, rows].astype(jnp.float32)  # [B, ns, bs, K, G, H]
  kb = k.reshape(B, nb, bs, K, H)[:, idx].reshape(B, ns, R * bs, K, H).astype(jnp.float32)
  vb = v.reshape(B, nb, bs, K, Hv)[:, idx].reshape(B, ns, R * bs, K, Hv).astype(jnp.float32)
  logits = jnp.einsum("bitkgh,biskh->bikgts", qb, kb) * scale  # [B, ns, K, G, bs, R·bs]
  logits = jnp.where(visible[:, :, None, None], logits, -jnp.inf)
  row_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)  # rows that see nothing
  p = jnp.exp(logits - row_max)
  denom = jnp.sum(p, axis=-1, keepdims=True)
  probs = p / jnp.where(denom > 0, denom, 1.0)  # all-zero rows stay zero
  return jnp.einsum("bikgts,biskv->bitkgv", probs, vb)


def block_sparse_attention(q, k, v, layout, *, block_size: int, causal: bool = False, segment_ids=None,
                           scale: float | None = None):
  """Block-sparse self-attention (BigBird, Zaheer et al. 2020, section 2 / appendix D).

  q [B,T,N,H], k [B,T,K,H], v [B,T,K,Hv] (GQA: N % K == 0; query head n reads kv
  head n // G) -> [B,T,N,Hv] in q's dtype; softmax computed in float32.

    out_i = Σ_j softmax_j(q_i·k_j·scale) v_j  over the keys j visible from i,

  where j is visible iff layout[i // bs, j // bs] (bs = block_size) and, when given,
  j <= i (causal) and segment_ids[b, i] == segment_ids[b, j]. scale defaults to H^-1/2.

  layout: static numpy bool [nb, nb] with nb = ceil(T / bs) (e.g. `bigbird_layout`),
    not traced (close over it under jit). T is padded internally to nb·bs: padded keys
    are invisible and padded query rows are dropped. With causal=True, entries above the
    block diagonal are ignored (their keys are all in the future).
  Rows that see no key return zeros, never NaN; gradients are finite.

  How the rows are split (static, from the layout alone — any layout works):
    * a query block is *dense* if it sees every block it can (its row is all True;
      causal: all of blocks 0 .. i) and more blocks than R, the most blocks any
      non-dense row sees. Dense blocks (BigBird's global rows) are computed by the
      exact kernel `attention(..., implementation=None)`, one call per contiguous
      run of dense blocks (causal: q_offset = the run's first position, and the run
      reads only the keys up to its end). Under causal=True the first blocks' rows are
      short, so global rows usually fall to the gather path below.
    * every other block gathers its visible key/value blocks [B, R·bs, K, H] (index
      list padded to R with a repeated index flagged invalid, so nothing is counted
      twice) and takes a masked softmax over [bs, R·bs] scores, the masks evaluated
      on the gathered original positions.

  Cost (ns ≤ nb sparse query blocks, so ns·bs ≤ T; D dense query rows):
    * sparse part: FLOPs ≈ 2·B·N·T·R·bs·(H + Hv) ≈ 4·B·N·T·R·bs·H; memory
      O(B·N·T·R·bs) for the scores/probabilities (kept for the backward) plus the
      gathered keys/values O(B·K·T·R·(H + Hv)). Linear in T for a fixed R.
    * dense part: the exact kernel on D rows against all T keys (causal: the keys up
      to the run's end): ≈ 2·B·N·D·T·(H + Hv) FLOPs, memory as that backend's.

  Raises ValueError for inconsistent shapes, T != S, block_size < 1, a layout that is
  not a static bool [nb, nb] array, and bad segment_ids.
  """
  q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
  if segment_ids is not None:
    segment_ids = jnp.asarray(segment_ids)
  layout = _check_args(q, k, v, layout, block_size, causal, segment_ids)
  B, T, N, H = q.shape
  Hv = v.shape[-1]
  bs = int(block_size)
  scale = H ** -0.5 if scale is None else scale
  if T == 0:
    return jnp.zeros((B, 0, N, Hv), q.dtype)
  nb = layout.shape[0]
  pad = nb * bs - T
  sparse_rows, idx, valid, runs = _plan(layout, causal)
  out = jnp.zeros((B, nb, bs, N, Hv), jnp.float32)
  if sparse_rows.size:
    widths = ((0, 0), (0, pad), (0, 0), (0, 0))
    qp, kp, vp = jnp.pad(q, widths), jnp.pad(k, widths), jnp.pad(v, widths)
    seg = None if segment_ids is None else jnp.pad(segment_ids, ((0, 0), (0, pad)))
    sparse = _sparse(qp, kp, vp, seg, sparse_rows, idx, valid, bs=bs, T=T, causal=causal, scale=scale)
    out = out.at[:, sparse_rows].set(sparse.reshape(B, sparse_rows.size, bs, N, Hv))
  out = out.reshape(B, nb * bs, N, Hv)
  for a, b in runs:
    q_end, k_end = min(b * bs, T), min(b * bs, T) if causal else T
    seg = None if segment_ids is None else (segment_ids[:, a * bs:q_end], segment_ids[:, :k_end])
    dense = attention(q[:, a * bs:q_end], k[:, :k_end], v[:, :k_end], causal=causal, segment_ids=seg, scale=scale,
                      q_offset=a * bs if causal else 0, implementation=None)
    out = out.at[:, a * bs:q_end].set(dense.astype(jnp.float32))
  return out[:, :T].astype(q.dtype)
