"""Flax NNX ports of transformers vision towers, one module per `model_type`, and their shared conversion rules."""
