"""`load_pretrained`: an HF checkpoint -> jaxformer's own `DecoderOnly` + params + tokenizer;
`export_pretrained`: the way back, to a directory `transformers.AutoModelForCausalLM` loads.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxformer.hub.config import config_from_hf, config_to_hf, guess_model_type
from jaxformer.hub.convert import params_from_hf, params_to_hf
from jaxformer.hub.io import Checkpoint, read_json, resolve
from jaxformer.hub.tokenizer import HFTokenizer
from jaxformer.models.transformer import DecoderOnly, padding_inputs
from jaxformer.nn.config import TransformerConfig

log = logging.getLogger("jaxformer.hub")

GENERATION_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "max_length",
                   "max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty")


@dataclasses.dataclass
class Pretrained:
  """A loaded checkpoint. `model.apply({"params": params}, tokens, positions=..., segment_ids=...)` runs it;
  `logits(tokens, attention_mask)` does that for an HF-style padded batch."""
  model: DecoderOnly
  params: dict = dataclasses.field(repr=False)
  config: TransformerConfig
  tokenizer: HFTokenizer | None
  hf_config: dict = dataclasses.field(repr=False)
  generation_config: dict  # config.json's generation keys, overridden by generation_config.json
  path: Path
  model_type: str

  def __post_init__(self):
    self._apply = jax.jit(self.model.apply)

  @property
  def eos_token_id(self) -> int | list[int] | None:
    return self.generation_config.get("eos_token_id")

  @property
  def bos_token_id(self) -> int | None:
    return self.generation_config.get("bos_token_id")

  @property
  def pad_token_id(self) -> int | None:
    return self.generation_config.get("pad_token_id")

  def logits(self, tokens, attention_mask=None) -> jnp.ndarray:
    """tokens [B, T], attention_mask [B, T] (None = no padding) -> float32 logits [B, T, V]."""
    tokens = jnp.asarray(tokens, jnp.int32)
    positions, segment_ids = padding_inputs(jnp.ones_like(tokens) if attention_mask is None else attention_mask)
    return self._apply({"params": self.params}, tokens, positions=positions, segment_ids=segment_ids)


def load_pretrained(name_or_path: str | Path, *, dtype: str = "float32", param_dtype: str = "float32",
                    strict: bool = True, revision: str | None = None) -> Pretrained:
  """Load a GPT-2, BLOOM, Llama, Mistral or Qwen2 checkpoint (a local directory or a Hub repo id).

  dtype: the compute dtype ("bfloat16" for mixed precision). param_dtype: the dtype params are stored in,
  float32 by default whatever the checkpoint holds (bf16 checkpoints upcast exactly); "bfloat16" halves memory.
  strict: raise (True) or log (False) on checkpoint tensors the model has no place for.
  """
  path = resolve(name_or_path, revision=revision)
  hf_config = read_json(path / "config.json")
  if not hf_config:
    raise FileNotFoundError(f"no config.json in {path}; a Hugging Face checkpoint directory needs one")
  cfg = config_from_hf(hf_config, dtype=dtype, param_dtype=param_dtype)
  checkpoint = Checkpoint(path)
  params = params_from_hf(checkpoint, cfg, hf_config["model_type"], strict=strict, source=str(checkpoint.source))
  generation = {k: hf_config[k] for k in GENERATION_KEYS if hf_config.get(k) is not None}
  generation.update({k: v for k, v in read_json(path / "generation_config.json").items() if not k.startswith("_")
                     and k != "transformers_version"})
  return Pretrained(model=DecoderOnly(cfg), params=params, config=cfg, tokenizer=HFTokenizer.from_dir(path),
                    hf_config=hf_config, generation_config=generation, path=path, model_type=hf_config["model_type"])


def export_pretrained(params, cfg: TransformerConfig, out_dir: str | Path, model_type: str | None = None, *,
                      tokenizer: HFTokenizer | None = None, generation_config: dict | None = None,
                      overwrite: bool = False) -> Path:
  """Write `DecoderOnly(cfg)` params as an HF checkpoint: config.json, model.safetensors (and
  generation_config.json, tokenizer.json when given), loadable by `AutoModelForCausalLM.from_pretrained`.

  model_type: "gpt2", "bloom", "llama", "mistral" or "qwen2"; None guesses it from cfg.
  The files are written to a temporary directory beside `out_dir` and renamed into place at the
  end, so a failure leaves nothing half-written. An existing non-empty out_dir needs overwrite=True.
  """
  from safetensors.numpy import save_file

  out_dir = Path(out_dir)
  model_type = model_type or guess_model_type(cfg)
  hf_config = config_to_hf(cfg, model_type)
  generation = {k: v for k, v in (generation_config or {}).items() if v is not None}
  hf_config.update({k: v for k, v in generation.items() if k in ("bos_token_id", "eos_token_id", "pad_token_id")})
  tensors = params_to_hf(params, cfg, model_type)
  hf_config["dtype"] = str(next(iter(tensors.values())).dtype)  # what the file holds, e.g. bf16 params
  if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
    raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True to replace it")
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
  try:
    tmp.chmod(0o755)  # mkdtemp makes it private
    (tmp / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    if generation:
      (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
      tokenizer.save(tmp)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    if out_dir.exists():
      shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir
