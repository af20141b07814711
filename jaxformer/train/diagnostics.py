"""Look inside a model's attention: per-layer, per-head statistics and attention maps.

`attention_diagnostics` runs the model once with the "attention_stats" collection mutable; every self-attention
layer then sows the per-head means of its rows' entropy, largest logit, largest weight and first-token (sink)
mass, computed blockwise from q and k (`jaxformer.attention.diagnostics`), so it works with the fused kernels and
long inputs. `attention_maps` returns the full weights of short inputs for plotting. The training loop logs the
statistics to metrics.jsonl / TensorBoard at every evaluation with `train.diagnostics=True`.
"""
from __future__ import annotations

import flax
import jax
import numpy as np

from jaxformer.train.step import _model_args, _model_kwargs


def _sown(model, model_kind: str, params, batch: dict, collections: tuple[str, ...]) -> dict[str, dict]:
  """One forward pass with `collections` mutable -> {collection: {layer path: the value it sowed}}."""
  _, state = model.apply({"params": params}, *_model_args(model_kind, batch), mutable=list(collections),
                         **_model_kwargs(model_kind, batch))
  out = {}
  for collection in collections:  # sow keeps a tuple per call, under a name ("heads" / "weights") below the layer
    flat = flax.traverse_util.flatten_dict(state.get(collection, {}), sep="/")
    out[collection] = {name.rsplit("/", 1)[0]: value[0] for name, value in flat.items()}
  return out


def attention_diagnostics(model, model_kind: str, params, batch: dict) -> dict[str, dict[str, np.ndarray]]:
  """{layer path: {"entropy", "max_logit", "max_prob", "sink_mass", "lse", "num_rows": [N] per head}}, e.g. the key
  "decoder/layers_0/self_attention". Layers whose attention kind has no single softmax are absent."""
  return _sown(model, model_kind, params, batch, ("attention_stats",))["attention_stats"]


def attention_maps(model, model_kind: str, params, batch: dict) -> dict[str, np.ndarray]:
  """{layer path: weights [B, N, T, S]} for inputs of at most `jaxformer.nn.variants.MAX_MAP_LEN` tokens."""
  return _sown(model, model_kind, params, batch, ("attention_maps",))["attention_maps"]


def flat_scalars(diagnostics: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
  """"layer/stat/head_n" -> value, for a metrics writer (lse and row counts left out)."""
  out = {}
  for path, stats in diagnostics.items():
    layer = path.replace("/self_attention", "").replace("/attention", "")
    for stat in ("entropy", "max_logit", "max_prob", "sink_mass"):
      for head, value in enumerate(stats[stat]):
        out[f"{layer}/{stat}/head_{head}"] = float(value)
  return out


def make_diagnostics_fn(model, model_kind: str):
  """(params, batch) -> (attention_diagnostics(...), attention_maps(...)) as numpy arrays, from one compiled forward."""
  collections = ("attention_stats", "attention_maps")
  fn = jax.jit(lambda params, batch: tuple(_sown(model, model_kind, params, batch, collections).values()))
  return lambda params, batch: jax.tree.map(np.asarray, jax.device_get(fn(params, batch)))
