"""Attention Is All You Need (Vaswani et al. 2017), Table 3 in miniature: the paper's ablations of the base model,
rows (A) heads, (C) depth and width, (D) dropout and label smoothing, (E) learned positions, rerun at toy scale on
the offline toy translation task, each row beside the published newstest2013 dev perplexity and BLEU.

  jaxformer reproduce aiayn_table3_toy            # 18 runs, 69 minutes on 2 CPU cores (slow; not in CI)
  jaxformer reproduce aiayn_table3_toy --smoke    # every row for a few steps: checks that everything runs

The base row is experiments/toy_translation.py (3+3 post-LN layers, width 128, 4 heads of 32, d_ff 512, dropout
0.1, label smoothing 0.1, sinusoidal positions, the paper's Adam and inverse-square-root schedule, warmup 400)
stopped at step 800 of its 1600 (the schedule does not depend on the run's length: the same training up to there),
batches of 32 packed rows, scored as the paper scores Table 3: per-piece perplexity of the validation split and
BLEU of beam search (4 beams, length penalty 0.6) on it, with no checkpoint averaging (sacreBLEU here, where the
paper's is tokenized BLEU). Every other row changes what the paper's row changes, scaled to the base: the paper's
8 heads of 64 become 4 of 32, its 6 layers 3, d_model 512 -> 128, d_ff 2048 -> 512, so its h = 1/4/16/32 are
h = 1/2/8/16 here (d_k = d_model / h as in the paper), N = 2/4/8 are N = 1/2/4, d_model 256/1024 (d_k scaled with
it) are 64/256, d_ff 1024/4096 are 256/1024. Row (B) (d_k alone) is left out. Row labels name the change made
here; `paper_row` names the published row it stands for. One row is not the paper's: the base trained again with
another seed, which shows how much two runs differ anyway (the seed also draws the sample the SentencePiece
vocabulary is trained on, so that row's pieces differ a little too).

The metric is how many of the paper's directions (each row's PPL and BLEU, better or worse than the base) the
miniature reproduces, among those the paper shows as a change (|dPPL| >= 0.05, |dBLEU| >= 0.2; its other rows are
"no change" and are listed, not counted). Nothing is expected of it (goal "report"): the point is the honest
comparison. At 800 steps on 200k generated pairs the models are far from overfitting, whereas the paper's base
trains 100k steps on 4.5M pairs, so dropout and label smoothing, which the paper finds helpful, are expected to cost
here, and bigger models win only if they learn faster. Measured: 13 of the 25 directions (the per-row table
is in RESULTS.md; the README discusses it).
"""
import ml_collections
from _common import aiayn_optim, base_config

from jaxformer.nn.config import TransformerConfig

# Table 3 of the paper (newstest2013 dev): (per-wordpiece PPL, BLEU) of the base model and of each row used here.
PAPER_BASE = (4.92, 25.8)


def _row(row: str, override: str, paper_row: str, ppl: float, bleu: float) -> dict:
  """A variant: its row of Table 3, the override that makes it, the paper's row it stands for and that row's
  published (PPL, BLEU)."""
  return dict(row=row, overrides=[override], paper_row=paper_row, paper=(ppl, bleu))


VARIANTS = {
    "h=1": _row("A", "model.num_heads=1", "h=1, d_k=512", 5.29, 24.9),
    "h=2": _row("A", "model.num_heads=2", "h=4, d_k=128", 5.00, 25.5),
    "h=8": _row("A", "model.num_heads=8", "h=16, d_k=32", 4.91, 25.8),
    "h=16": _row("A", "model.num_heads=16", "h=32, d_k=16", 5.01, 25.4),
    "N=1": _row("C", "model.num_layers=1", "N=2", 6.11, 23.7),
    "N=2": _row("C", "model.num_layers=2", "N=4", 5.19, 25.3),
    "N=4": _row("C", "model.num_layers=4", "N=8", 4.88, 25.5),
    "d_model=64": _row("C", "model.d_model=64", "d_model=256, d_k=32", 5.75, 24.5),
    "d_model=256": _row("C", "model.d_model=256", "d_model=1024, d_k=128", 4.66, 26.0),
    "d_ff=256": _row("C", "model.mlp_dim=256", "d_ff=1024", 5.12, 25.4),
    "d_ff=1024": _row("C", "model.mlp_dim=1024", "d_ff=4096", 4.75, 26.2),
    "dropout=0": _row("D", "model.dropout_rate=0.0", "P_drop=0.0", 5.77, 24.6),
    "dropout=0.2": _row("D", "model.dropout_rate=0.2", "P_drop=0.2", 4.95, 25.5),
    "smoothing=0": _row("D", "optim.label_smoothing=0.0", "eps_ls=0.0", 4.67, 25.3),
    "smoothing=0.2": _row("D", "optim.label_smoothing=0.2", "eps_ls=0.2", 5.47, 25.7),
    "learned positions": _row("E", "model.position=learned", "positional embedding", 4.92, 25.7),
    # not in the paper: the base again with another seed (initialisation and data order), to show the noise
    "base, seed 1": dict(row="", overrides=["seed=1"], paper_row="(none)", paper=None),
}
TIES = {"PPL": 0.05, "BLEU": 0.2}  # smaller published differences count as "no change"


def get_config():
  model = TransformerConfig.aiayn_base(vocab_size=0, d_model=128, num_heads=4, mlp_dim=512, num_layers=3,
                                       dropout_rate=0.1, max_len=128)
  c = base_config(model, "encoder_decoder")
  c.name = "aiayn_table3_toy"
  c.data.update(dict(name="toy_translation", train_size=200_000, eval_size=1000, extra_words=3000, vocab_size=2000,
                     max_len=64, batching="pack"))
  c.train.update(dict(steps=800, batch_size=32, log_every=100, eval_every=0, eval_batches=0, eval_batch_size=64,
                      tensorboard=False))
  c.checkpoint.every = 0
  aiayn_optim(c, warmup_steps=400)
  del c.sample
  c.reproduce = ml_collections.ConfigDict(dict(
      family="translation", paper="Vaswani et al. 2017, Table 3 in miniature",
      source="rows A, C, D, E (toy translation, 800 steps per row)", metric="directions_reproduced",
      metric_name="paper's directions reproduced", published="per row (table below)", target=None, goal="report",
      hardware="2 CPU cores", runtime="about 70 minutes",
      smoke=("train.steps=4", "data.train_size=2000", "data.eval_size=16", "data.vocab_size=300",
             "eval.bleu_examples=8"),
      quick=(), quick_target=None))
  return c


def _direction(delta: float, tie: float) -> str:
  """+, - or = (|delta| below `tie`), on delta rounded to 3 decimals: 26.0 - 25.8 is a change of 0.2, not 0.1999."""
  delta = round(delta, 3)
  return "=" if abs(delta) < tie else ("+" if delta > 0 else "-")


def analyze(config, workdir, results, variants) -> dict:
  """Each row's PPL and BLEU beside the paper's, as changes from the base, and the share of the paper's directions
  (among the changes it reports) that the miniature reproduces. The miniature's "no change" uses the same
  thresholds relative to the base: |dPPL| < 1% of the base PPL, |dBLEU| < 0.2."""
  base = (results["eval"]["perplexity"], results["bleu"])
  rows = [["", "base", "(base)", f"{PAPER_BASE[0]:.2f}", f"{PAPER_BASE[1]:.1f}", f"{base[0]:.3f}", f"{base[1]:.1f}",
           "", "", f"{results['num_params'] / 1e6:.2f}M"]]
  agree = counted = 0
  for label, v in VARIANTS.items():
    r, paper = variants[label], v["paper"]
    ours = (r["eval"]["perplexity"], r["bleu"])
    if paper is None:  # the seed row
      rows.append([v["row"], label, v["paper_row"], "", "", f"{ours[0]:.3f}", f"{ours[1]:.1f}",
                   f"{ours[0] - base[0]:+.3f}", f"{ours[1] - base[1]:+.1f}", f"{r['num_params'] / 1e6:.2f}M"])
      continue
    verdicts = []
    for i, name in enumerate(("PPL", "BLEU")):
      published = _direction(paper[i] - PAPER_BASE[i], TIES[name])
      mine = _direction(ours[i] - base[i], TIES[name] if name == "BLEU" else 0.01 * base[0])
      if published != "=":
        counted += 1
        agree += mine == published
      verdicts.append(f"{published} / {mine}" + (" ✓" if mine == published and published != "=" else ""))
    rows.append([v["row"], label, v["paper_row"], f"{paper[0]:.2f}", f"{paper[1]:.1f}", f"{ours[0]:.3f}",
                 f"{ours[1]:.1f}", *verdicts, f"{r['num_params'] / 1e6:.2f}M"])
  note = ("Directions are changes from the base row: + higher, - lower, = no change (the paper's: |dPPL| < 0.05, "
          "|dBLEU| < 0.2; the miniature's: |dPPL| < 1% of the base, |dBLEU| < 0.2), published / miniature, "
          "✓ where a change the paper reports is reproduced; the seed row gives its changes themselves, the noise "
          "between two runs of the base. Lower PPL and higher BLEU are better.")
  return {"directions_reproduced": agree / max(counted, 1), "directions_counted": counted,
          "table": {"columns": ["row", "change here", "paper's row", "paper PPL", "paper BLEU", "PPL", "BLEU",
                                "PPL direction", "BLEU direction", "params"],
                    "rows": rows, "note": note}}
