"""PyTorch reference models for the parity tests, built from configs with random weights.

Nothing is downloaded: every model is made here from a config, then every parameter is set
to random values (LayerNorm scales near 1) so that each path contributes to the output.
"""

from __future__ import annotations

import numpy as np
import torch


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Overwrite every parameter with seeded random values; norm weights ~ 1 + N(0, 0.1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "norm" in name and name.endswith("weight") and p.ndim == 1:
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(std * noise)
    return module.eval()


def tiny_encodec_config(codebook_size: int = 16):
    """A tiny EnCodec: hop 4 at 800 Hz (200 frames/s), 4 codebooks of `codebook_size`."""
    from transformers import EncodecConfig

    nbits = int(np.log2(codebook_size))
    return EncodecConfig(
        sampling_rate=800, audio_channels=1, num_filters=4, hidden_size=8, upsampling_ratios=[2, 2],
        num_residual_layers=1, codebook_size=codebook_size, target_bandwidths=[4 * 200 * nbits / 1000],
        num_lstm_layers=2, normalize=False, use_causal_conv=False, pad_mode="reflect", norm_type="weight_norm",
        use_conv_shortcut=False, compress=2, kernel_size=7, last_kernel_size=7, residual_kernel_size=3,
    )


def tiny_t5_config(d_model: int = 24, vocab: int = 100):
    from transformers import T5Config

    return T5Config(
        vocab_size=vocab, d_model=d_model, d_kv=8, d_ff=48, num_layers=2, num_heads=3,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="relu",
        dropout_rate=0.0,
    )


def musicgen_model(
    dim: int = 32, layers: int = 2, heads: int = 4, card: int = 16, codebooks: int = 4, audio_channels: int = 1,
    text_config=None, audio_config=None, seed: int = 0,
):
    """A MusicgenForConditionalGeneration with random weights (tiny by default)."""
    from transformers import MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration

    decoder = MusicgenDecoderConfig(
        hidden_size=dim, ffn_dim=4 * dim, num_hidden_layers=layers, num_attention_heads=heads, vocab_size=card,
        num_codebooks=codebooks, audio_channels=audio_channels, pad_token_id=card, bos_token_id=card,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, max_position_embeddings=2048,
    )
    config = MusicgenConfig(
        text_encoder=(text_config or tiny_t5_config()).to_dict(),
        audio_encoder=(audio_config or tiny_encodec_config(card)).to_dict(),
        decoder=decoder.to_dict(),
    )
    torch.manual_seed(seed)
    model = MusicgenForConditionalGeneration(config)
    return randomize_(model, seed)


def musicgen_small_model(seed: int = 0):
    """musicgen-small shapes: decoder 1024 x 24 (16 heads), t5-base text encoder, EnCodec 32 kHz."""
    from transformers import EncodecConfig, T5Config

    t5 = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12, feed_forward_proj="relu", dropout_rate=0.0)
    codec = EncodecConfig(
        sampling_rate=32000, audio_channels=1, num_filters=64, hidden_size=128, upsampling_ratios=[8, 5, 4, 4],
        codebook_size=2048, target_bandwidths=[2.2], num_lstm_layers=2, normalize=False, use_causal_conv=False,
        pad_mode="reflect", norm_type="weight_norm", use_conv_shortcut=False, compress=2, kernel_size=7,
        last_kernel_size=7, residual_kernel_size=3, num_residual_layers=1,
    )
    return musicgen_model(dim=1024, layers=24, heads=16, card=2048, text_config=t5, audio_config=codec, seed=seed)


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
