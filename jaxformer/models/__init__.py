"""Model families. `build_model(kind, cfg)` maps a config's `model_kind` to a module."""
from jaxformer.models.regression import InContextRegressor
from jaxformer.models.transformer import DecoderOnly, DualEncoderClassifier, EncoderClassifier, EncoderDecoder
from jaxformer.nn.config import TransformerConfig

MODELS = {"decoder_only": DecoderOnly, "encoder_decoder": EncoderDecoder, "encoder_classifier": EncoderClassifier,
          "dual_encoder_classifier": DualEncoderClassifier, "in_context_regression": InContextRegressor}


def build_model(kind: str, cfg: TransformerConfig):
  if kind not in MODELS:
    raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(MODELS)}")
  return MODELS[kind](cfg)


__all__ = ["DecoderOnly", "EncoderDecoder", "EncoderClassifier", "DualEncoderClassifier", "InContextRegressor",
           "TransformerConfig", "MODELS", "build_model"]
