"""Long Range Arena (Tay et al. 2021) data beyond ListOps (`listops.py`) and Text (`text.py`, imdb_reviews bytes).

PixelData        Image: a TFDS image dataset (LRA: cifar10) as a sequence of 8-bit gray pixels, 32x32 -> 1024
PathfinderData   Pathfinder: the release's 32x32 PNGs (`pathfinder32/<difficulty>/imgs/*/*.png` + metadata)
RetrievalData    Retrieval: the release's ACL Anthology (AAN) citation pairs (`tsv_data/new_aan_pairs.*.tsv`),
                 two byte-level documents per example for a dual encoder

Pixels are tokens `value + 1` (`pixel_tokenizer`): id 0 stays padding, so a black pixel is never masked. (The
release's encoders mask `inputs > 0` as padding while feeding raw pixels 0-255, so its models never see black
pixels; here every pixel is a real token.) Gray values follow LRA's `tf.image.rgb_to_grayscale` then 8-bit cast:
floor(255.5 * (0.2989 R + 0.5870 G + 0.1140 B) / 255).

Pathfinder and Retrieval read the release archive itself, extracted once (no TensorFlow, no conversion):

  wget https://storage.googleapis.com/long-range-arena/lra_release.gz && tar xzf lra_release.gz
  ... --config.data.data_dir=/path/to/lra_release

`data.data_dir` may name the folder the archive was extracted into or its `lra_release/` folder (the archive
nests a second `lra_release/` in some copies; both are found).

Pathfinder layout (the release's TFDS builder `lra_benchmarks/data/pathfinder.py` reads the same files): each
`metadata/<n>.npy` is a text file (despite its name) of space-separated lines `imgs/<n> sample_<i>.png ...`: the
image is `<difficulty>/<field 0>/<field 1>`, its label (0 or 1) field 3. Difficulties: easy = curv_baseline,
intermediate = curv_contour_length_9, hard = curv_contour_length_14 (the release's `pathfinder32_hard` task).
Metadata files are read in numeric order and the examples split 80 / 10 / 10 % into train / validation / test, as
the release's TFDS slices `[:80%]`, `[80%:90%]`, `[90%:]` (its Beam-built order differs, so the test examples are
not the same ones).
Empty image files (the release has at least one) are skipped, as the release's pipeline filters them.

AAN TSV columns (the release's `matching/input_pipeline.py`): label (a float, 0 or 1), id1, id2, text1, text2;
tab-separated, no quoting, one pair per line. Files: new_aan_pairs.train.tsv / .eval.tsv / .test.tsv (splits
"train", "validation" or "eval", "test"). Documents are their bytes as stored, cut to `data.max_len` (LRA: 4000).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from jaxformer.data.pipeline import PaddedBatches
from jaxformer.data.sources import DatasetMissingError
from jaxformer.data.text import TfdsTextData
from jaxformer.data.tokenizers import PAD, ByteTokenizer, WordTokenizer

log = logging.getLogger("jaxformer.data")

RELEASE_URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"
DIFFICULTIES = {"easy": "curv_baseline", "intermediate": "curv_contour_length_9", "hard": "curv_contour_length_14"}
SPLIT_FRACTIONS = {"train": (0.0, 0.8), "validation": (0.8, 0.9), "test": (0.9, 1.0)}
AAN_FILES = {"train": "train", "validation": "eval", "eval": "eval", "test": "test"}
GRAY = np.array([0.2989, 0.5870, 0.1140], np.float32)  # tf.image.rgb_to_grayscale


def pixel_tokenizer() -> WordTokenizer:
  """8-bit values 0-255 as ids 1-256 (id 0 = padding); `decode` gives the values as text."""
  return WordTokenizer([str(v) for v in range(256)], (PAD,))


def grayscale(image: np.ndarray) -> np.ndarray:
  """[H, W, 3] (or [H, W, 1] / [H, W]) uint8 -> [H, W] uint8, as LRA's tf.image.rgb_to_grayscale + cast."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 3:
    gray = (image.astype(np.float32) / 255.0) @ GRAY  # [H, W] in [0, 1]
    return np.floor(gray * 255.5).astype(np.uint8)  # tf.image.convert_image_dtype: x * (max + 0.5), cast
  if image.ndim == 3 and image.shape[-1] == 1:
    return image[..., 0].astype(np.uint8)
  if image.ndim == 2:
    return image.astype(np.uint8)
  raise ValueError(f"expected an image [H, W, 3], [H, W, 1] or [H, W]; got shape {image.shape}")


def release_path(data_dir, *parts: str, what: str) -> Path:
  """`data_dir`/parts (or under its lra_release/ or lra_release/lra_release/); a missing one is a
  DatasetMissingError saying where to download the release and what to set."""
  if not data_dir:
    raise DatasetMissingError(
        f"{what} is read from the Long Range Arena release, and data.data_dir is not set: download {RELEASE_URL}, "
        f"extract it (tar xzf lra_release.gz) and set --config.data.data_dir=/path/to/lra_release")
  root = Path(data_dir).expanduser()
  for base in (root, root / "lra_release", root / "lra_release" / "lra_release"):
    if base.joinpath(*parts).exists():
      return base.joinpath(*parts)
  raise DatasetMissingError(
      f"{what}: no {'/'.join(parts)} under data.data_dir={data_dir}; download {RELEASE_URL}, extract it "
      f"(tar xzf lra_release.gz) and set --config.data.data_dir to the extracted lra_release folder")


class PixelData(TfdsTextData):
  """(image, label) examples as rows of H*W gray pixel tokens (LRA Image: CIFAR-10, 1024 tokens, 10 classes)."""
  kind = "classification"

  def __init__(self, data, seed: int = 0, cache_dir=None, source_fn=None, tokenizer=None):
    super().__init__(data, seed, cache_dir, source_fn, tokenizer)
    self.num_classes = data.num_classes
    self.seq_len = int(np.prod(grayscale(self.train_source[0][data.image_key]).shape))

  def features(self) -> tuple[str, ...]:
    return (self.data.image_key, self.data.label_key)

  def make_tokenizer(self, cache_dir):
    return pixel_tokenizer()

  def encode(self, ex) -> dict[str, np.ndarray]:
    label = int(ex[self.data.label_key])
    if not 0 <= label < self.num_classes:
      raise ValueError(f"label {label} is outside [0, data.num_classes={self.num_classes})")
    pixels = grayscale(ex[self.data.image_key]).reshape(-1)  # row-major: the image read line by line
    return {"inputs": pixels.astype(np.int32) + 1, "label": np.asarray(label, np.int32)}

  def _batches(self, exs, batch_size: int):
    return PaddedBatches(exs, batch_size, {"inputs": self.seq_len})


class PathfinderImages:
  """One split of the release's Pathfinder: a random-access sequence of {"image": [R, R] uint8, "label"}."""

  def __init__(self, root: Path, items: list[tuple[str, int]]):
    self.root, self.items = root, items

  def __len__(self) -> int:
    return len(self.items)

  def __getitem__(self, i: int) -> dict:
    from PIL import Image  # Pillow comes with matplotlib

    path, label = self.items[i]
    with Image.open(self.root / path) as img:
      image = np.asarray(img.convert("L") if img.mode != "L" else img, np.uint8)
    return {"image": image, "label": label}


def pathfinder_index(data_dir, resolution: int = 32, difficulty: str = "hard") -> tuple[Path, list[tuple[str, int]]]:
  """(the difficulty's folder, [(image path relative to it, label)]) in metadata order, empty files skipped."""
  if difficulty not in DIFFICULTIES:
    raise ValueError(f"data.difficulty={difficulty!r}; expected one of {sorted(DIFFICULTIES)}")
  root = release_path(data_dir, f"pathfinder{resolution}", DIFFICULTIES[difficulty], what="Pathfinder")
  meta = sorted((root / "metadata").glob("*.npy"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1)
  if not meta:
    raise DatasetMissingError(f"Pathfinder: no metadata/*.npy files in {root}; is the release extracted fully?")
  items, empty = [], 0
  for path in meta:
    for line in path.read_text().splitlines():
      fields = line.split()
      if not fields:
        continue
      rel = os.path.join(fields[0], fields[1])
      if os.path.getsize(root / rel) == 0:
        empty += 1
        continue
      items.append((rel, int(fields[3])))
  if empty:
    log.info("Pathfinder %s: skipped %d empty image files", root, empty)
  return root, items


def pathfinder_source(data):
  """source_fn(split) for the release's Pathfinder: the 80/10/10 % split of the metadata order."""
  root, items = pathfinder_index(data.data_dir, data.resolution, data.difficulty)

  def source(split: str) -> PathfinderImages:
    if split not in SPLIT_FRACTIONS:
      raise ValueError(f"Pathfinder has the splits {sorted(SPLIT_FRACTIONS)}, not {split!r}")
    lo, hi = SPLIT_FRACTIONS[split]
    return PathfinderImages(root, items[round(lo * len(items)):round(hi * len(items))])
  return source


class PathfinderData(PixelData):
  """LRA Pathfinder: is there a path between the two dots? 2 classes, resolution² pixel tokens."""

  def __init__(self, data, seed: int = 0, cache_dir=None, source_fn=None, tokenizer=None):
    super().__init__(data, seed, cache_dir, source_fn or pathfinder_source(data), tokenizer)


class TsvPairs:
  """One AAN TSV file as a random-access sequence of {"label", "text1", "text2"}: line offsets are indexed once,
  lines read on demand (the training file is large)."""

  def __init__(self, path: Path):
    self.path = path
    offsets, position = [], 0
    with open(path, "rb") as f:
      for line in f:
        if line.strip():
          offsets.append(position)
        position += len(line)
    self.offsets = np.asarray(offsets, np.int64)

  def __len__(self) -> int:
    return len(self.offsets)

  def __getitem__(self, i: int) -> dict:
    with open(self.path, "rb") as f:
      f.seek(int(self.offsets[i]))
      fields = f.readline().rstrip(b"\r\n").split(b"\t")
    if len(fields) != 5:
      raise ValueError(f"{self.path}: line {i + 1} has {len(fields)} tab-separated fields, expected 5 "
                       "(label, id1, id2, text1, text2)")
    return {"label": int(float(fields[0])), "text1": fields[3], "text2": fields[4]}


def aan_source(data):
  """source_fn(split) over the release's new_aan_pairs.<split>.tsv files."""
  files = {}

  def source(split: str) -> TsvPairs:
    if split not in AAN_FILES:
      raise ValueError(f"Retrieval (AAN) has the splits {sorted(AAN_FILES)}, not {split!r}")
    name = f"new_aan_pairs.{AAN_FILES[split]}.tsv"
    if name not in files:
      files[name] = TsvPairs(release_path(data.data_dir, "tsv_data", name, what="Retrieval (AAN)"))
    return files[name]
  return source


class RetrievalData(TfdsTextData):
  """LRA Retrieval: do two papers cite one another? `inputs1`, `inputs2` [B, max_len] bytes, `label` [B] in {0, 1};
  for `model_kind="dual_encoder_classifier"`, which encodes each document alone."""
  kind = "pair_classification"
  num_classes = 2

  def __init__(self, data, seed: int = 0, cache_dir=None, source_fn=None, tokenizer=None):
    super().__init__(data, seed, cache_dir, source_fn or aan_source(data), tokenizer)

  def features(self) -> tuple[str, ...]:
    return ("label", "text1", "text2")

  def make_tokenizer(self, cache_dir):
    return ByteTokenizer((PAD,))

  def encode(self, ex) -> dict[str, np.ndarray]:
    label = int(ex["label"])
    if label not in (0, 1):
      raise ValueError(f"AAN label {label} is not 0 or 1")
    return {"inputs1": self._bytes(ex["text1"]), "inputs2": self._bytes(ex["text2"]),
            "label": np.asarray(label, np.int32)}

  def _bytes(self, text) -> np.ndarray:
    """The document's bytes as they are in the file (also when they are not valid UTF-8)."""
    if isinstance(text, str):
      return np.asarray(self.tokenizer.encode(text), np.int32)
    return np.frombuffer(text, np.uint8).astype(np.int32) + len(self.tokenizer.specials)

  def _batches(self, exs, batch_size: int):
    return PaddedBatches(exs, batch_size, {"inputs1": self.data.max_len, "inputs2": self.data.max_len})
