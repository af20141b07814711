"""`jaxformer compare`: train every attention kind on the same tasks with the same budget; write a table and a plot.

A suite file (default experiments/suites/compare_attention.py) defines `get_studies(smoke: bool)`, a list of studies:

    dict(name="mqar", config="mqar", sweep=("model.d_model", [32, 64, 128]), metric="accuracy",
         overrides=["train.steps=1500"], title="MQAR: recall accuracy vs model width")

`sweep` is (key, values) or (keys, values) to set several keys to each value (a length and its padding).
Every (kind, sweep value) pair is one `train()` run of the study's experiment config with `model.attention.kind`
and the swept key overridden, nothing else: same data, steps, batch, optimizer and seed. `kind_overrides` (a dict
kind -> overrides) sizes a kind's own settings to the task, e.g. a local window shorter than the sequence. Runs live in
`<out>/runs/<study>/<kind>/<key>=<value>`; a finished run (results.json present) is reused, so an interrupted
comparison continues where it stopped. `<out>/results.json`, `<out>/results.md` (one table per study) and
`<out>/comparison.png` (metric vs the swept value, one line per kind) are rewritten after every run.
A kind that cannot run a task (e.g. bidirectional Linformer on a causal LM) is recorded as skipped, with why.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from jaxformer.config import EXPERIMENTS_DIR, ConfigError, import_file, load_config
from jaxformer.nn.config import ATTENTION_KINDS, TransformerConfig
from jaxformer.nn.variants import check_kind

log = logging.getLogger("jaxformer.compare")
DEFAULT_SUITE = EXPERIMENTS_DIR / "suites" / "compare_attention.py"
STUDY_KEYS = {"name", "config", "sweep", "metric", "overrides", "kind_overrides", "title"}


def load_studies(suite: str | Path | None = None, smoke: bool = False) -> list[dict]:
  path = Path(suite) if suite else DEFAULT_SUITE
  if not path.is_file():
    raise ConfigError(f"comparison suite {path} does not exist")
  studies = import_file(path).get_studies(smoke=smoke)
  for study in studies:
    unknown = set(study) - STUDY_KEYS
    missing = {"name", "config", "sweep"} - set(study)
    if unknown or missing:
      raise ConfigError(f"study {study.get('name')!r} in {path}: unknown keys {sorted(unknown)}, missing "
                        f"{sorted(missing)}; a study has {sorted(STUDY_KEYS)}")
  return studies


def _run(study: dict, kind: str, value, workdir: Path) -> dict:
  from jaxformer.train import train

  key = _label(study["sweep"][0])
  record = {"study": study["name"], "kind": kind, "key": key, "value": value}
  overrides = [*study.get("overrides", ()), *study.get("kind_overrides", {}).get(kind, ()),
               f"model.attention.kind={kind}", *(f"{k}={value}" for k in key.split(","))]
  done = workdir / "results.json"
  if done.is_file():
    results = json.loads(done.read_text())
    if results.get("compare_overrides", overrides) != overrides:
      raise ConfigError(f"{workdir} was trained with other settings ({results.get('compare_overrides')}); delete it "
                        "or compare into another --out")
  else:
    config = load_config(study["config"], overrides)
    try:  # only the kind's own limits skip a cell; any other failure stops the comparison
      cfg = dict(config.model.to_dict(), vocab_size=config.model.vocab_size or 1)
      check_kind(TransformerConfig.from_dict(cfg), config.model_kind)
    except ValueError as e:
      log.warning("compare: %s with kind=%s, %s=%s skipped: %s", study["name"], kind, key, value, e)
      return {**record, "skipped": str(e).splitlines()[0]}
    start = time.time()
    results = train(config, workdir, progress=False)
    results |= {"compare_s": round(time.time() - start, 1), "compare_overrides": overrides}
    done.write_text(json.dumps(results, indent=1))
  metric = study.get("metric", "accuracy")
  return {**record, metric: results["eval"][metric], "nll": results["eval"]["nll"],
          "seconds": results["compare_s"], "num_params": results.get("num_params")}


def _label(keys) -> str:
  """A swept key, or several keys set to the same value (e.g. a length and the padding it needs)."""
  return keys if isinstance(keys, str) else ",".join(keys)


def compare(out: str | Path, *, suite: str | Path | None = None, kinds=ATTENTION_KINDS, studies=None,
            smoke: bool = False, report: str | Path | None = None) -> list[dict]:
  """Run the suite (only the named `studies` if given) for `kinds`; returns the records and writes the report
  (results.md, results.json, comparison.png) into `report` (default: `out`, which holds the runs)."""
  out = Path(out)
  report = Path(report) if report else out
  unknown = sorted(set(kinds) - set(ATTENTION_KINDS))
  if unknown:
    raise ConfigError(f"unknown attention kinds {unknown}; known: {ATTENTION_KINDS}")
  chosen = [s for s in load_studies(suite, smoke) if not studies or s["name"] in studies]
  if studies and len(chosen) != len(set(studies)):
    raise ConfigError(f"unknown studies {sorted(set(studies) - {s['name'] for s in chosen})}")
  records, start = [], time.time()
  for study in chosen:
    key, values = study["sweep"]
    for value in values:
      for kind in kinds:
        records.append(_run(study, kind, value, out / "runs" / study["name"] / kind / f"{_label(key)}={value}"))
        write_report(report, chosen, records, time.time() - start)
        log.info("compare: %s", records[-1])
  return records


def write_report(out: Path, studies: list[dict], records: list[dict], elapsed: float) -> None:
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(records, indent=1))
  total = sum(r.get("seconds") or 0.0 for r in records)
  lines = [f"Generated by `jaxformer compare`: {len(records)} runs, {total / 60:.0f} min of training in all "
           f"({elapsed / 60:.1f} min in the last invocation; a rerun reuses finished runs). Every cell is one run "
           "with the same budget; time is the sum of a row's runs.", ""]
  for study in studies:
    key, values = _label(study["sweep"][0]), study["sweep"][1]
    metric = study.get("metric", "accuracy")
    rows = [r for r in records if r["study"] == study["name"]]
    if not rows:
      continue
    lines += [f"### {study.get('title', study['name'])}", "",
              f"`{study['config']}` with {' '.join(study.get('overrides', [])) or 'its defaults'}; {metric} by "
              f"`{key}`:", "", "| kind | " + " | ".join(map(str, values)) + " | time (s) |",
              "|---" * (len(values) + 2) + "|"]
    for kind in dict.fromkeys(r["kind"] for r in rows):
      cells, seconds = [], 0.0
      for value in values:
        r = next((r for r in rows if r["kind"] == kind and r["value"] == value), None)
        if r is None:
          cells.append("")
        elif "skipped" in r:
          cells.append("n/a")
        else:
          cells.append(f"{r[metric]:.3f}")
          seconds += r["seconds"] or 0.0
      lines.append(f"| {kind} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    skipped = {r["kind"]: r["skipped"] for r in rows if "skipped" in r}
    lines += [""] + [f"- {kind}: n/a, {why}" for kind, why in skipped.items()] + [""]
  (out / "results.md").write_text("\n".join(lines))
  _plot(out / "comparison.png", studies, records)


def _plot(path: Path, studies: list[dict], records: list[dict]) -> None:
  import matplotlib

  from jaxformer.train.metrics import new_figure

  fig = new_figure(figsize=(5.5 * len(studies), 4))
  axes = fig.subplots(1, len(studies), squeeze=False)
  kinds = list(dict.fromkeys(r["kind"] for r in records))
  colors = {kind: f"C{i}" if len(kinds) <= 10 else matplotlib.colormaps["tab20"](i) for i, kind in enumerate(kinds)}
  for ax, study in zip(axes[0], studies):
    key, values = _label(study["sweep"][0]), study["sweep"][1]
    metric = study.get("metric", "accuracy")
    rows = [r for r in records if r["study"] == study["name"] and metric in r]
    for kind in kinds:  # one color per kind in every panel, whichever kinds a study skipped
      points = sorted((r["value"], r[metric]) for r in rows if r["kind"] == kind)
      if points:
        ax.plot(*zip(*points), "o-", label=kind, color=colors[kind], lw=2.5 if kind == "softmax" else 1.2)
    ax.set_xscale("log", base=2)
    ax.set_xticks(values, [str(v) for v in values])
    ax.set(title=study.get("title", study["name"]), xlabel=key, ylabel=metric)
    ax.grid(alpha=0.3)
  handles = {h.get_label(): h for ax in axes[0] for h in ax.get_lines()}  # every kind plotted anywhere
  axes[0][-1].legend(handles.values(), handles.keys(), fontsize=8, loc="best")
  fig.tight_layout()
  fig.savefig(path)
