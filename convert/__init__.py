"""PyTorch -> Flax converters (need the `convert` extra: torch, transformers, safetensors).

The runtime (`imgen_jax`) never imports this package except from `imgen convert`.
"""
