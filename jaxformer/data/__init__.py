"""Data: tokenizers, corpora and synthetic tasks. `build_dataset(config.data, seed)` is the entry."""
from jaxformer.data.synthetic import TASKS, Seq2SeqTask
from jaxformer.data.text import CharLMData, stdlib_corpus, text_file_corpus
from jaxformer.data.tokenizers import ByteTokenizer, CharTokenizer, load_tokenizer, save_tokenizer

DATASETS = ("stdlib_chars", "text_file", *TASKS)


def build_dataset(data_config, seed: int):
  """data_config: the experiment's `config.data` (name plus that dataset's settings)."""
  name = data_config.name
  if name == "stdlib_chars":
    return CharLMData(stdlib_corpus(data_config.max_chars), data_config.seq_len, seed)
  if name == "text_file":
    return CharLMData(text_file_corpus(data_config.path), data_config.seq_len, seed)
  if name in TASKS:
    return Seq2SeqTask(name, data_config.min_len, data_config.max_len, data_config.num_symbols, seed)
  raise ValueError(f"unknown dataset data.name={name!r}; expected one of {DATASETS}")


__all__ = ["build_dataset", "DATASETS", "CharLMData", "Seq2SeqTask", "CharTokenizer", "ByteTokenizer",
           "stdlib_corpus", "text_file_corpus", "load_tokenizer", "save_tokenizer"]
