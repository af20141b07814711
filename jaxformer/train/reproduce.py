"""`jaxformer reproduce NAME`: run a paper reproduction, judge it against its target and record the result.

A reproduction is an experiment config (experiments/NAME.py) with a `reproduce` section:

  family        the RESULTS.md table it belongs to, e.g. "synthetic tasks"
  paper         who and what, e.g. "Karpathy 2020, minGPT"
  source        the table / figure / notebook the number comes from
  metric        where the number is in the run's results: "eval.accuracy", "eval.sequence_accuracy", "bleu", or
                a key that the experiment's own `analyze(config, workdir, results)` returns
  metric_name   how the tables name it ("test exact match")
  published     the paper's number (or a text where it has none, e.g. an ablation's); target: the threshold a run must reach; goal: "max" (reach at least the
                target), "min" (at most) or "report" (measured and recorded, not judged; target None)
  hardware, runtime   what the paper's setting needs here
  smoke         overrides for a seconds-long run that only checks that everything runs (never judged)
  quick, quick_target   overrides for the shortened run CI judges, and its threshold

`reproduce()` trains the config (resuming as `jaxformer train` does); when the experiment module defines `VARIANTS`
({label: {"overrides": [...], ...}}, e.g. the rows of an ablation table), it also trains the config once per variant
(`train_variants`). It calls the module's `analyze(config, workdir, results[, variants])` when there is one, and
writes `<workdir>/reproduction.json` (metric, published number, target, passed, time, hardware, versions, git
revision, the command) and `<workdir>/reproduction.png` (the metric's curve against the published
number). With `record=True` the JSON is also copied to results/NAME.json, and `results_table()` turns the folder
into RESULTS.md: the tables are generated from the JSON files, never typed.
"""
from __future__ import annotations

import copy
import datetime
import json
import logging
import math
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

from jaxformer.config import EXPERIMENTS_DIR, ConfigError, apply_override, import_file, load_config, resolve_experiment

log = logging.getLogger("jaxformer.reproduce")
REPO = EXPERIMENTS_DIR.parent
RESULTS_DIR = REPO / "results"
SPEC_KEYS = ("family", "paper", "source", "metric", "metric_name", "published", "target", "goal", "hardware",
             "runtime", "smoke", "quick", "quick_target")
MODES = ("full", "quick", "smoke")
GOALS = ("max", "min", "report")


def spec(config, name: str = "") -> dict:
  """The config's `reproduce` section as a dict, checked: every key present, goal max or min."""
  if "reproduce" not in config:
    raise ConfigError(f"experiment {name or config.get('name')!r} is not a reproduction (no `reproduce` section); "
                      f"reproductions: {reproductions()}")
  s = config.reproduce.to_dict()
  missing = [k for k in SPEC_KEYS if k not in s]
  judged = s.get("goal") in ("max", "min")
  if missing or s.get("goal") not in GOALS or judged != isinstance(s.get("target"), int | float):
    raise ConfigError(f"the reproduce section of {name!r} needs {list(SPEC_KEYS)} with goal 'max' or 'min' and a "
                      f"numeric target, or goal 'report' and target None; missing: {missing}, goal: "
                      f"{s.get('goal')!r}, target: {s.get('target')!r}")
  return s


def reproductions() -> list[str]:
  """Names of the experiments that define a `reproduce` section."""
  return list(_specs())


def _specs() -> dict[str, dict]:
  """{name: checked reproduce section} of every reproduction, each config loaded once."""
  paths = sorted(p for p in EXPERIMENTS_DIR.glob("*.py") if not p.stem.startswith("_"))
  configs = {p.stem: load_config(p) for p in paths}
  return {name: spec(c, name) for name, c in configs.items() if "reproduce" in c}


def metric_value(results: dict, path: str) -> float:
  """`results` looked up along a dotted path ("eval.accuracy")."""
  node = results
  for part in path.split("."):
    if not isinstance(node, dict) or part not in node:
      found = sorted(node) if isinstance(node, dict) else type(node).__name__
      raise ValueError(f"the run's results have no {path!r} ({part!r} is not among {found}); fix reproduce.metric")
    node = node[part]
  if not isinstance(node, int | float):
    raise ValueError(f"the run's results give {path!r} = {node!r}, not a number; fix reproduce.metric")
  return float(node)


def passed(value: float, target: float | None, goal: str) -> bool | None:
  """Whether `value` meets `target`; None for goal "report" (nothing is expected of it)."""
  if goal == "report":
    return None
  return math.isfinite(value) and (value >= target if goal == "max" else value <= target)


def published_text(published) -> str:
  """The published number, or a text where the paper gives no single number (an ablation table's rows)."""
  return published if isinstance(published, str) else f"{published:g}"


def target_text(goal: str, target: float | None) -> str:
  return "none (reported)" if goal == "report" else f"{'≥' if goal == 'max' else '≤'} {target:g}"


def git_revision() -> str:
  """The checkout's commit, with "+dirty" when files other than the records (results/, RESULTS.md) differ from it
  or are untracked; "unknown" outside git."""
  def git(*args):
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
  try:
    head = git("rev-parse", "HEAD")
    if head.returncode:
      return "unknown"
    dirty = git("status", "--porcelain", "--", ".", ":!results", ":!RESULTS.md", ":!runs").stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def command_line(name: str, mode: str, overrides) -> str:
  flag = {"full": "", "quick": " --quick", "smoke": " --smoke"}[mode]
  return f"jaxformer reproduce {name}{flag}" + "".join(" " + shlex.quote(f"--config.{o}") for o in overrides)


def _settings_key(config) -> dict:
  """What a run's result depends on: the resolved config, less the reproduce section (the paper's numbers, not the
  run's), the distributed settings (they differ per process) and checkpointing (how often it is saved)."""
  d = json.loads(config.to_json_best_effort())
  return {k: v for k, v in d.items() if k not in ("reproduce", "distributed", "checkpoint")}


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
  return out


def _check_workdir(workdir: Path, settings: dict) -> None:
  """A workdir holds one setting (mode, overrides, config): resuming it under another would mix two settings in one
  record. Every process writes the same file, each atomically (no process reads a half-written one)."""
  f = workdir / "reproduce_settings.json"
  if f.exists():
    old, new = _flat(json.loads(f.read_text())), _flat(settings)
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if differ:
      raise ValueError(f"{workdir} holds a reproduction run with other settings (they differ in {differ[:8]}); delete "
                       "that folder to train it afresh, or use another --workdir")
  workdir.mkdir(parents=True, exist_ok=True)
  tmp = f.with_name(f".{f.name}.{os.getpid()}")
  tmp.write_text(json.dumps(settings))
  tmp.replace(f)


def _slug(label: str) -> str:
  return re.sub(r"[^A-Za-z0-9_=-]+", "_", label)


def _plan_variants(config, workdir: Path, variants: dict) -> dict[str, tuple]:
  """{label: (config with the variant's overrides, its workdir)}, every workdir's settings checked: a bad override
  or a workdir of other settings is an error before anything trains."""
  slugs = [_slug(label) for label in variants]
  if len(set(slugs)) != len(slugs) or any(not s.strip("_") for s in slugs):
    raise ConfigError(f"variant labels must give distinct folder names; {list(variants)} give {slugs}")
  plan = {}
  for (label, variant), slug in zip(variants.items(), slugs):
    c = copy.deepcopy(config)
    for item in variant["overrides"]:
      apply_override(c, item)
    vdir = Path(workdir) / "variants" / slug
    _check_workdir(vdir, {"variant": label, "config": _settings_key(c)})
    plan[label] = (c, vdir)
  return plan


def train_variants(config, workdir: Path, variants: dict, *, revision: str = "", progress: bool = False
                   ) -> tuple[dict, int]:
  """Train `config` once per variant (label -> {"overrides": [...]}) in workdir/variants/<label>: the rows of an
  ablation table. A variant finished under the same settings is read back from its results.json (which names the
  git `revision` that trained it), not retrained, so an interrupted table continues where it stopped. The run's
  data caches (workdir/tfds, workdir/vocab, keyed by their settings) are linked into each variant's workdir, so the
  corpus and vocabulary are made once. Returns ({label: results}, how many variants were trained now)."""
  from jaxformer.parallel import is_main_process
  from jaxformer.parallel.distributed import sync
  from jaxformer.train.loop import train

  out, trained = {}, 0
  for label, (c, vdir) in _plan_variants(config, workdir, variants).items():
    done = vdir / "results.json"
    if done.is_file() and json.loads(done.read_text())["step"] == c.train.steps:
      log.info("variant %s: finished before, read back from %s", label, done)
      out[label] = json.loads(done.read_text())
      continue
    if is_main_process():
      for cache in ("tfds", "vocab"):
        link = vdir / cache
        if (Path(workdir) / cache).is_dir() and not link.is_symlink() and not link.exists():
          link.symlink_to(os.path.relpath(Path(workdir) / cache, vdir), target_is_directory=True)
    sync(f"variant {label}")
    log.info("variant %s (%d of %d): %s", label, len(out) + 1, len(variants), " ".join(variants[label]["overrides"]))
    out[label] = train(c, vdir, progress=progress) | {"git": revision}
    if is_main_process():
      done.write_text(json.dumps(out[label], indent=1))
    trained += 1
  return out, trained


def reproduce(name: str, workdir=None, overrides=(), *, mode: str = "full", record: bool = False,
              progress: bool = False) -> dict:
  """Train reproduction `name` (an experiment name or file), judge its metric and write reproduction.json/png.

  mode: "full" (the paper's setting), "quick" (the shortened run CI judges against quick_target) or "smoke"
  (seconds; not judged). record: also write results/NAME.json and regenerate RESULTS.md (full runs of the repo's
  own experiments/NAME.py only). The default workdir is runs/reproduce/NAME (-quick, -smoke); a workdir is
  resumed only under the same mode, overrides and resolved config."""
  from jaxformer.parallel import is_main_process
  from jaxformer.train.loop import train

  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if record and mode != "full":
    raise ValueError("only full runs are recorded in results/ (a --quick or --smoke run is not the paper's setting)")
  path = resolve_experiment(name)
  name = path.stem
  if record and path.resolve() != (EXPERIMENTS_DIR / f"{name}.py").resolve():
    raise ValueError(f"only the repository's own experiments/{name}.py is recorded, not {path}")
  overrides = [o.removeprefix("--").removeprefix("config.") for o in overrides]
  if any(o.startswith("reproduce.") for o in overrides):
    raise ValueError("the reproduce section (paper, published number, target) cannot be overridden; edit the file")
  s = spec(load_config(path), name)
  module = import_file(path)
  analyze = getattr(module, "analyze", None)
  if not s["metric"].startswith("eval.") and analyze is None:
    raise ValueError(f"reproduce.metric={s['metric']!r} of {name} is neither an eval.* metric nor computed by an "
                     "analyze() in the experiment file")
  preset = {"full": (), "quick": tuple(s["quick"]), "smoke": tuple(s["smoke"])}[mode]
  config = load_config(path, [*preset, *overrides])
  workdir = Path(workdir or REPO / "runs" / "reproduce" / (name + ("" if mode == "full" else f"-{mode}")))
  _check_workdir(workdir, {"mode": mode, "overrides": overrides, "config": _settings_key(config)})
  variants = getattr(module, "VARIANTS", None)
  if variants is not None:
    _plan_variants(config, workdir, variants)  # their overrides and workdirs checked before anything trains
  revision = git_revision()  # the code that trains, not what the checkout holds when training ends
  start = time.time()
  results = train(config, workdir, progress=progress)
  if variants is not None:
    variant_results, trained = train_variants(config, workdir, variants, revision=revision, progress=progress)
  if record and results.get("resumed_from_step") == results["step"] and not (variants and trained):
    raise ValueError(f"{workdir} holds a finished run: nothing was trained now, so nothing is recorded; delete the "
                     "workdir (or pass another --workdir) to record a fresh run")
  extra = {} if analyze is None else analyze(config, workdir, results, *([variant_results] if variants else []))
  results |= extra
  value = metric_value(results, s["metric"])
  target = s["quick_target"] if mode == "quick" else s["target"]
  record_ = {
      "name": name, "mode": mode, "family": s["family"], "paper": s["paper"], "source": s["source"],
      "metric": s["metric"], "metric_name": s["metric_name"], "value": value, "published": s["published"],
      "target": target, "goal": s["goal"], "passed": None if mode == "smoke" else passed(value, target, s["goal"]),
      "step": results["step"], "resumed_from_step": results.get("resumed_from_step"),  # total_s: this invocation
      "total_s": round(time.time() - start, 2), "hardware": results["hardware"],
      "versions": results["versions"], "git": revision,
      "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
      "command": command_line(name, mode, overrides), "overrides": [*preset, *overrides],
      "extra": extra,
  }
  if variants is not None:  # reused variants were trained by an earlier invocation: the time is not the whole table's
    record_ |= {"variants": len(variants), "variants_trained": trained,
                "variant_revisions": sorted({r.get("git", "unknown") for r in variant_results.values()})}
  if is_main_process():  # one writer when several processes train together (asked after train() joined them)
    (workdir / "reproduction.json").write_text(json.dumps(record_, indent=1))
    plot_metric(workdir, record_)
    if record:
      RESULTS_DIR.mkdir(exist_ok=True)
      (RESULTS_DIR / f"{name}.json").write_text(json.dumps(record_, indent=1) + "\n")
      write_results_table(RESULTS_DIR, RESULTS_DIR.parent / "RESULTS.md")
  return record_


def plot_metric(workdir: Path, record: dict) -> Path | None:
  """The metric's evaluations (and its training-batch values, when logged) against step, with the published
  number and the target; None when the metric is not logged at evaluations (e.g. BLEU, computed once at the end)."""
  from jaxformer.train.metrics import new_figure, read_metrics

  if not record["metric"].startswith("eval."):
    return None
  key = record["metric"].split(".", 1)[1]
  records = read_metrics(workdir)
  curves = {split: [(r["step"], r[key]) for r in records if r["split"] == split and key in r]
            for split in ("eval", "train")}
  if not curves["eval"]:
    return None
  fig = new_figure(figsize=(6, 4))
  ax = fig.subplots()
  ax.plot(*zip(*curves["eval"]), "o-", label=f"jaxformer, evaluation ({record['mode']} run)")
  if curves["train"]:  # the same key on the training batches, when logged (their weights may differ: H3 scores all)
    ax.plot(*zip(*curves["train"]), "-", alpha=0.6, label="jaxformer, training batches")
  if not isinstance(record["published"], str):
    ax.axhline(record["published"], color="k", ls="--", label=f"published {record['published']:g}")
  if record["target"] not in (None, record["published"]):
    ax.axhline(record["target"], color="r", ls=":", label=f"target {record['target']:g}")
  ax.set_xlabel("step")
  ax.set_ylabel(record["metric_name"])
  ax.set_title(f"{record['name']}: {record['paper']}", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  out = workdir / "reproduction.png"
  fig.savefig(out)
  return out


def _revision(git: str) -> str:
  sha, dirty, _ = git.partition("+dirty")
  return sha[:10] + dirty


def _revisions(r: dict) -> str:
  """The revision that trained the run, and those of variants read back from an earlier invocation."""
  others = [_revision(g) for g in r.get("variant_revisions", []) if g != r["git"]]
  return _revision(r["git"]) + (f" (variants from {', '.join(others)})" if others else "")


def _time(r: dict) -> str:
  resumed, notes = r.get("resumed_from_step"), []
  if resumed and resumed == r["step"]:
    notes.append("base run finished before, only evaluated")
  elif resumed:
    notes.append(f"from step {resumed} to {r['step']}, resumed")
  if r.get("variants_trained", r.get("variants")) != r.get("variants"):
    notes.append(f"{r['variants_trained']} of {r['variants']} variants trained in this time")
  return f"{r['total_s'] / 60:.1f} min" + (f" ({'; '.join(notes)})" if notes else "")


def _markdown_table(name: str, table: dict) -> list[str]:
  """An analysis's own table (`extra["table"]`: columns, rows, an optional note), e.g. an ablation's rows."""
  return [f"### {name}", "", "| " + " | ".join(table["columns"]) + " |", "|---" * len(table["columns"]) + "|",
          *("| " + " | ".join(map(str, row)) + " |" for row in table["rows"]), "",
          *([table["note"], ""] if table.get("note") else [])]


def _fmt(x) -> str:
  return f"{x:.4g}" if isinstance(x, float) else str(x)


def _value(r: dict) -> str:
  """The metric, with the other numbers the experiment's analysis reported (e.g. grokking's steps to 99%)."""
  more = [f"{k} {_fmt(v)}" for k, v in r.get("extra", {}).items()
          if k != r.get("metric") and isinstance(v, int | float) and not isinstance(v, bool)]
  return _fmt(r["value"]) + (f" ({', '.join(more)})" if more else "")


def results_table(results_dir: Path) -> str:
  """RESULTS.md: one table per family, a row per reproduction, filled from results_dir/NAME.json; a reproduction
  with no recorded run is listed as not run yet, with its hardware and estimated runtime."""
  rows: dict[str, list[str]] = {}
  details: dict[str, list[str]] = {}
  for name, s in _specs().items():
    f = Path(results_dir) / f"{name}.json"
    if f.exists():
      r = json.loads(f.read_text())
      verdict = {True: ": yes", False: ": **no**", None: ""}[r["passed"]]
      row = (f"| {name} | {r['paper']}, {r['source']} | {r['metric_name']} | {published_text(r['published'])} | "
             f"{_value(r)} | {target_text(r['goal'], r['target'])}{verdict} | "
             f"{r['hardware']} | {_time(r)} | `{r['command']}` | {_revisions(r)}, {r['date']} |")
    else:
      row = (f"| {name} | {s['paper']}, {s['source']} | {s['metric_name']} | {published_text(s['published'])} | not run yet "
             f"| {target_text(s['goal'], s['target'])} | {s['hardware']} | {s['runtime']} (estimate) | "
             f"`jaxformer reproduce {name}` | |")
    rows.setdefault(s["family"], []).append(row)
    if f.exists() and "table" in r.get("extra", {}):
      details.setdefault(s["family"], []).extend(_markdown_table(name, r["extra"]["table"]))
  out = ["# Results", "",
         "Generated by `jaxformer reproduce --table` from results/*.json (written by `jaxformer reproduce NAME "
         "--record`); do not edit by hand. Each row is one run of the command shown, on the hardware shown.", ""]
  for family, lines in rows.items():
    out += [f"## {family}", "",
            "| reproduction | paper | metric | published | jaxformer | target: met | hardware | time | command "
            "| revision, date |", "|---|---|---|---|---|---|---|---|---|---|", *lines, "", *details.get(family, [])]
  return "\n".join(out)


def write_results_table(results_dir: Path = RESULTS_DIR, out: Path = REPO / "RESULTS.md") -> Path:
  """RESULTS.md from results_dir (`jaxformer reproduce --table`)."""
  Path(out).write_text(results_table(results_dir))
  log.info("wrote %s", out)
  return Path(out)
