"""Random-access example sources: TFDS datasets read with `tfds.data_source` (array_record files, no
TensorFlow needed to read), and the offline toy translation corpus written as a TFDS dataset.

A TFDS dataset must be prepared once, in the array_record format, before training reads it:

  jaxformer prepare wmt14_translate/de-en [--data-dir DIR]

(downloads and converts; needs network; some builders, e.g. lm1b and tiny_shakespeare, also need
TensorFlow to prepare: `pip install 'jaxformer[tf]'`; reading never does). The data directory is `data.data_dir`, else $TFDS_DATA_DIR, else
~/tensorflow_datasets. A missing or unusable dataset is a `DatasetMissingError` that says this.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path

import tensorflow_datasets as tfds

log = logging.getLogger("jaxformer.data")

# Builders that tfds registers only when their module is imported.
_LAZY_MODULES = {f"wmt{n}_translate": f"tensorflow_datasets.translate.wmt{n}" for n in range(13, 20)}


class DatasetMissingError(FileNotFoundError):
  pass


def _register(name: str) -> None:
  module = _LAZY_MODULES.get(name.split("/")[0].split(":")[0])
  if module:
    importlib.import_module(module)


def _how_to_prepare(name: str, data_dir) -> str:
  where = f" --data-dir {data_dir}" if data_dir else ""
  return (f"prepare it once with `jaxformer prepare {name}{where}` (downloads; needs network), or copy a prepared "
          f"array_record copy of it into {data_dir or '$TFDS_DATA_DIR or ~/tensorflow_datasets'}")


def tfds_source(name: str, split: str, data_dir: str | None = None):
  """`tfds.data_source(name, split)`: a random-access sequence of feature dicts (text as str or bytes)."""
  _register(name)
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except tfds.core.registered.DatasetNotFoundError:
    raise DatasetMissingError(f"TFDS has no dataset called {name!r}; check data.name "
                              "(`tfds.list_builders(with_community_datasets=False)` lists them)") from None
  except ValueError as e:
    if "split" in str(e).lower():
      raise ValueError(f"dataset {name!r} has no split {split!r}: {e}") from None
    raise
  except (AssertionError, NotImplementedError, FileNotFoundError, RuntimeError) as e:
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
      raise DatasetMissingError(
          f"dataset {name!r} at {builder.data_dir} was prepared as {builder.info.file_format.value}, which cannot be "
          f"read without TensorFlow; prepare it again in the array_record format (`jaxformer prepare {name}` into an "
          f"empty --data-dir)") from e
    raise DatasetMissingError(f"dataset {name!r} is not prepared under {builder.data_dir}; "
                              + _how_to_prepare(name, data_dir)) from e


def prepare(name: str, data_dir: str | None = None) -> Path:
  """Download and prepare a TFDS dataset as array_record files (what `tfds_source` reads)."""
  _register(name)
  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    if builder.info.file_format.value != "array_record":
      raise DatasetMissingError(
          f"{name!r} is prepared at {builder.data_dir} as {builder.info.file_format.value}, which cannot be read "
          f"without TensorFlow; prepare it into another --data-dir, or convert it in place with "
          f"`tfds convert_format --dataset_dir {builder.data_dir} --out_file_format array_record` (needs TensorFlow)")
    log.info("%s is already prepared at %s", name, builder.data_dir)
    return Path(builder.data_dir)
  log.info("preparing %s into %s (array_record); this downloads the raw data", name, builder.data_dir)
  try:
    builder.download_and_prepare(file_format="array_record")
  except ModuleNotFoundError as e:
    if (e.name or "").startswith("tensorflow") or "tensorflow" in str(e):
      raise ModuleNotFoundError(f"preparing {name!r} needs TensorFlow (its TFDS builder uses tf.io); install the "
                                "extra: pip install 'jaxformer[tf]' (tensorflow-cpu). Reading it afterwards does not "
                                "need TensorFlow.", name="tensorflow") from e
    raise ModuleNotFoundError(f"preparing {name!r} needs the package {e.name!r}: pip install {e.name}",
                              name=e.name) from e
  except OSError as e:
    raise DatasetMissingError(f"could not download {name!r} ({e}); preparing needs network access. On an "
                              f"offline machine, prepare it elsewhere and copy {builder.data_dir}") from e
  return Path(builder.data_dir)


def as_text(value) -> str:
  """A TFDS text feature as str (data sources give bytes for real data, str under mock_data)."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def toy_source(data, cache_dir=None):
  """The offline toy translation pair (`jaxformer.data.toy_translation`) written once as a TFDS
  dataset (array_record) under data.data_dir, else `cache_dir`/tfds, and read back through the
  same reader as WMT. Returns source_fn(split)."""
  import tempfile

  builder_cls = _toy_builder_class()
  root = data.data_dir or (f"{cache_dir}/tfds" if cache_dir else tempfile.mkdtemp(prefix="jaxformer-tfds-"))
  builder = builder_cls(train_size=data.train_size, eval_size=data.eval_size, extra_words=data.extra_words,
                        data_dir=f"{root}/toy-{data.train_size}-{data.eval_size}-{data.extra_words}")
  if not builder.is_prepared():
    log.info("writing the toy translation corpus (%d training pairs) to %s", data.train_size, builder.data_dir)
    tfds.display_progress_bar(False)  # a few seconds; TFDS's bars would only clutter the log
    try:
      builder.download_and_prepare(file_format="array_record")
    finally:
      tfds.display_progress_bar(True)
  return lambda split: builder.as_data_source(split=split)


_TOY_BUILDER = None


def _toy_builder_class():
  """Defined on first use (defining a builder registers its name with TFDS)."""
  global _TOY_BUILDER
  if _TOY_BUILDER is None:
    from jaxformer.data import toy_translation

    class ToyTranslation(tfds.core.GeneratorBasedBuilder):
      """English -> the toy language, generated by `jaxformer.data.toy_translation`."""
      VERSION = tfds.core.Version("1.0.0")

      def __init__(self, *, train_size: int = 0, eval_size: int = 0, extra_words: int = 0, **kw):  # to generate
        self.sizes = {"train": train_size, "validation": eval_size, "test": eval_size}
        self.extra_words = extra_words
        super().__init__(**kw)

      def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, description=toy_translation.__doc__.split("\n")[0],
            features=tfds.features.FeaturesDict({"en": tfds.features.Text(), "toy": tfds.features.Text()}),
            supervised_keys=("en", "toy"), disable_shuffling=True)  # keep the generated order

      def _split_generators(self, dl_manager):
        return {name: self._generate_examples(name, n) for name, n in self.sizes.items()}

      def _generate_examples(self, split: str, num: int):
        for i, (en, toy) in enumerate(toy_translation.split(split, num, extra_words=self.extra_words)):
          yield i, {"en": en, "toy": toy}

    _TOY_BUILDER = ToyTranslation
  return _TOY_BUILDER
