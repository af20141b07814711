"""Attention benchmark: time, TFLOP/s and peak memory of every attention backend, as a markdown table.

How to run
  CPU smoke test (~30 s):  .venv/bin/python benchmarks/attention.py --seq-lens 256 512 --batch 1 --heads 2 --repeats 1
  CPU full table (long; B=4, N=8, D=64, fp32, S 512..16384, causal off and on):  .venv/bin/python benchmarks/attention.py
    add --causal off, --threads 1, --backends blockwise xla ... to cut it down; --mem-cap-gib (default 20) per cell.
  GPU (H200):  python benchmarks/attention.py --gpu-preset
    bf16, D=128, N=16, S 1024..65536, B = max(1, 16384 // S) (16k tokens a batch), causal off and on. Budget <= 8 min:
    ~80 cells at ~5 s each (process start + CUDA init + compile + warm-up + up to 3 runs), each cut at 60 s, cells
    predicted over 90% of device memory skipped, and after --total-budget-s (450 s) the rest print "skipped (budget)";
    cells run in S order, so the budget cuts the largest S. Not yet run on a GPU.
  Output: a markdown table on stdout (progress on stderr), then a "Targets" section.

Each (backend, S, causal) cell runs in a subprocess (this script with --cell) so that an out-of-memory ends only that
cell. On CPU the child caps its address space (RLIMIT_AS, --mem-cap-gib), so a huge allocation fails cleanly with
RESOURCE_EXHAUSTED instead of waking the OOM killer; naive/xla cells predicted over the cap are skipped up front.
FLOPs follow FlashAttention: forward 4·B·S²·N·D (halved when causal), backward 2.5× forward, so fwd+bwd = 3.5×.
Peak memory: XLA's memory analysis of the compiled fwd+bwd (temp + arguments + outputs − aliased) and the child's
max RSS (CPU) or the device's peak bytes in use (GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

GiB = 2**30
LABELS = {  # --backends key -> column title
    "reference": "naive einsum",
    "blockwise": "blockwise",
    "pallas_gpu": "pallas_gpu",
    "pallas_tpu": "pallas_tpu",
    "cudnn": "cudnn",
    "xla": "jax.nn xla",
    "nn_cudnn": "jax.nn cudnn",
}
JAXFORMER = ("reference", "blockwise", "pallas_gpu", "pallas_tpu", "cudnn")
# Bytes per B·N·S² of a fwd+bwd, fitted to the CPU measurements in shared/NOTES.md (S=4096: xla 18.4 GiB, naive
# 9.8 GiB at B=4, N=8); used only to skip cells that cannot fit.
DENSE_BYTES_PER_SCORE = {"xla": 36, "nn_cudnn": 0, "reference": 20}
CPU_SEQ_LENS = (512, 1024, 2048, 4096, 8192, 16384)
GPU_SEQ_LENS = (1024, 2048, 4096, 8192, 16384, 32768, 65536)


def flops(cfg, backward: bool) -> float:
  fwd = 4.0 * cfg["batch"] * cfg["seq"] ** 2 * cfg["heads"] * cfg["head_dim"]
  if cfg["causal"]:
    fwd /= 2
  return fwd * (3.5 if backward else 1.0)


# ---------------------------------------------------------------------------------------------------------------------
# Child: one cell


def _attention_fn(name: str, causal: bool):
  import jax

  if name == "xla" or name == "nn_cudnn":
    impl = "xla" if name == "xla" else "cudnn"
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=impl)
  import jaxformer.attention as attn
  return lambda q, k, v: attn.attention(q, k, v, causal=causal, implementation=name)


def run_cell(cfg: dict) -> dict:
  """Compiles and times one (backend, S, causal) cell; returns the JSON-able result."""
  if cfg["platform"] == "cpu" and cfg["mem_cap_gib"]:
    cap = int(cfg["mem_cap_gib"] * GiB)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))  # before JAX reserves anything
  if cfg.get("threads"):
    os.sched_setaffinity(0, range(cfg["threads"]))  # XLA:CPU sizes its pools to all cores; pin them to a few
  import importlib

  import jax
  import jax.numpy as jnp

  name = cfg["backend"]
  if name in ("pallas_gpu", "pallas_tpu", "cudnn"):
    importlib.import_module(f"jaxformer.attention.{name}")  # registers it
  B, S, N, D = cfg["batch"], cfg["seq"], cfg["heads"], cfg["head_dim"]
  dtype = jnp.dtype(cfg["dtype"])
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v, ct = (jax.random.normal(key, (B, S, N, D), jnp.float32).astype(dtype) for key in keys)
  fn = _attention_fn(name, cfg["causal"])

  def fwd_bwd(q, k, v):
    return jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * ct.astype(jnp.float32)),
                    argnums=(0, 1, 2))(q, k, v)

  result = {}
  t0 = time.perf_counter()
  fwd_c = jax.jit(fn).lower(q, k, v).compile()
  both_c = jax.jit(fwd_bwd).lower(q, k, v).compile()
  result["compile_s"] = time.perf_counter() - t0
  mem = both_c.memory_analysis()
  if mem is not None:
    result["xla_peak_bytes"] = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
                                - mem.alias_size_in_bytes)
  for key, compiled in (("fwd_s", fwd_c), ("fwd_bwd_s", both_c)):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(q, k, v))  # warm-up
    first = time.perf_counter() - t0
    repeats = cfg["repeats"] if first * cfg["repeats"] <= cfg["long_cell_s"] else 1  # long cells: one timed run
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(q, k, v))
      times.append(time.perf_counter() - t0)
    result[key] = statistics.median(times)
  result["rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
  stats = jax.devices()[0].memory_stats() if cfg["platform"] != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    result["device_peak_bytes"] = stats["peak_bytes_in_use"]
  result["status"] = "ok"
  return result


def platform_info() -> dict:
  """Platform, registered jaxformer backends and device memory (run in a child: the parent keeps JAX cold)."""
  import importlib

  import jax

  import jaxformer.attention as attn
  from jaxformer.attention import api

  for name in ("pallas_gpu", "pallas_tpu", "cudnn"):
    try:
      importlib.import_module(f"jaxformer.attention.{name}")
    except ImportError:
      pass
  platform = jax.default_backend()
  usable = []
  for name in attn.available_backends():
    backend = api._BACKENDS[name]
    if platform in backend.platforms:
      usable.append(name)
  stats = jax.devices()[0].memory_stats() or {}
  return dict(platform=platform, backends=usable, device=str(jax.devices()[0].device_kind),
              device_bytes=stats.get("bytes_limit"))


def supports(cfg: dict) -> str | None:
  """The backend's own verdict on this cell's request (jaxformer backends only), checked in the child."""
  import jaxformer.attention  # noqa: F401
  from jaxformer.attention import api

  backend = api._BACKENDS[cfg["backend"]]
  request = api.Request(platform=cfg["platform"], dtype=cfg["dtype"], batch=cfg["batch"], q_len=cfg["seq"],
                        kv_len=cfg["seq"], num_heads=cfg["heads"], num_kv_heads=cfg["heads"],
                        head_dim=cfg["head_dim"], value_head_dim=cfg["head_dim"], causal=cfg["causal"], window=False,
                        segments=False, lengths=False, bias=False, softcap=False, dropout=False, q_offset=False,
                        return_lse=False, cross=False)
  return api._unsupported(backend, request)


def child_main(argv) -> None:
  """`--cell JSON` or `--info`: prints exactly one JSON line on stdout."""
  try:
    if argv[0] == "--info":
      out = platform_info()
    else:
      cfg = json.loads(argv[1])
      reason = None
      if cfg["backend"] in JAXFORMER:
        import importlib
        if cfg["backend"] in ("pallas_gpu", "pallas_tpu", "cudnn"):
          importlib.import_module(f"jaxformer.attention.{cfg['backend']}")
        reason = supports(cfg)
      out = {"status": f"unsupported: {reason}"} if reason else run_cell(cfg)
  except MemoryError:
    out = {"status": "OOM"}
  except Exception as e:
    text = f"{type(e).__name__}: {e}"
    oom = "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text
    out = {"status": "OOM" if oom else "error: " + text.strip().splitlines()[0][:200]}
  print(json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# Parent: the table


def spawn(args: list[str], timeout: float | None) -> dict:
  try:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True,
                          timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"status": "timeout"}
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith("{"):
      return json.loads(line)
  killed = proc.returncode in (-9, 137)
  tail = (proc.stderr.strip().splitlines() or [""])[-1][:200]
  return {"status": "OOM (killed)" if killed else f"crashed (rc {proc.returncode}): {tail}"}


def predicted_bytes(name: str, cfg: dict) -> float:
  dense = DENSE_BYTES_PER_SCORE.get(name, 0) * cfg["batch"] * cfg["heads"] * float(cfg["seq"]) ** 2
  return dense + 8 * cfg["batch"] * cfg["seq"] * cfg["heads"] * cfg["head_dim"] * 4


def fmt_bytes(n) -> str:
  return "–" if n is None else f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / 2**20:.0f} MiB"


def fmt_cell(r: dict, cfg: dict) -> list[str]:
  if r.get("status") != "ok":
    return [r.get("status", "?")] + [""] * 4
  tflops = lambda key, bwd: f"{flops(cfg, bwd) / r[key] / 1e12:.3g}"
  mem = r.get("device_peak_bytes", r.get("rss_bytes"))
  return [f"{r['fwd_s'] * 1e3:.1f} ms", f"{r['fwd_bwd_s'] * 1e3:.1f} ms",
          f"{tflops('fwd_s', False)} / {tflops('fwd_bwd_s', True)}", fmt_bytes(r.get("xla_peak_bytes")),
          fmt_bytes(mem)]


def targets(results: dict, base: dict) -> list[str]:
  """The acceptance targets, evaluated on whatever cells were measured."""
  ok = lambda key: results.get(key, {}).get("status") == "ok"
  lines = []
  reference_config = (base["batch"], base["heads"], base["head_dim"], base["dtype"]) == (4, 8, 64, "float32")
  key_b, key_x = ("blockwise", 4096, False), ("xla", 4096, False)
  if reference_config and ok(key_b) and ok(key_x):
    b, x = results[key_b], results[key_x]
    speed = x["fwd_bwd_s"] / b["fwd_bwd_s"]
    mem = b["xla_peak_bytes"] / x["xla_peak_bytes"]
    rss = b["rss_bytes"] / x["rss_bytes"]
    verdict = "PASS" if speed >= 3 and mem <= 1 / 6 else "FAIL"
    lines.append(f"- S=4096 fwd+bwd, causal off: blockwise is {speed:.2f}x faster than jax.nn xla (target >= 3x) and "
                 f"uses {mem:.3f} of its XLA peak memory (target <= 0.167; max RSS ratio {rss:.3f}): {verdict}")
  else:
    lines.append("- S=4096 blockwise vs jax.nn xla: not measured (needs B=4, N=8, D=64, float32, S=4096, causal off, "
                 "both cells ok)")
  key = next((k for k in (("blockwise", 16384, False), ("blockwise", 16384, True)) if ok(k)), None)
  if key is not None:
    r = results[key]
    peak = max(r.get("rss_bytes", 0), r.get("xla_peak_bytes", 0), r.get("device_peak_bytes", 0))
    lines.append(f"- S=16384 blockwise (causal {'on' if key[2] else 'off'}) completed, peak {fmt_bytes(peak)} "
                 f"(target < 8 GiB): {'PASS' if peak < 8 * GiB else 'FAIL'}")
  else:
    lines.append("- S=16384 blockwise under 8 GiB: not measured or did not complete")
  small = sorted({(s, c) for (n, s, c) in results if n == "blockwise" and s <= 1024 and ok((n, s, c))})
  if not small:
    lines.append("- S <= 1024 blockwise within 1.25x of min(jax.nn xla, naive): not measured")
  for s, c in small:
    rivals = [results[(n, s, c)]["fwd_bwd_s"] for n in ("xla", "reference") if ok((n, s, c))]
    if not rivals:
      continue
    ratio = results[("blockwise", s, c)]["fwd_bwd_s"] / min(rivals)
    lines.append(f"- S={s} causal {'on' if c else 'off'}: blockwise fwd+bwd is {ratio:.2f}x the faster of jax.nn xla "
                 f"and naive (target <= 1.25x): {'PASS' if ratio <= 1.25 else 'FAIL'}")
  return lines


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--seq-lens", type=int, nargs="+", help="S values (default: CPU 512..16384, GPU 1024..65536)")
  p.add_argument("--batch", type=int, help="batch size (default 4; GPU preset: 16384 // S)")
  p.add_argument("--heads", type=int, help="heads N (default 8; GPU preset 16)")
  p.add_argument("--head-dim", type=int, help="head dim D (default 64; GPU preset 128)")
  p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default float32; GPU preset bfloat16")
  p.add_argument("--causal", choices=["on", "off", "both"], default="both")
  p.add_argument("--backends", nargs="+", choices=sorted(LABELS), help="default: all available on this platform")
  p.add_argument("--repeats", type=int, default=3, help="timed runs per cell (median); 1 for cells slower than "
                                                        "--long-cell-s")
  p.add_argument("--long-cell-s", type=float, default=30.0)
  p.add_argument("--threads", type=int, help="pin each cell to this many cores (default: all; XLA uses them all)")
  p.add_argument("--mem-cap-gib", type=float, help="per-cell memory cap (default 20 on CPU, 90%% of the device)")
  p.add_argument("--cell-timeout", type=float, default=900.0, help="seconds per cell before 'timeout'")
  p.add_argument("--total-budget-s", type=float, help="stop starting cells after this many seconds")
  p.add_argument("--gpu-preset", action="store_true", help="bf16, D=128, N=16, B·S=16k, S 1024..65536, <= 8 min")
  return p.parse_args(argv)


def main(argv) -> None:
  args = parse_args(argv)
  started = time.perf_counter()
  info = spawn(["--info"], timeout=300)
  if "platform" not in info:
    sys.exit(f"could not start JAX: {info}")
  platform = info["platform"]
  gpu = args.gpu_preset
  if gpu:
    args.cell_timeout = min(args.cell_timeout, 60.0)
    args.total_budget_s = args.total_budget_s or 450.0
    args.long_cell_s = min(args.long_cell_s, 5.0)
  seq_lens = args.seq_lens or (GPU_SEQ_LENS if gpu or platform == "gpu" else CPU_SEQ_LENS)
  base = dict(heads=args.heads or (16 if gpu else 8), head_dim=args.head_dim or (128 if gpu else 64),
              dtype=args.dtype or ("bfloat16" if gpu else "float32"), batch=args.batch or 4)
  cap_gib = args.mem_cap_gib or (20.0 if platform == "cpu" else 0.9 * (info.get("device_bytes") or 80 * GiB) / GiB)
  available = [n for n in JAXFORMER if n in info["backends"]] + ["xla"] + (["nn_cudnn"] if platform == "gpu" else [])
  names = [n for n in (args.backends or available) if n in available]
  causals = {"on": [True], "off": [False], "both": [False, True]}[args.causal]
  print(f"# Attention benchmark on {platform} ({info['device']}): N={base['heads']}, D={base['head_dim']}, "
        f"{base['dtype']}, B={'16384 // S' if gpu and not args.batch else base['batch']}, "
        f"repeats={args.repeats}, cap {cap_gib:.0f} GiB, cell timeout {args.cell_timeout:.0f} s", flush=True)
  results = {}
  rows = []
  for seq in seq_lens:
    for causal in causals:
      for name in names:
        cfg = dict(base, backend=name, seq=seq, causal=causal, platform=platform, repeats=args.repeats,
                   long_cell_s=args.long_cell_s, threads=args.threads, mem_cap_gib=cap_gib)
        if gpu and not args.batch:
          cfg["batch"] = max(1, 16384 // seq)
        need = predicted_bytes(name, cfg)
        if args.total_budget_s and time.perf_counter() - started > args.total_budget_s:
          r = {"status": "skipped (budget)"}
        elif need > cap_gib * GiB:
          r = {"status": f"skipped (needs ~{need / GiB:.0f} GiB)"}
        else:
          r = spawn(["--cell", json.dumps(cfg)], timeout=args.cell_timeout)
        results[(name, seq, causal)] = r
        row = [LABELS[name], str(seq), str(cfg["batch"]), "on" if causal else "off", *fmt_cell(r, cfg)]
        rows.append(row)
        print("  ".join(row), file=sys.stderr, flush=True)  # progress; the table goes to stdout at the end
  header = ["backend", "S", "B", "causal", "fwd", "fwd+bwd", "TFLOP/s fwd / fwd+bwd", "XLA peak (fwd+bwd)",
            "max RSS" if platform == "cpu" else "device peak"]
  print("| " + " | ".join(header) + " |")
  print("|" + "|".join("---" for _ in header) + "|")
  for row in rows:
    print("| " + " | ".join(row) + " |")
  print("\n## Targets")
  for line in targets(results, base):
    print(line)
  print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
  if len(sys.argv) > 1 and sys.argv[1] in ("--cell", "--info"):
    child_main(sys.argv[1:])
  else:
    main(sys.argv[1:])
