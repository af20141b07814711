"""Experiment configs, overrides and the CLI's error messages."""
import subprocess
import sys

import pytest

from jaxformer.config import EXPERIMENTS_DIR, ConfigError, load_config
from jaxformer.nn.config import TransformerConfig

EXPERIMENTS = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.py") if not p.stem.startswith("_"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_loads_and_builds_its_model(name):
  config = load_config(name)
  assert config.name == name
  TransformerConfig.from_dict({**config.model.to_dict(), "vocab_size": 32})


def test_overrides_are_typed():
  config = load_config("char_lm", ["--config.model.num_layers=3", "config.optim.lr=1", "train.tensorboard=false",
                                   "model.num_kv_heads=2", "data.name=text_file"])
  assert config.model.num_layers == 3 and config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
  assert config.train.tensorboard is False and config.model.num_kv_heads == 2


@pytest.mark.parametrize("override, message", [
    ("model.num_layerz=3", "unknown config key 'model.num_layerz'"),
    ("modle.num_layers=3", "unknown config key 'modle.num_layers'"),
    ("model.num_layers=three", "config key 'model.num_layers' expects int"),
    ("train.steps=1.5", "config key 'train.steps' expects int"),
    ("model.num_kv_heads=abc", "config key 'model.num_kv_heads' expects int"),
    ("model.num_layers", "must look like key=value"),
])
def test_bad_overrides_name_the_key(override, message):
  with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
    load_config("char_lm", [override])


def test_unknown_experiment():
  with pytest.raises(ConfigError, match="no experiment named 'nope'"):
    load_config("nope")


def test_cli_reports_config_errors_in_one_line():
  proc = subprocess.run([sys.executable, "-m", "jaxformer.cli", "train", "--config.model.num_layerz=2"],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert "config error: unknown config key 'model.num_layerz'" in proc.stderr
  assert "Traceback" not in proc.stderr
  proc = subprocess.run([sys.executable, "-m", "jaxformer.cli", "train", "--steps=3"], capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2 and "--config.train.steps=100" in proc.stderr
