"""imgen_jax: Instruct-MusicGen in JAX/Flax NNX.

The public API for converted model directories lives in `imgen_jax.api`
(`load_musicgen`, `MusicGen.encode_audio`, `decode_codes`, `encode_text`, `lm_logits`).
"""

from imgen_jax.errors import ImgenError

__all__ = ["ImgenError"]
__version__ = "0.1.0"
