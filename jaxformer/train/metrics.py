"""Where metrics go: `metrics.jsonl` (one JSON object per logged step), TensorBoard
event files, and the console. Only process 0 writes."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import jax
import numpy as np

log = logging.getLogger("jaxformer.train")


class MetricWriter:
  def __init__(self, workdir: str | Path, tensorboard: bool = True, purge_step: int | None = None):
    """purge_step: a resumed run's first step; TensorBoard then drops the earlier run's events from
    that step on (they were logged after the checkpoint and are logged again)."""
    self.workdir = Path(workdir)
    self.active = jax.process_index() == 0
    self.tb = None
    if self.active:
      self.workdir.mkdir(parents=True, exist_ok=True)
      self.jsonl = (self.workdir / "metrics.jsonl").open("a")
      if tensorboard:
        from tensorboardX import SummaryWriter
        self.tb = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=purge_step)

  def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
    if not self.active:
      return
    record = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
    self.jsonl.write(json.dumps(record) + "\n")
    self.jsonl.flush()
    if self.tb is not None:
      for k, v in metrics.items():
        self.tb.add_scalar(f"{split}/{k}", float(v), int(step))
      self.tb.flush()

  def write_maps(self, step: int, maps: dict) -> None:
    """Attention maps {layer: [B, N, T, S]} to TensorBoard: the first example's heads, each scaled to its max."""
    if not self.active or self.tb is None:
      return
    for layer, weights in maps.items():
      heads = np.asarray(weights[0], np.float32)  # [N, T, S]
      heads = heads / np.maximum(heads.max(axis=(1, 2), keepdims=True), 1e-9)
      self.tb.add_images(f"attention_maps/{layer}", heads[:, None], int(step), dataformats="NCHW")
    self.tb.flush()

  def close(self) -> None:
    if self.active:
      self.jsonl.close()
      if self.tb is not None:
        self.tb.close()


def read_metrics(workdir: str | Path) -> list[dict]:
  path = Path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curves(workdir: str | Path, out_name: str = "loss.png") -> Path:
  """Train and eval loss against step, from metrics.jsonl, saved as a PNG in the workdir."""
  records = read_metrics(workdir)
  fig = new_figure(figsize=(6, 4))
  ax = fig.subplots()
  for split, key, style in (("train", "loss", "-"), ("eval", "nll", "o-")):
    pts = [(r["step"], r[key]) for r in records if r["split"] == split and key in r and math.isfinite(r[key])]
    if pts:
      ax.plot(*zip(*pts), style, label=f"{split} {key}")
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats per token)")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  out = Path(workdir) / out_name
  fig.savefig(out)
  return out


def new_figure(**kw):
  """A matplotlib Figure drawn off-screen without pyplot, so saving plots never changes a notebook's backend."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(dpi=100, **kw)
  FigureCanvasAgg(fig)
  return fig
