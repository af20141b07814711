"""Shared defaults for experiment configs (files starting with _ are not experiments)."""
import ml_collections

from jaxformer.config import model_config_dict
from jaxformer.nn.config import TransformerConfig


def base_config(model: TransformerConfig, model_kind: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = ""
  c.seed = 0
  c.model_kind = model_kind
  c.model = model_config_dict(model)
  c.data = ml_collections.ConfigDict()
  c.train = ml_collections.ConfigDict(dict(
      steps=1000, batch_size=32, grad_accum=1, log_every=50, eval_every=250,
      eval_batches=4, eval_batch_size=64, tensorboard=True, average_last=0, average_every=0,
      diagnostics=False))  # diagnostics: per-layer, per-head attention statistics (and maps) at every evaluation
  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-3, schedule="cosine", warmup_steps=100, min_lr_ratio=0.1,
      b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.1, clip_norm=1.0, label_smoothing=0.0))
  # Devices: mesh axis sizes (-1 = the rest); see jaxformer/parallel/mesh.py for what each axis splits.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, sequence=1, tensor=1))
  # Checkpoints in <workdir>/checkpoints every `every` steps (and at the end, and on SIGTERM/SIGINT); the newest
  # `keep` plus the `keep_best` lowest eval losses are kept; `resume` continues from the workdir's newest one.
  c.checkpoint = ml_collections.ConfigDict(dict(every=1000, keep=2, keep_best=0, async_save=True, resume=True))
  # Several hosts: process 0's "host:port" and this process's id (or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES,
  # $JAX_PROCESS_ID); initialize=True lets JAX detect a TPU pod slice / SLURM / Open MPI cluster by itself.
  c.distributed = ml_collections.ConfigDict(dict(coordinator_address="", num_processes=0, process_id=-1,
                                                 initialize=False))
  c.sample = ml_collections.ConfigDict(dict(prompt="def ", num_tokens=300, temperature=0.8, top_k=0))
  # Translation: beam search and BLEU (the paper's decoding; bleu_examples 0 = the whole split).
  c.eval = ml_collections.ConfigDict(dict(num_beams=4, length_penalty=0.6, max_extra_len=50, bleu_examples=0,
                                          batch_size=64))
  return c


def aiayn_optim(c: ml_collections.ConfigDict, warmup_steps: int) -> None:
  """Attention Is All You Need, section 5.3-5.4: Adam(0.9, 0.98, 1e-9), lr = d^-0.5 min(step^-0.5,
  step warmup^-1.5) (optim.lr is a multiplier of it), no weight decay or clipping, label smoothing 0.1."""
  c.optim.update(dict(name="adam", schedule="rsqrt", lr=1.0, warmup_steps=warmup_steps, b1=0.9, b2=0.98, eps=1e-9,
                      weight_decay=0.0, clip_norm=0.0, label_smoothing=0.1))
