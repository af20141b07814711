"""`jaxformer train`: a thin command line over importable functions.

  jaxformer train [--config experiments/NAME.py | NAME] [--workdir DIR] [--config.key=value ...]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _train(args, overrides) -> int:
  from jaxformer.config import load_config, resolve_experiment
  from jaxformer.train import train

  config = load_config(args.config, overrides)
  workdir = Path(args.workdir or Path("runs") / resolve_experiment(args.config).stem)
  print(f"experiment {config.get('name') or args.config}  ->  workdir {workdir}", flush=True)
  results = train(config, workdir, progress=not args.no_progress)
  ev = results["eval"]
  print(f"\nfinal validation loss {ev['nll']:.4f} (perplexity {ev['perplexity']:.3f}, "
        f"token accuracy {ev['accuracy']:.4f}) after {results['step']} steps, {results['total_s']:.0f} s")
  if "exact_match" in results:
    print(f"greedy-decoding exact match: {results['exact_match']:.4f}")
  if "sample" in results:
    print("sample:\n" + "-" * 60 + "\n" + results["sample"] + "\n" + "-" * 60)
  print(f"results: {workdir / 'results.json'}   loss curve: {workdir / 'loss.png'}   "
        f"TensorBoard: tensorboard --logdir {workdir / 'tensorboard'}")
  return 0


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="jaxformer", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  tr = sub.add_parser("train", help="train an experiment config",
                      epilog="Any --config.KEY=VALUE overrides a config value, e.g. --config.train.steps=100")
  tr.add_argument("--config", default=None, help="experiment file or name (default: char_lm)")
  tr.add_argument("--workdir", default=None, help="run directory (default: runs/<experiment>)")
  tr.add_argument("--no-progress", action="store_true", help="no progress bar")
  tr.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
  args, rest = parser.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad:
    parser.error(f"unrecognised arguments {bad}; config overrides look like --config.train.steps=100")
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every file it writes at INFO
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU found" on every start
  from jaxformer.config import ConfigError, load_config
  try:
    if args.print_config:
      print(json.dumps(json.loads(load_config(args.config, rest).to_json_best_effort()), indent=1))
      return 0
    return _train(args, rest)
  except ConfigError as e:
    print(f"jaxformer: config error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
