"""Experiment configs: ml_collections ConfigDicts loaded from `experiments/NAME.py`.

Each experiment file defines `get_config()`. Command-line overrides look like
`--config.model.num_layers=4`; the config is locked first, so a misspelt key or
a value of the wrong type is an error that names the key.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import sys
import typing
from pathlib import Path

import ml_collections
from ml_collections import config_dict

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"
DEFAULT_EXPERIMENT = "char_lm"


class ConfigError(ValueError):
  """A bad experiment config or override; the message says which key and what to do."""


def model_config_dict(model_cfg) -> ml_collections.ConfigDict:
  """A TransformerConfig (or a nested config section of it) as a ConfigDict holding every field, typed, so
  overrides are checked (fields that default to None become typed placeholders)."""
  hints = typing.get_type_hints(type(model_cfg))
  out = ml_collections.ConfigDict()
  for f in dataclasses.fields(model_cfg):
    value = getattr(model_cfg, f.name)
    if dataclasses.is_dataclass(value):  # a nested section, e.g. model.attention
      value = model_config_dict(value)
    elif value is None:
      base = [t for t in typing.get_args(hints[f.name]) if t is not type(None)]
      value = config_dict.placeholder(base[0]) if base else None
    out[f.name] = value
  return out


def resolve_experiment(name_or_path: str | None) -> Path:
  """An experiment file path, or a bare name looked up in ./experiments and the repo's experiments/."""
  name_or_path = name_or_path or DEFAULT_EXPERIMENT
  path = Path(name_or_path)
  if path.suffix == ".py":
    if not path.is_file():
      raise ConfigError(f"config file {name_or_path} does not exist")
    return path
  for folder in (Path.cwd() / "experiments", EXPERIMENTS_DIR):
    if (folder / f"{name_or_path}.py").is_file():
      return folder / f"{name_or_path}.py"
  known = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.py") if not p.stem.startswith("_"))
  raise ConfigError(f"no experiment named {name_or_path!r}; known: {known}")


def import_file(path: Path):
  """Import a Python file (an experiment config or a suite) as a module; its folder is importable meanwhile,
  so experiments may import their folder's _common.py."""
  spec = importlib.util.spec_from_file_location(f"jaxformer_experiment_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, str(path.parent))
  try:
    spec.loader.exec_module(module)
  finally:
    sys.path.remove(str(path.parent))
  return module


def load_config(name_or_path: str | None = None, overrides: list[str] | tuple[str, ...] = ()):
  """Load `get_config()` from an experiment file and apply `key=value` overrides."""
  path = resolve_experiment(name_or_path)
  module = import_file(path)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} has no get_config() function")
  config = module.get_config()
  config.lock()
  for item in overrides:
    apply_override(config, item)
  return config


def _parse_value(text: str):
  lowered = text.strip().lower()
  if lowered in ("true", "false"):
    return lowered == "true"
  if lowered in ("none", "null"):
    return None
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
  """Apply one `a.b.c=value` override (a leading `config.` or `--config.` is accepted)."""
  item = item.removeprefix("--").removeprefix("config.")
  if "=" not in item:
    raise ConfigError(f"override {item!r} must look like key=value, e.g. --config.train.steps=100")
  key, text = item.split("=", 1)
  *parents, leaf = key.split(".")
  node = config
  for depth, part in enumerate(parents):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      here = ".".join(parents[:depth]) or "the top level"
      raise ConfigError(f"unknown config key {key!r}: {part!r} is not a section of {here}; "
                        f"valid keys there: {sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []}")
    node = node[part]
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    where = ".".join(parents) or "the top level"
    valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
    raise ConfigError(f"unknown config key {key!r}; valid keys at {where}: {valid}")
  value = _parse_value(text)
  current = node[leaf]
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(current, str) and not isinstance(value, str):
    value = text  # e.g. --config.data.path=123 means the string "123"
  try:
    node[leaf] = value
  except TypeError:
    expected = type(current).__name__ if current is not None else node.get_type(leaf).__name__
    raise ConfigError(f"config key {key!r} expects {expected}, got {text!r} "
                      f"({type(value).__name__})") from None
