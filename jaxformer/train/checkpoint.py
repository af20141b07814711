"""Saving a finished run for inference: params (orbax), model config and tokenizer.

Layout of a run directory:
  model.json      {"model_kind": ..., "model": TransformerConfig fields}
  tokenizer.json  the tokenizer
  params/         orbax checkpoint of the parameter pytree
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import orbax.checkpoint as ocp

from jaxformer.data.tokenizers import load_tokenizer, save_tokenizer
from jaxformer.models import build_model
from jaxformer.nn.config import TransformerConfig


def save_run(workdir: str | Path, model_kind: str, model_cfg: TransformerConfig, params, tokenizer) -> None:
  workdir = Path(workdir).resolve()
  target = workdir / "params"
  tmp = workdir / "params.tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp, params)
    ckptr.wait_until_finished()
  shutil.rmtree(target, ignore_errors=True)
  tmp.rename(target)  # never leave a half-written params/ behind
  (workdir / "model.json").write_text(json.dumps({"model_kind": model_kind, "model": model_cfg.to_dict()}, indent=1))
  save_tokenizer(tokenizer, workdir / "tokenizer.json")


def load_run(workdir: str | Path):
  """Returns (model, params, tokenizer) of a run saved by `save_run`."""
  workdir = Path(workdir).resolve()
  meta_path = workdir / "model.json"
  if not meta_path.is_file() or not (workdir / "params").is_dir():
    raise FileNotFoundError(f"{workdir} holds no finished run (model.json and params/ are written "
                            "when `jaxformer train` ends); train first or check the path")
  meta = json.loads(meta_path.read_text())
  model = build_model(meta["model_kind"], TransformerConfig.from_dict(meta["model"]))
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(workdir / "params")
  return model, params, load_tokenizer(workdir / "tokenizer.json")
