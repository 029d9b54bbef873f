"""EnCodec as MusicGen uses it, in Flax NNX: SEANet encoder/decoder with LSTM, residual vector quantizer.

Semantics follow Hugging Face's `EncodecModel` (itself a port of audiocraft's `EncodecModel`)
with `normalize=False` and no chunking, i.e. MusicGen's 32 kHz codec:

    encode: wav [B, C, N] -> encoder -> latent [B, T, D] -> RVQ -> codes [B, K, T]   (T = ceil(N / hop))
    decode: codes [B, K, T] -> sum_k codebook_k[codes_k] -> decoder -> wav [B, C, T * hop]

- Convolutions (`EncodecConv1d` / audiocraft `StreamableConv1d`): effective kernel
  k' = (k - 1) * dilation + 1, total padding k' - stride split as right = total // 2, left = the
  rest (causal: all left), plus extra right padding so the last window is full
  (ceil(L / stride) * stride - L). `reflect` padding of an input no longer than the pad first
  appends zeros (then drops them again), as `pad1d` does.
- Transposed convolutions trim k - stride samples: right = total // 2 (causal:
  ceil(total * trim_right_ratio)), left = the rest. They run as one stride-1 convolution in
  polyphase form (no multiplications by inserted zeros).
- Residual blocks: y = shortcut(x) + conv2(elu(conv1(elu(x)))), shortcut identity or a 1x1 conv.
- LSTM (PyTorch gate order i, f, g, o; b = b_ih + b_hh), `num_lstm_layers` stacked, with a skip:
  y = lstm(x) + x. The input projection of each layer is one matmul over all time steps; only
  w_hh @ h runs inside `lax.scan`.
- RVQ: codebook k picks argmin_j (|r|^2 - 2 r.e_j) + |e_j|^2 (first index on ties) of the
  residual r, then r -= e_code. Decoding sums the codebook vectors.

Activations are channels-last [B, T, C] inside the model (XLA CPU's preferred conv layout).
Weight norm is folded into plain weights by the converter (`convert/encodec_weights.py`).

Weight names (NNX state paths, '/'-joined). Conv kernels are [k, in, out] (PyTorch Conv1d
weight [out, in, k] transposed). Transposed-conv kernels are stored in polyphase form
[ceil(k / s), in, s * out] (`polyphase_kernel` of the [k, in, out] transpose of PyTorch's
ConvTranspose1d weight [in, out, k]): the equivalent stride-1 convolution over the input.

    encoder/conv_in/{kernel,bias}                   [k, C, F], [F]
    encoder/blocks/{i}/res/{j}/conv1/{kernel,bias}  [rk, c, c // compress]   (c = F * 2^i)
    encoder/blocks/{i}/res/{j}/conv2/{kernel,bias}  [1, c // compress, c]
    encoder/blocks/{i}/res/{j}/shortcut/...         [1, c, c]                (use_conv_shortcut only)
    encoder/blocks/{i}/down/{kernel,bias}           [2 r_i, c, 2 c]          (r = reversed ratios)
    encoder/lstm/layers/{n}/w_ih, w_hh, bias        [W, 4 W], [4 W, W], [4 W]  (W = F * 2^len(ratios))
    encoder/conv_out/{kernel,bias}                  [lk, W, D], [D]
    decoder/conv_in/{kernel,bias}                   [k, D, W]
    decoder/lstm/...                                as the encoder's
    decoder/blocks/{i}/up/{kernel,bias}             [2, c, r_i * c // 2]     (c = W / 2^i; polyphase form)
    decoder/blocks/{i}/res/{j}/...                  as the encoder's, at width c // 2
    decoder/conv_out/{kernel,bias}                  [lk, F, C]
    quantizer/codebooks                             [K, codebook_size, D]

The runtime never imports torch or transformers.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imgen_jax.axes import param
from imgen_jax.configs import config_from_dict, config_to_dict
from imgen_jax.errors import ImgenError

PAD_MODES = ("reflect", "constant", "replicate")


@dataclasses.dataclass(frozen=True)
class EncodecConfig:
    """Architecture of an EnCodec model. Defaults: MusicGen's 32 kHz mono codec (4 x 2048, 50 frames/s)."""

    sampling_rate: int = 32000
    audio_channels: int = 1
    num_filters: int = 64
    hidden_size: int = 128
    upsampling_ratios: tuple[int, ...] = (8, 5, 4, 4)
    num_residual_layers: int = 1
    dilation_growth_rate: int = 2
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    compress: int = 2
    num_lstm_layers: int = 2
    codebook_size: int = 2048
    num_codebooks: int = 4
    pad_mode: str = "reflect"
    causal: bool = False
    trim_right_ratio: float = 1.0
    use_conv_shortcut: bool = False

    def __post_init__(self):
        object.__setattr__(self, "upsampling_ratios", tuple(int(r) for r in self.upsampling_ratios))  # hashable
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode {self.pad_mode!r} is not one of {', '.join(PAD_MODES)}")
        if not self.upsampling_ratios or any(r < 1 for r in self.upsampling_ratios):
            raise ValueError(f"upsampling_ratios must be positive integers, got {list(self.upsampling_ratios)}")
        for name in ("sampling_rate", "audio_channels", "num_filters", "hidden_size", "kernel_size", "last_kernel_size",
                     "residual_kernel_size", "compress", "codebook_size", "num_codebooks", "dilation_growth_rate"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_residual_layers < 0 or self.num_lstm_layers < 0:
            raise ValueError("num_residual_layers and num_lstm_layers must be >= 0")
        if not self.causal and self.trim_right_ratio != 1.0:
            raise ValueError("trim_right_ratio != 1.0 only makes sense for causal convolutions")
        if not 0.0 <= self.trim_right_ratio <= 1.0:
            raise ValueError(f"trim_right_ratio must lie in [0, 1], got {self.trim_right_ratio}")

    @property
    def hop_length(self) -> int:
        """Audio samples per code frame (product of the ratios; 640 at 32 kHz)."""
        return int(np.prod(self.upsampling_ratios))

    @property
    def frame_rate(self) -> float:
        """Code frames per second (sampling_rate / hop_length; 50.0 at 32 kHz)."""
        return self.sampling_rate / self.hop_length

    @property
    def width(self) -> int:
        """Channels at the LSTM (num_filters * 2^len(ratios))."""
        return self.num_filters * 2 ** len(self.upsampling_ratios)

    def num_frames(self, num_samples: int) -> int:
        """Code frames for `num_samples` audio samples: ceil(num_samples / hop_length)."""
        return -(-int(num_samples) // self.hop_length)

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @staticmethod
    def from_dict(d: dict, source: str = "encodec config") -> "EncodecConfig":
        return config_from_dict(EncodecConfig, d, source)


# ---- padding and convolutions (static shapes, channels-last) -----------------------------------


def elu(x: jax.Array) -> jax.Array:
    """ELU with alpha 1 (torch.nn.ELU): x if x > 0 else exp(x) - 1.

    exp(x) - 1 rather than expm1(x): about 3x cheaper in XLA CPU's vectorised code, and its
    absolute error (<= 6e-8 near 0) is far below the parity tolerance.
    """
    return jnp.where(x > 0, x, jnp.exp(jnp.minimum(x, 0)) - 1)


def pad1d(x: jax.Array, left: int, right: int, mode: str) -> jax.Array:
    """Pad the time axis of x [B, T, C] by (left, right) like audiocraft's / HF's `pad1d`.

    `reflect` on an input no longer than the largest pad first appends zeros so the reflection
    is defined, and drops them after padding (the same result as PyTorch's implementation).
    """
    if left == 0 and right == 0:
        return x
    if mode == "constant":
        return jnp.pad(x, ((0, 0), (left, right), (0, 0)))
    if mode == "replicate":
        return jnp.pad(x, ((0, 0), (left, right), (0, 0)), mode="edge")
    length = x.shape[1]
    extra = 0
    if length <= max(left, right):
        extra = max(left, right) - length + 1
        x = jnp.pad(x, ((0, 0), (0, extra), (0, 0)))
    y = jnp.pad(x, ((0, 0), (left, right), (0, 0)), mode="reflect")
    return y[:, : y.shape[1] - extra] if extra else y


def _conv(x: jax.Array, w: jax.Array, dilation: int = 1) -> jax.Array:
    """Stride-1 VALID convolution, x [B, T, in], w [k, in, out] -> [B, T - (k - 1) * dilation, out]."""
    return jax.lax.conv_general_dilated(
        x, w, (1,), "VALID", rhs_dilation=(dilation,), dimension_numbers=("NWC", "WIO", "NWC")
    )


class Conv1d(nnx.Module):
    """SEANet convolution: padding as `EncodecConv1d` (see module docstring), kernel [k, in, out], bias [out].

    A strided convolution whose kernel is a multiple of the stride (SEANet's down-sampling,
    kernel 2 * stride) runs as a stride-1 convolution over frames of `stride` samples
    ([B, T, in] -> [B, T / stride, stride * in]), which XLA CPU computes faster; one on raw
    audio (1 or 2 input channels) as broadcast multiply-adds.
    """

    def __init__(
        self, din: int, dout: int, kernel_size: int, *, stride: int = 1, dilation: int = 1, pad_mode: str = "reflect",
        causal: bool = False, rngs: nnx.Rngs, dtype=jnp.float32,
    ):
        scale = 1.0 / math.sqrt(din * kernel_size)
        self.kernel = param(jax.random.normal(rngs.params(), (kernel_size, din, dout), jnp.float32) * scale,
                            "conv_width", "conv_in", "conv_out")
        self.bias = param(jnp.zeros((dout,), jnp.float32), "conv_out")
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.pad_mode, self.causal, self.dtype = pad_mode, causal, dtype

    def padding(self, length: int) -> tuple[int, int]:
        """(left, right) padding of an input of `length` steps; output length ceil(length / stride)."""
        k = (self.kernel_size - 1) * self.dilation + 1
        total = k - self.stride
        extra = (-length) % self.stride  # ideal length ceil(L / s) * s minus L
        if self.causal:
            return total, extra
        right = total // 2
        return total - right, right + extra

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, T, in] -> [B, ceil(T / stride), out]."""
        left, right = self.padding(x.shape[1])
        x = pad1d(x.astype(self.dtype), left, right, self.pad_mode)
        w = self.kernel[...].astype(self.dtype)
        k, s = self.kernel_size, self.stride
        if s == 1 and x.shape[-1] <= 2:
            # audio input (mono / stereo): k * in broadcast multiply-adds, one fused loop (XLA CPU's
            # convolution is slow with a single input channel)
            L = x.shape[1] - (k - 1) * self.dilation
            y = sum(
                x[:, j * self.dilation : j * self.dilation + L, c : c + 1] * w[j, c]
                for j in range(k) for c in range(x.shape[-1])
            )
        elif s == 1:
            y = _conv(x, w, self.dilation)
        elif self.dilation == 1 and k % s == 0:
            # padded length is (T_out + k/s - 1) * s: frames of s samples, kernel [k/s, s*in, out]
            B, L, C = x.shape
            y = _conv(x.reshape(B, L // s, s * C), w.reshape(k // s, s * C, w.shape[-1]))
        else:
            y = jax.lax.conv_general_dilated(
                x, w, (s,), "VALID", rhs_dilation=(self.dilation,), dimension_numbers=("NWC", "WIO", "NWC")
            )
        return y + self.bias[...].astype(self.dtype)


def polyphase_kernel(w: np.ndarray, stride: int) -> np.ndarray:
    """A transposed-conv weight w [k, in, out] (y[t * stride + j] += x[t] @ w[j]) -> its polyphase
    kernel [m, in, stride * out], m = ceil(k / stride): the stride-1 convolution over the input
    (padded by m - 1 on both sides) whose output frame f holds samples f*stride .. f*stride+stride-1.
    Tap t applies to x[f + t - (m - 1)], i.e. phase block j = m - 1 - t of w."""
    k, din, dout = w.shape
    m = -(-k // stride)
    w = np.pad(w, ((0, m * stride - k), (0, 0), (0, 0)))
    return np.ascontiguousarray(w.reshape(m, stride, din, dout).transpose(0, 2, 1, 3)[::-1].reshape(m, din, stride * dout))


class ConvTranspose1d(nnx.Module):
    """SEANet transposed convolution (`EncodecConvTranspose1d`) in polyphase form, then trimming.

    kernel [m, in, stride * out] (see `polyphase_kernel`), bias [out]. One stride-1 convolution
    over the input gives `stride` output samples per input step: no multiplications by the
    zeros a dilated-input transposed convolution would insert.
    """

    def __init__(
        self, din: int, dout: int, kernel_size: int, *, stride: int, causal: bool = False, trim_right_ratio: float = 1.0,
        rngs: nnx.Rngs, dtype=jnp.float32,
    ):
        m = -(-kernel_size // stride)
        scale = 1.0 / math.sqrt(din * m)
        self.kernel = param(jax.random.normal(rngs.params(), (m, din, stride * dout), jnp.float32) * scale,
                            "conv_width", "conv_in", "conv_out")
        self.bias = param(jnp.zeros((dout,), jnp.float32), "conv_out")
        self.kernel_size, self.stride = kernel_size, stride
        self.causal, self.trim_right_ratio, self.dtype = causal, trim_right_ratio, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, T, in] -> [B, T * stride, out]."""
        B, T, _ = x.shape
        k, s = self.kernel_size, self.stride
        w = self.kernel[...].astype(self.dtype)
        m = w.shape[0]
        x = jnp.pad(x.astype(self.dtype), ((0, 0), (m - 1, m - 1), (0, 0)))
        y = _conv(x, w).reshape(B, (T + m - 1) * s, -1)[:, : (T - 1) * s + k]
        total = k - s
        right = math.ceil(total * self.trim_right_ratio) if self.causal else total // 2
        left = total - right
        return y[:, left : y.shape[1] - right] + self.bias[...].astype(self.dtype)


class ResBlock(nnx.Module):
    """SEANet residual block: shortcut(x) + conv2(elu(conv1(elu(x))))."""

    def __init__(self, cfg: EncodecConfig, dim: int, dilation: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        hidden = dim // cfg.compress
        kw = dict(pad_mode=cfg.pad_mode, causal=cfg.causal, rngs=rngs, dtype=dtype)
        self.conv1 = Conv1d(dim, hidden, cfg.residual_kernel_size, dilation=dilation, **kw)
        self.conv2 = Conv1d(hidden, dim, 1, **kw)
        self.shortcut = Conv1d(dim, dim, 1, **kw) if cfg.use_conv_shortcut else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv2(elu(self.conv1(elu(x))))
        return (x if self.shortcut is None else self.shortcut(x)) + y


class LSTMLayer(nnx.Module):
    """One LSTM layer, gates i, f, g, o: w_ih [W, 4W] (PyTorch's weight_ih transposed), w_hh [4W, W]
    (PyTorch's weight_hh as is: the per-step matrix-vector product reads contiguous rows), bias [4W]
    (b_ih + b_hh)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32, unroll: int = 1):
        scale = 1.0 / math.sqrt(dim)
        self.w_ih = param(jax.random.uniform(rngs.params(), (dim, 4 * dim), jnp.float32, -scale, scale), "lstm_in", "lstm_gates")
        self.w_hh = param(jax.random.uniform(rngs.params(), (4 * dim, dim), jnp.float32, -scale, scale), "lstm_gates", "lstm_in")
        self.bias = param(jnp.zeros((4 * dim,), jnp.float32), "lstm_gates")
        self.dtype, self.unroll = dtype, unroll

    def __call__(self, x: jax.Array) -> jax.Array:
        """Time-major x [T, B, W] -> hidden states [T, B, W] (zero initial state)."""
        T, B, W = x.shape
        # input projection of every step in one matmul; only w_hh @ h runs inside the scan
        xw = jnp.dot(x.reshape(T * B, W), self.w_ih[...].astype(self.dtype)).reshape(T, B, 4 * W)
        xw = xw + self.bias[...].astype(self.dtype)
        w_hh = self.w_hh[...].astype(self.dtype)

        def step(carry, xw_t):
            h, c = carry
            g = (xw_t + jnp.einsum("gd,bd->bg", w_hh, h)).astype(jnp.float32)
            i, f, gg, o = jnp.split(g, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
            h = (jax.nn.sigmoid(o) * jnp.tanh(c)).astype(self.dtype)
            return (h, c), h

        init = (jnp.zeros((B, W), self.dtype), jnp.zeros((B, W), jnp.float32))
        _, hs = jax.lax.scan(step, init, xw, unroll=max(1, min(self.unroll, T)))
        return hs


class LSTM(nnx.Module):
    """Stacked LSTM layers with a skip: y = lstm(x) + x."""

    def __init__(self, dim: int, num_layers: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.layers = nnx.List([LSTMLayer(dim, rngs=rngs, dtype=dtype) for _ in range(num_layers)])
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, T, W] -> [B, T, W]."""
        x = x.astype(self.dtype)
        h = jnp.swapaxes(x, 0, 1)  # time-major through the layers
        for layer in self.layers:
            h = layer(h)
        return jnp.swapaxes(h, 0, 1) + x


class EncoderBlock(nnx.Module):
    """Residual blocks at width `dim`, then ELU and a strided conv (kernel 2 * ratio) to 2 * dim channels."""

    def __init__(self, cfg: EncodecConfig, dim: int, ratio: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.res = nnx.List([
            ResBlock(cfg, dim, cfg.dilation_growth_rate**j, rngs=rngs, dtype=dtype) for j in range(cfg.num_residual_layers)
        ])
        self.down = Conv1d(
            dim, 2 * dim, 2 * ratio, stride=ratio, pad_mode=cfg.pad_mode, causal=cfg.causal, rngs=rngs, dtype=dtype
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for res in self.res:
            x = res(x)
        return self.down(elu(x))


class DecoderBlock(nnx.Module):
    """ELU and a transposed conv (kernel 2 * ratio) from `dim` to dim // 2 channels, then residual blocks."""

    def __init__(self, cfg: EncodecConfig, dim: int, ratio: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.up = ConvTranspose1d(
            dim, dim // 2, 2 * ratio, stride=ratio, causal=cfg.causal, trim_right_ratio=cfg.trim_right_ratio,
            rngs=rngs, dtype=dtype,
        )
        self.res = nnx.List([
            ResBlock(cfg, dim // 2, cfg.dilation_growth_rate**j, rngs=rngs, dtype=dtype)
            for j in range(cfg.num_residual_layers)
        ])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.up(elu(x))
        for res in self.res:
            x = res(x)
        return x


class SEANetEncoder(nnx.Module):
    """wav [B, N, C] -> latent [B, ceil(N / hop), D]."""

    def __init__(self, cfg: EncodecConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        kw = dict(pad_mode=cfg.pad_mode, causal=cfg.causal, rngs=rngs, dtype=dtype)
        F = cfg.num_filters
        self.conv_in = Conv1d(cfg.audio_channels, F, cfg.kernel_size, **kw)
        blocks = []
        for i, ratio in enumerate(reversed(cfg.upsampling_ratios)):
            c = F * 2**i
            blocks.append(EncoderBlock(cfg, c, ratio, rngs=rngs, dtype=dtype))
        self.blocks = nnx.List(blocks)
        self.lstm = LSTM(cfg.width, cfg.num_lstm_layers, rngs=rngs, dtype=dtype) if cfg.num_lstm_layers else None
        self.conv_out = Conv1d(cfg.width, cfg.hidden_size, cfg.last_kernel_size, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_in(x)
        for blk in self.blocks:
            x = blk(x)
        if self.lstm is not None:
            x = self.lstm(x)
        return self.conv_out(elu(x))


class SEANetDecoder(nnx.Module):
    """latent [B, T, D] -> wav [B, T * hop, C]."""

    def __init__(self, cfg: EncodecConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        kw = dict(pad_mode=cfg.pad_mode, causal=cfg.causal, rngs=rngs, dtype=dtype)
        W = cfg.width
        self.conv_in = Conv1d(cfg.hidden_size, W, cfg.kernel_size, **kw)
        self.lstm = LSTM(W, cfg.num_lstm_layers, rngs=rngs, dtype=dtype) if cfg.num_lstm_layers else None
        blocks = []
        for i, ratio in enumerate(cfg.upsampling_ratios):
            c = W // 2**i
            blocks.append(DecoderBlock(cfg, c, ratio, rngs=rngs, dtype=dtype))
        self.blocks = nnx.List(blocks)
        self.conv_out = Conv1d(cfg.num_filters, cfg.audio_channels, cfg.last_kernel_size, **kw)

    def __call__(self, z: jax.Array) -> jax.Array:
        x = self.conv_in(z)
        if self.lstm is not None:
            x = self.lstm(x)
        for blk in self.blocks:
            x = blk(x)
        return self.conv_out(elu(x))


class ResidualVectorQuantizer(nnx.Module):
    """K codebooks [K, codebook_size, D]; nearest neighbour by squared L2 distance, residual after each."""

    def __init__(self, cfg: EncodecConfig, *, rngs: nnx.Rngs):
        self.codebooks = param(
            jax.random.normal(rngs.params(), (cfg.num_codebooks, cfg.codebook_size, cfg.hidden_size), jnp.float32),
            "codebooks", "code_bins", "code_dim",
        )

    def encode(self, latent: jax.Array) -> jax.Array:
        """latent [B, T, D] -> codes [B, K, T] int32 (float32 distances)."""
        books = self.codebooks[...].astype(jnp.float32)
        r = latent.astype(jnp.float32)
        codes = []
        for k in range(books.shape[0]):
            e = books[k]  # [card, D]
            dist = (jnp.sum(r * r, -1, keepdims=True) - 2.0 * jnp.einsum("btd,cd->btc", r, e)) + jnp.sum(e * e, -1)
            idx = jnp.argmin(dist, axis=-1).astype(jnp.int32)  # first index on ties, as torch's max
            r = r - jnp.take(e, idx, axis=0)
            codes.append(idx)
        return jnp.stack(codes, axis=1)

    def decode(self, codes: jax.Array) -> jax.Array:
        """codes [B, K, T] -> latent [B, T, D] float32: the sum of the selected codebook vectors."""
        books = self.codebooks[...].astype(jnp.float32)
        return sum(jnp.take(books[k], codes[:, k], axis=0) for k in range(codes.shape[1]))


class EncodecModel(nnx.Module):
    """EnCodec codec: `encode(wav [B, C, N]) -> codes [B, K, T]`, `decode(codes) -> wav [B, C, T * hop]`.

    Both are pure jnp with static shapes: jit them with `imgen_jax.xla.jit_method(model, EncodecModel.encode)`.
    `dtype` is the compute dtype of the convolutions and LSTMs; quantizer distances are always float32.
    """

    def __init__(self, cfg: EncodecConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.cfg = cfg
        self.dtype = dtype
        self.encoder = SEANetEncoder(cfg, rngs=rngs, dtype=dtype)
        self.decoder = SEANetDecoder(cfg, rngs=rngs, dtype=dtype)
        self.quantizer = ResidualVectorQuantizer(cfg, rngs=rngs)

    def _check_wav(self, wav: jax.Array) -> None:
        if wav.ndim != 3 or wav.shape[1] != self.cfg.audio_channels or wav.shape[2] < 1:
            raise ImgenError(
                f"EnCodec: expected audio [batch, {self.cfg.audio_channels}, samples > 0], got shape {tuple(wav.shape)}"
            )

    def latent(self, wav: jax.Array) -> jax.Array:
        """wav [B, C, N] -> encoder output [B, T, D] (before quantization)."""
        self._check_wav(wav)
        return self.encoder(jnp.swapaxes(wav, 1, 2))

    def encode(self, wav: jax.Array) -> jax.Array:
        """wav [B, C, N] float -> codes [B, K, ceil(N / hop)] int32."""
        return self.quantizer.encode(self.latent(wav))

    def decode_latent(self, latent: jax.Array) -> jax.Array:
        """latent [B, T, D] -> wav [B, C, T * hop] float32."""
        return jnp.swapaxes(self.decoder(latent.astype(self.dtype)), 1, 2).astype(jnp.float32)

    def decode(self, codes: jax.Array) -> jax.Array:
        """codes [B, K, T] int -> wav [B, C, T * hop] float32."""
        if codes.ndim != 3 or codes.shape[1] != self.cfg.num_codebooks:
            raise ImgenError(f"EnCodec: expected codes [batch, {self.cfg.num_codebooks}, frames], got shape {tuple(codes.shape)}")
        return self.decode_latent(self.quantizer.decode(codes.astype(jnp.int32)))


# ---- construction, loading, jitted entry points ----------------------------------------------


def init_encodec(cfg: EncodecConfig | None = None, seed: int = 0, dtype=jnp.float32) -> EncodecModel:
    """An EnCodec with random weights (for tests and benchmarks).

    Drawn with numpy (seeded) into an abstract model: kernels N(0, 1 / fan_in), zero biases, LSTM
    weights U(+-1/sqrt(W)), codebooks N(0, 1). Much faster than running the module's constructor
    eagerly, which dispatches one small random op per parameter.
    """
    model = abstract_encodec(cfg, dtype)
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    flat = nnx.to_flat_state(state)
    for path, var in flat:
        name, shape = str(path[-1]), tuple(var.get_value().shape)
        if name == "kernel":
            value = rng.standard_normal(shape) / math.sqrt(shape[0] * shape[1])
        elif name in ("w_ih", "w_hh"):
            bound = 1.0 / math.sqrt(min(shape))
            value = rng.uniform(-bound, bound, shape)
        elif name == "codebooks":
            value = rng.standard_normal(shape)
        else:
            value = np.zeros(shape)
        var.set_value(jnp.asarray(value, jnp.float32))
    nnx.update(model, nnx.from_flat_state(flat))
    return model


def abstract_encodec(cfg: EncodecConfig | None = None, dtype=jnp.float32) -> EncodecModel:
    """An EnCodec whose parameters are shape placeholders, to be filled by `weights.load_into`."""
    return nnx.eval_shape(lambda: EncodecModel(cfg or EncodecConfig(), rngs=nnx.Rngs(0), dtype=dtype))


def load_encodec(model_dir: str, dtype=jnp.float32, param_dtype=None) -> EncodecModel:
    """Load the `encodec` component of a converted model directory (see imgen_jax.modeldir)."""
    from imgen_jax.modeldir import load_component

    return load_component(model_dir, "encodec", EncodecConfig.from_dict, lambda cfg: abstract_encodec(cfg, dtype),
                          param_dtype)[1]


__all__ = [
    "EncodecConfig", "EncodecModel", "init_encodec", "abstract_encodec", "load_encodec",
]
