"""`jaxformer train | eval | generate | prepare | export | compare | reproduce`: a thin command line over importable functions.

  jaxformer train [--config experiments/NAME.py | NAME] [--workdir DIR] [--config.key=value ...]
  jaxformer eval --config experiments/NAME.py --workdir DIR [--split test] [--config.key=value ...]
  jaxformer generate --checkpoint HF_DIR_OR_NAME_OR_RUN_DIR --prompt TEXT [--num-beams 5 ...]
  jaxformer prepare TFDS_NAME [--data-dir DIR]
  jaxformer export --workdir DIR --out DIR [--step N]
  jaxformer compare [--suite FILE] [--kinds a,b] [--studies s] [--out DIR] [--report DIR] [--smoke]
  jaxformer reproduce NAME [--quick | --smoke] [--record] [--workdir DIR] [--config.key=value ...]
  jaxformer reproduce --list | --table

`train` resumes from the newest checkpoint in --workdir when there is one: rerun an interrupted
command to continue it exactly.
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
  if "bleu" in results:
    print(f"BLEU {results['bleu']:.2f} on {results['bleu_sentences']} {results['bleu_split']} sentences "
          f"(beam search; sacreBLEU {results['bleu_signature']})")
  if "sample" in results:
    print("sample:\n" + "-" * 60 + "\n" + results["sample"] + "\n" + "-" * 60)
  print(f"results: {workdir / 'results.json'}   loss curve: {workdir / 'loss.png'}   "
        f"TensorBoard: tensorboard --logdir {workdir / 'tensorboard'}")
  return 0


def _eval(args, overrides) -> int:
  from jaxformer.config import load_config, resolve_experiment
  from jaxformer.train.evaluate import evaluate_run

  config = load_config(args.config, overrides)
  workdir = Path(args.workdir or Path("runs") / resolve_experiment(args.config).stem)
  results = evaluate_run(config, workdir, args.split)
  ev = results["eval"]
  print(f"{results['split']}: loss {ev['nll']:.4f}  perplexity {ev['perplexity']:.3f}  accuracy {ev['accuracy']:.4f}")
  if "bleu" in results:
    print(f"BLEU {results['bleu']:.2f} on {results['bleu_sentences']} sentences (sacreBLEU {results['bleu_signature']})")
    for ex in results["examples"][:3]:
      print(f"  source:    {ex['source']}\n  reference: {ex['reference']}\n  output:    {ex['output']}")
  if "exact_match" in results:
    print(f"greedy-decoding exact match: {results['exact_match']:.4f}")
  print(f"results: {workdir / ('eval_' + results['split'] + '.json')}")
  return 0


def _export(args) -> int:
  from jaxformer.train.checkpoint import export_params

  print(f"parameters written to {export_params(args.workdir, args.out, args.step)}")
  return 0


def _prepare(args) -> int:
  from jaxformer.data import prepare

  print(f"{args.name} is ready in {prepare(args.name, args.data_dir)}")
  return 0


def _generate(args) -> int:
  import time

  from jaxformer.decode.text import generate_text, load_for_generation

  options = dict(max_length=args.max_length, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                 length_penalty=args.length_penalty, early_stopping=args.early_stopping,
                 num_return_sequences=args.num_return_sequences, do_sample=args.do_sample,
                 temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                 repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
                 min_new_tokens=args.min_new_tokens)
  options = {k: v for k, v in options.items() if v is not None}  # only what was given overrides the checkpoint
  start = time.perf_counter()
  loaded = load_for_generation(args.checkpoint, dtype=args.dtype)
  loaded_s = time.perf_counter() - start
  results = generate_text(loaded, args.prompt, options, seed=args.seed)
  for prompt, outputs in zip(args.prompt, results):
    print(f"=== {prompt!r}")
    for i, (text, score) in enumerate(outputs):
      print(f"--- {i}" + (f" (score {score:.4f})" if score is not None else ""))
      print(text)
  print(f"\nloaded in {loaded_s:.1f} s; generated (incl. compilation) in "
        f"{time.perf_counter() - start - loaded_s:.1f} s", file=sys.stderr)
  return 0


def _compare(args) -> int:
  from jaxformer.nn.config import ATTENTION_KINDS
  from jaxformer.train.compare import compare

  logging.getLogger("jaxformer.compare").setLevel(logging.INFO)  # one line per run; the runs themselves are quiet
  kinds = args.kinds.split(",") if args.kinds else ATTENTION_KINDS
  studies = args.studies.split(",") if args.studies else None
  records = compare(args.out, suite=args.suite, kinds=kinds, studies=studies, smoke=args.smoke, report=args.report)
  report = Path(args.report or args.out)
  print((report / "results.md").read_text())
  print(f"{len(records)} runs; table: {report / 'results.md'}   plot: {report / 'comparison.png'}")
  return 0


def _reproduce(args, overrides) -> int:
  from jaxformer.train.reproduce import published_text, reproduce, reproductions, target_text, write_results_table

  if args.list:
    print("\n".join(reproductions()))
    return 0
  if args.table:
    print(f"wrote {write_results_table()}")
    return 0
  if not args.name:
    raise ValueError("name a reproduction (jaxformer reproduce --list shows them), or pass --table / --list")
  mode = "quick" if args.quick else "smoke" if args.smoke else "full"
  r = reproduce(args.name, args.workdir, overrides, mode=mode, record=args.record, progress=not args.no_progress)
  verdict = {True: " reached", False: " NOT reached", None: " (not judged)" if r["mode"] == "smoke" else ""}
  print(f"\n{r['name']} ({r['paper']}, {r['source']}): {r['metric_name']} {r['value']:.4g}; published "
        f"{published_text(r['published'])}; target {target_text(r['goal'], r['target'])}{verdict[r['passed']]}; "
        f"{r['total_s']:.0f} s on {r['hardware']}")
  return 0 if r["passed"] is not False else 1


def _early_stopping(value: str):
  choices = {"true": True, "false": False, "never": "never"}
  if value.lower() not in choices:
    raise argparse.ArgumentTypeError(f"expected true, false or never, got {value!r}")
  return choices[value.lower()]


def _add_generate_parser(sub):
  g = sub.add_parser("generate", help="generate text from a Hugging Face checkpoint or a jaxformer run",
                     epilog="Options mean what they mean in Hugging Face `generate`; defaults come from the "
                            "checkpoint's generation_config.json, then HF's (max_length 20, greedy).")
  g.add_argument("--checkpoint", required=True,
                 help="a local HF checkpoint directory, a Hub name (downloaded), or a `jaxformer train` run dir")
  g.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch)")
  g.add_argument("--max-length", type=int, help="total length incl. the prompt (HF semantics)")
  g.add_argument("--max-new-tokens", type=int)
  g.add_argument("--min-new-tokens", type=int)
  g.add_argument("--num-beams", type=int)
  g.add_argument("--length-penalty", type=float)
  g.add_argument("--early-stopping", nargs="?", const=True, type=_early_stopping, metavar="true|false|never")
  g.add_argument("--num-return-sequences", type=int)
  g.add_argument("--do-sample", action=argparse.BooleanOptionalAction, default=None,
                 help="sample (default: the checkpoint's generation_config, else greedy)")
  g.add_argument("--temperature", type=float)
  g.add_argument("--top-k", type=int)
  g.add_argument("--top-p", type=float)
  g.add_argument("--repetition-penalty", type=float)
  g.add_argument("--no-repeat-ngram-size", type=int)
  g.add_argument("--seed", type=int, default=0, help="sampling seed")
  g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")


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
  ev = sub.add_parser("eval", help="evaluate a finished run: BLEU (translation), perplexity (LM), accuracy",
                      epilog="Any --config.KEY=VALUE overrides a config value, e.g. --config.eval.num_beams=1")
  ev.add_argument("--config", default=None, help="the experiment the run was trained with")
  ev.add_argument("--workdir", default=None, help="the run directory (default: runs/<experiment>)")
  ev.add_argument("--split", default=None, help="dataset split (default: the config's data.eval_split)")
  pr = sub.add_parser("prepare", help="download and prepare a TFDS dataset (array_record) for training")
  pr.add_argument("name", help="TFDS name, e.g. wmt14_translate/de-en")
  pr.add_argument("--data-dir", default=None, help="TFDS data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
  ex = sub.add_parser("export", help="write the parameters of a training checkpoint for inference (no optimizer state)")
  ex.add_argument("--workdir", required=True, help="the run directory of `jaxformer train`")
  ex.add_argument("--out", required=True, help="output directory (readable by eval / generate --checkpoint)")
  ex.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
  cm = sub.add_parser("compare", help="train every attention kind on the same tasks and budget: a table and a plot")
  cm.add_argument("--suite", default=None, help="suite file (default: experiments/suites/compare_attention.py)")
  cm.add_argument("--kinds", default=None, help="comma-separated model.attention.kind values (default: all)")
  cm.add_argument("--studies", default=None, help="comma-separated study names of the suite (default: all)")
  cm.add_argument("--out", default="runs/compare", help="output directory (runs, results.md, comparison.png)")
  cm.add_argument("--report", default=None, help="where results.md/.json and comparison.png go (default: --out)")
  cm.add_argument("--smoke", action="store_true", help="the suite's tiny budget (a check that everything runs)")
  rp = sub.add_parser("reproduce", help="run a paper reproduction, judged against its target (or reported)",
                      epilog="Any --config.KEY=VALUE overrides a config value. Exit status 1: the target was missed.")
  rp.add_argument("name", nargs="?", help="the reproduction (an experiment with a reproduce section)")
  rp.add_argument("--workdir", default=None, help="run directory (default: runs/reproduce/NAME)")
  how = rp.add_mutually_exclusive_group()
  how.add_argument("--quick", action="store_true", help="the shortened run CI checks, against its own target")
  how.add_argument("--smoke", action="store_true", help="seconds: checks that everything runs; not judged")
  rp.add_argument("--record", action="store_true", help="write results/NAME.json and regenerate RESULTS.md")
  rp.add_argument("--list", action="store_true", help="list the reproductions")
  rp.add_argument("--table", action="store_true", help="regenerate RESULTS.md from results/*.json")
  rp.add_argument("--no-progress", action="store_true", help="no progress bar")
  _add_generate_parser(sub)
  args, rest = parser.parse_known_args(argv)
  if args.command in ("generate", "prepare", "export", "compare"):
    if rest:
      parser.error(f"unrecognised arguments {rest}")
    logging.basicConfig(level=logging.WARNING if args.command in ("generate", "compare") else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    from jaxformer.train.checkpoint import CheckpointError
    try:
      return {"generate": _generate, "prepare": _prepare, "export": _export, "compare": _compare}[args.command](args)
    except (FileNotFoundError, ModuleNotFoundError, ValueError, CheckpointError) as e:
      print(f"jaxformer {args.command}: {e}", file=sys.stderr)
      return 2
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad:
    parser.error(f"unrecognised arguments {bad}; config overrides look like --config.train.steps=100")
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every file it writes at INFO
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU found" on every start
  from jaxformer.config import ConfigError, load_config
  from jaxformer.train.checkpoint import CheckpointError
  from jaxformer.train.loop import NonFiniteLossError, Preempted
  try:
    if args.command == "eval":
      return _eval(args, rest)
    if args.command == "reproduce":
      return _reproduce(args, rest)
    if args.print_config:
      print(json.dumps(json.loads(load_config(args.config, rest).to_json_best_effort()), indent=1))
      return 0
    return _train(args, rest)
  except ConfigError as e:
    print(f"jaxformer: config error: {e}", file=sys.stderr)
    return 2
  except (FileNotFoundError, ValueError, CheckpointError) as e:  # missing data or run, bad settings: one line
    print(f"jaxformer {args.command}: {e}", file=sys.stderr)
    return 2
  except NonFiniteLossError as e:
    print(f"jaxformer {args.command}: stopped: {e}", file=sys.stderr)
    return 1
  except Preempted as e:  # the checkpoint is saved; the exit status says which signal (128 + n)
    print(f"jaxformer {args.command}: interrupted by {e}", file=sys.stderr)
    return 143 if str(e).startswith("SIGTERM") else 130


if __name__ == "__main__":
  sys.exit(main())
