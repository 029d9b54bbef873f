"""EnCodec weights: Hugging Face and audiocraft layouts -> imgen_jax `EncodecModel` names.

Our names are listed in imgen_jax/models/encodec.py. Weight norm (torch's `weight_g`/`weight_v` or
`parametrizations.weight.original0`/`original1`) is folded into plain weights first
(convert.common.fold_weight_norm); models trained without weight norm (plain `weight`) load too.
Conv weights [out, in, k] become kernels [k, in, out]; transposed-conv weights [in, out, k]
become [k, in, out] and then their polyphase form (imgen_jax.models.encodec.polyphase_kernel); LSTM
`weight_ih_l{n}` [4W, W] becomes lstm/layers/{n}/w_ih [W, 4W], `weight_hh_l{n}` is kept as w_hh
[4W, W] and the two biases are summed; codebook `embed` [card, D] are stacked to [K, card, D]. The quantizer's
training buffers (`inited`, `cluster_size`, `embed_avg`) are ignored.

Both PyTorch layouts index the SEANet `nn.Sequential` / `nn.ModuleList` the same way, ELU
layers included (they have no weights). With R = len(ratios), n = num_residual_layers:

    encoder: 0 conv_in | per ratio i: n res blocks, ELU, down conv | LSTM | ELU | conv_out
    decoder: 0 conv_in | LSTM | per ratio i: ELU, up (transposed) conv, n res blocks | ELU | conv_out
    res block `block`: 0 ELU, 1 conv1, 2 ELU, 3 conv2 (+ `shortcut` conv with use_conv_shortcut)

The documented renaming, which `encodec_hf_to_audiocraft` applies and the tests use to build
audiocraft-layout files ({i} layer index, {j} 1 or 3, {k} codebook, {p} weight/bias where HF's
`parametrizations.weight.original0`/`original1` are audiocraft's `weight_g`/`weight_v`):

    HF (EncodecModel)                              audiocraft (CompressionModel 'best_state')
    encoder.layers.{i}.conv.{p}                    encoder.model.{i}.conv.conv.{p}
    encoder.layers.{i}.block.{j}.conv.{p}          encoder.model.{i}.block.{j}.conv.conv.{p}
    encoder.layers.{i}.shortcut.conv.{p}           encoder.model.{i}.shortcut.conv.conv.{p}
    encoder.layers.{i}.lstm.{weight,bias}_{ih,hh}_l{n}
                                                   encoder.model.{i}.lstm.{weight,bias}_{ih,hh}_l{n}
    decoder.layers.{i}.conv.{p}  (conv_in/out)     decoder.model.{i}.conv.conv.{p}
    decoder.layers.{i}.conv.{p}  (up, transposed)  decoder.model.{i}.convtr.convtr.{p}
    decoder.layers.{i}.block.{j}.conv.{p}          decoder.model.{i}.block.{j}.conv.conv.{p}
    decoder.layers.{i}.shortcut.conv.{p}           decoder.model.{i}.shortcut.conv.conv.{p}
    decoder.layers.{i}.lstm.*                      decoder.model.{i}.lstm.*
    quantizer.layers.{k}.codebook.{embed,inited,cluster_size,embed_avg}
                                                   quantizer.vq.layers.{k}._codebook.{embed,inited,cluster_size,embed_avg}

Sizes come from the weights: channels, filters, latent size and kernel sizes from conv shapes,
the ratios from the down-sampling kernels (SEANet uses kernel = 2 * ratio), residual and LSTM
layer counts, codebook count and size. A given config (HF config.json's audio_encoder entry, or
audiocraft's `xp.cfg`) must agree with them, and supplies what weights cannot tell: sampling
rate, pad mode, causality, dilation growth. Without a config these take EncodecConfig's defaults
(32 kHz, reflect padding, non-causal), the values of Hugging Face's port of MusicGen's codec.
Note: audiocraft's own config default is `pad_mode: constant`; pass the checkpoint's `xp.cfg`
(`meta`) to `encodec_from_audiocraft` to use the checkpoint's setting.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from convert.common import KeyReader, fold_weight_norm
from imgen_jax.models.encodec import EncodecConfig, polyphase_kernel
from imgen_jax.errors import ImgenError

IGNORED_BUFFERS = (".inited", ".cluster_size", ".embed_avg")


class _Layout:
    """Key templates of one PyTorch layout."""

    def __init__(self, name: str, enc: str, dec: str, conv: str, convtr: str, codebook: str):
        self.name, self.enc, self.dec, self.conv, self.convtr, self.codebook = name, enc, dec, conv, convtr, codebook

    def layer_rx(self, part: str) -> re.Pattern:
        tmpl = self.enc if part == "encoder" else self.dec
        return re.compile("^" + re.escape(tmpl).replace(r"\{i\}", r"(\d+)"))

    def codebook_rx(self) -> re.Pattern:
        """Any key of codebook {k} (embed or buffers)."""
        stem = self.codebook.rsplit(".", 1)[0] + "."
        return re.compile("^" + re.escape(stem).replace(r"\{k\}", r"(\d+)"))


HF = _Layout("Hugging Face", "encoder.layers.{i}.", "decoder.layers.{i}.", "conv.", "conv.", "quantizer.layers.{k}.codebook.embed")
AUDIOCRAFT = _Layout(
    "audiocraft", "encoder.model.{i}.", "decoder.model.{i}.", "conv.conv.", "convtr.convtr.",
    "quantizer.vq.layers.{k}._codebook.embed",
)


def _layer_kinds(sd: Mapping[str, np.ndarray], layout: _Layout, part: str) -> dict[int, str]:
    """{sequential index: 'res' | 'lstm' | 'conv'} of the layers of `part` that have weights."""
    rx = layout.layer_rx(part)
    kinds: dict[int, str] = {}
    for key in sd:
        m = rx.match(key)
        if not m:
            continue
        i, rest = int(m.group(1)), key[m.end():]
        if rest.startswith(("block.", "shortcut.")):
            kinds[i] = "res"
        elif rest.startswith("lstm."):
            kinds[i] = "lstm"
        elif rest.startswith((layout.conv, layout.convtr)):
            kinds.setdefault(i, "conv")
        # anything else is left to KeyReader, which reports it as unexpected
    return kinds


def _plan(n_ratios: int, n_res: int, lstm: bool) -> tuple[dict, dict]:
    """Sequential indices of every weighted layer: (encoder, decoder) dicts of role -> index."""
    enc: dict[Any, int] = {"conv_in": 0}
    idx = 1
    for i in range(n_ratios):
        for j in range(n_res):
            enc[("res", i, j)] = idx + j
        enc[("down", i)] = idx + n_res + 1
        idx += n_res + 2
    if lstm:
        enc["lstm"] = idx
        idx += 1
    enc["conv_out"] = idx + 1
    dec: dict[Any, int] = {"conv_in": 0}
    idx = 1
    if lstm:
        dec["lstm"] = 1
        idx = 2
    for i in range(n_ratios):
        dec[("up", i)] = idx + 1
        for j in range(n_res):
            dec[("res", i, j)] = idx + 2 + j
        idx += 2 + n_res
    dec["conv_out"] = idx + 1
    return enc, dec


def _shape(sd: Mapping[str, np.ndarray], key: str) -> tuple[int, ...] | None:
    return tuple(sd[key].shape) if key in sd else None


def _detect(sd: Mapping[str, np.ndarray], layout: _Layout, known: dict, source: str) -> EncodecConfig:
    """EncodecConfig from the weight shapes, checked against the `known` config values."""
    enc_kinds = _layer_kinds(sd, layout, "encoder")
    codebooks = sorted({int(m.group(1)) for k in sd if (m := layout.codebook_rx().match(k))})
    if not enc_kinds or not codebooks:
        first = ", ".join(sorted(sd)[:4])
        raise ImgenError(
            f"{source}: not an EnCodec checkpoint in {layout.name} layout (no keys like "
            f"{layout.enc.format(i=0)}{layout.conv}weight / {layout.codebook.format(k=0)}; first keys: {first})"
        )
    embeds = [layout.codebook.format(k=k) for k in range(codebooks[-1] + 1) if layout.codebook.format(k=k) in sd]
    if not embeds:
        raise ImgenError(f"{source}: missing keys: {layout.codebook.format(k=0)} (no EnCodec codebook found)")
    n_conv = sum(1 for v in enc_kinds.values() if v == "conv")
    n_res_total = sum(1 for v in enc_kinds.values() if v == "res")
    has_lstm = any(v == "lstm" for v in enc_kinds.values())
    n_ratios = n_conv - 2 if n_conv >= 3 else len(known.get("upsampling_ratios", ()))
    if n_ratios < 1:
        raise ImgenError(f"{source}: EnCodec encoder has {n_conv} convolution layers, expected at least 3")
    n_res = n_res_total // n_ratios if n_res_total else known.get("num_residual_layers", 0)
    enc, _ = _plan(n_ratios, n_res, has_lstm)

    def conv_w(role) -> tuple[int, ...] | None:
        return _shape(sd, layout.enc.format(i=enc[role]) + layout.conv + "weight")

    found: dict[str, Any] = {}
    if (w := conv_w("conv_in")) is not None:
        found["num_filters"], found["audio_channels"], found["kernel_size"] = w
    if (w := conv_w("conv_out")) is not None:
        found["hidden_size"], _, found["last_kernel_size"] = w
    ratios = []
    for i in range(n_ratios):
        w = conv_w(("down", i))
        ratios.append(None if w is None else w[2] // 2)
    if None not in ratios:
        found["upsampling_ratios"] = tuple(reversed(ratios))
    if n_res:
        w = _shape(sd, layout.enc.format(i=enc[("res", 0, 0)]) + "block.1." + layout.conv + "weight")
        if w is not None:
            found["residual_kernel_size"] = w[2]
            found["compress"] = max(1, w[1] // max(1, w[0]))
        found["use_conv_shortcut"] = any(
            k.startswith(layout.enc.format(i=enc[("res", 0, 0)]) + "shortcut.") for k in sd
        )
    lstm_prefix = layout.enc.format(i=enc["lstm"]) + "lstm.weight_ih_l" if has_lstm else None
    found["num_lstm_layers"] = sum(1 for k in sd if lstm_prefix and k.startswith(lstm_prefix))
    card, dim = sd[embeds[0]].shape
    found["codebook_size"], found["num_codebooks"] = int(card), codebooks[-1] + 1  # gaps: reported as missing
    found["num_residual_layers"] = n_res
    if "hidden_size" in found and found["hidden_size"] != dim:
        raise ImgenError(
            f"{source}: codebook dimension {dim} differs from the encoder output {found['hidden_size']} "
            "(codebook projections are not supported)"
        )
    found.setdefault("hidden_size", int(dim))

    for name, value in found.items():
        if name in known and known[name] is not None:
            want = tuple(known[name]) if isinstance(value, tuple) else type(value)(known[name])
            if want != value:
                raise ImgenError(
                    f"{source}: config field {name} is {list(want) if isinstance(want, tuple) else want} but the "
                    f"weights say {list(value) if isinstance(value, tuple) else value}"
                )
    fields = {f for f in EncodecConfig.__dataclass_fields__}
    args = {k: v for k, v in {**known, **found}.items() if k in fields and v is not None}
    try:
        return EncodecConfig(**args)
    except (TypeError, ValueError) as e:
        raise ImgenError(f"{source}: invalid EnCodec config: {e}") from None


def _convert(sd: Mapping[str, np.ndarray], layout: _Layout, known: dict, source: str) -> tuple[EncodecConfig, dict]:
    sd = fold_weight_norm(sd)
    cfg = _detect(sd, layout, known, source)
    r = KeyReader(sd, source, ignore=IGNORED_BUFFERS)
    enc, dec = _plan(len(cfg.upsampling_ratios), cfg.num_residual_layers, cfg.num_lstm_layers > 0)
    flat: dict[str, np.ndarray | None] = {}

    def conv(ours: str, prefix: str, din: int, dout: int, k: int, transposed_stride: int = 0) -> None:
        transposed = transposed_stride > 0
        stem = prefix + (layout.convtr if transposed else layout.conv)
        w = r.take(stem + "weight", (din, dout, k) if transposed else (dout, din, k))
        if w is not None:
            w = polyphase_kernel(w.transpose(2, 0, 1), transposed_stride) if transposed else w.transpose(2, 1, 0)
        flat[ours + "/kernel"] = w
        flat[ours + "/bias"] = r.take(stem + "bias", (dout,))

    def res(ours: str, prefix: str, dim: int) -> None:
        hidden = dim // cfg.compress
        conv(ours + "/conv1", prefix + "block.1.", dim, hidden, cfg.residual_kernel_size)
        conv(ours + "/conv2", prefix + "block.3.", hidden, dim, 1)
        if cfg.use_conv_shortcut:
            conv(ours + "/shortcut", prefix + "shortcut.", dim, dim, 1)

    def lstm(ours: str, prefix: str) -> None:
        W = cfg.width
        for n in range(cfg.num_lstm_layers):
            wi = r.take(f"{prefix}lstm.weight_ih_l{n}", (4 * W, W))
            wh = r.take(f"{prefix}lstm.weight_hh_l{n}", (4 * W, W))
            bi = r.take(f"{prefix}lstm.bias_ih_l{n}", (4 * W,))
            bh = r.take(f"{prefix}lstm.bias_hh_l{n}", (4 * W,))
            flat[f"{ours}/layers/{n}/w_ih"] = None if wi is None else wi.T
            flat[f"{ours}/layers/{n}/w_hh"] = wh
            flat[f"{ours}/layers/{n}/bias"] = None if bi is None or bh is None else bi.astype(np.float64) + bh

    F, C, D, W = cfg.num_filters, cfg.audio_channels, cfg.hidden_size, cfg.width
    E, Dd = layout.enc, layout.dec
    conv("encoder/conv_in", E.format(i=enc["conv_in"]), C, F, cfg.kernel_size)
    for i, ratio in enumerate(reversed(cfg.upsampling_ratios)):
        c = F * 2**i
        for j in range(cfg.num_residual_layers):
            res(f"encoder/blocks/{i}/res/{j}", E.format(i=enc[("res", i, j)]), c)
        conv(f"encoder/blocks/{i}/down", E.format(i=enc[("down", i)]), c, 2 * c, 2 * ratio)
    if cfg.num_lstm_layers:
        lstm("encoder/lstm", E.format(i=enc["lstm"]))
    conv("encoder/conv_out", E.format(i=enc["conv_out"]), W, D, cfg.last_kernel_size)

    conv("decoder/conv_in", Dd.format(i=dec["conv_in"]), D, W, cfg.kernel_size)
    if cfg.num_lstm_layers:
        lstm("decoder/lstm", Dd.format(i=dec["lstm"]))
    for i, ratio in enumerate(cfg.upsampling_ratios):
        c = W // 2**i
        conv(f"decoder/blocks/{i}/up", Dd.format(i=dec[("up", i)]), c, c // 2, 2 * ratio, transposed_stride=ratio)
        for j in range(cfg.num_residual_layers):
            res(f"decoder/blocks/{i}/res/{j}", Dd.format(i=dec[("res", i, j)]), c // 2)
    conv("decoder/conv_out", Dd.format(i=dec["conv_out"]), F, C, cfg.last_kernel_size)

    books = [r.take(layout.codebook.format(k=k), (cfg.codebook_size, D)) for k in range(cfg.num_codebooks)]
    flat["quantizer/codebooks"] = None if any(b is None for b in books) else np.stack(books)
    r.finish()
    return cfg, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in flat.items()}  # type: ignore[arg-type]


# ---- Hugging Face ------------------------------------------------------------------------------

_HF_FIELDS = (
    "sampling_rate", "audio_channels", "num_filters", "hidden_size", "upsampling_ratios", "num_residual_layers",
    "dilation_growth_rate", "kernel_size", "last_kernel_size", "residual_kernel_size", "compress", "num_lstm_layers",
    "codebook_size", "pad_mode", "trim_right_ratio", "use_conv_shortcut",
)


def _known_from_hf(c: dict, source: str) -> dict:
    if c.get("norm_type", "weight_norm") != "weight_norm":
        raise ImgenError(f"{source}: EnCodec norm_type {c.get('norm_type')!r} is not supported (only weight_norm, as MusicGen)")
    if c.get("normalize"):
        raise ImgenError(f"{source}: EnCodec with normalize=true (input renormalisation) is not supported; MusicGen's codec has none")
    if c.get("chunk_length_s") is not None:
        raise ImgenError(f"{source}: chunked EnCodec (chunk_length_s={c['chunk_length_s']}) is not supported")
    if c.get("codebook_dim") is not None and c.get("hidden_size") is not None and c["codebook_dim"] != c["hidden_size"]:
        raise ImgenError(f"{source}: codebook_dim {c['codebook_dim']} != hidden_size {c['hidden_size']} is not supported")
    known = {k: c[k] for k in _HF_FIELDS if k in c and c[k] is not None}
    if "use_causal_conv" in c:
        known["causal"] = bool(c["use_causal_conv"])
    if "upsampling_ratios" in known:
        known["upsampling_ratios"] = tuple(int(x) for x in known["upsampling_ratios"])
    if not known.get("causal", False):
        known.pop("trim_right_ratio", None)
    return known


def encodec_from_hf(
    sd: Mapping[str, np.ndarray], hf_audio_config: dict | None, source: str
) -> tuple[EncodecConfig, dict[str, np.ndarray]]:
    """Hugging Face EncodecModel weights (no `audio_encoder.` prefix) -> (EncodecConfig, our flat weights).

    `hf_audio_config` is the EncodecConfig dict (MusicGen config.json's "audio_encoder"), or None
    to detect the sizes from the weights and take the defaults for the rest (see module docstring).
    """
    known = _known_from_hf(dict(hf_audio_config or {}), source)
    return _convert(sd, HF, known, source)


# ---- audiocraft --------------------------------------------------------------------------------


def _resolve(value: Any, root: dict) -> Any:
    """Resolve an OmegaConf `${a.b}` interpolation against the config root (one level)."""
    if isinstance(value, str) and (m := re.fullmatch(r"\$\{([\w.]+)\}", value.strip())):
        node: Any = root
        for part in m.group(1).split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node
    return value


def _known_from_audiocraft(meta: Mapping[str, object] | None, source: str) -> dict:
    """Config values from the checkpoint's `xp.cfg` YAML (audiocraft's training config), when present."""
    text = next((v for k, v in (meta or {}).items() if k.endswith("xp.cfg") and isinstance(v, str) and v.strip()), None)
    if text is None:
        return {}
    try:
        import yaml

        root = yaml.safe_load(text)
    except ImportError:  # pragma: no cover - PyYAML ships with transformers / huggingface_hub
        raise ImgenError(f"{source}: reading the checkpoint's xp.cfg needs PyYAML (pip install pyyaml)") from None
    except Exception as e:
        raise ImgenError(f"{source}: unreadable xp.cfg YAML ({type(e).__name__}: {str(e).splitlines()[0][:100]})") from None
    if not isinstance(root, dict) or not isinstance(root.get("seanet"), dict):
        return {}
    seanet = {k: _resolve(v, root) for k, v in root["seanet"].items() if k not in ("encoder", "decoder")}
    enc_over = root["seanet"].get("encoder") or {}
    dec_over = root["seanet"].get("decoder") or {}
    seanet.update({k: _resolve(v, root) for k, v in enc_over.items()})
    encodec = root.get("encodec") if isinstance(root.get("encodec"), dict) else {}
    if encodec.get("renormalize"):
        raise ImgenError(f"{source}: EnCodec with renormalize=true is not supported; MusicGen's codec has none")
    if seanet.get("norm", "weight_norm") not in ("weight_norm", "none"):
        raise ImgenError(f"{source}: SEANet norm {seanet.get('norm')!r} is not supported (weight_norm or none)")
    if dec_over.get("final_activation"):
        raise ImgenError(f"{source}: SEANet decoder final_activation {dec_over['final_activation']!r} is not supported")
    if seanet.get("activation", "ELU") != "ELU" or (seanet.get("activation_params") or {"alpha": 1.0}).get("alpha", 1.0) != 1.0:
        raise ImgenError(f"{source}: SEANet activation other than ELU(alpha=1) is not supported")
    names = {
        "channels": "audio_channels", "n_filters": "num_filters", "dimension": "hidden_size", "ratios": "upsampling_ratios",
        "n_residual_layers": "num_residual_layers", "dilation_base": "dilation_growth_rate", "kernel_size": "kernel_size",
        "last_kernel_size": "last_kernel_size", "residual_kernel_size": "residual_kernel_size", "compress": "compress",
        "lstm": "num_lstm_layers", "pad_mode": "pad_mode", "causal": "causal",
    }
    known = {ours: seanet[theirs] for theirs, ours in names.items() if seanet.get(theirs) is not None}
    if "true_skip" in seanet:
        known["use_conv_shortcut"] = not seanet["true_skip"]
    if "ratios" in seanet:
        known["upsampling_ratios"] = tuple(int(x) for x in seanet["ratios"])
    sr = _resolve(root.get("sample_rate"), root)
    if sr is not None:
        known["sampling_rate"] = int(sr)
    if known.get("causal") and dec_over.get("trim_right_ratio") is not None:
        known["trim_right_ratio"] = float(dec_over["trim_right_ratio"])
    rvq = root.get("rvq") if isinstance(root.get("rvq"), dict) else {}
    if rvq.get("bins") is not None:
        known["codebook_size"] = int(rvq["bins"])
    return {k: v for k, v in known.items() if not (isinstance(v, str) and v.startswith("${"))}


def encodec_from_audiocraft(
    sd: Mapping[str, np.ndarray], source: str, meta: Mapping[str, object] | None = None
) -> tuple[EncodecConfig, dict[str, np.ndarray]]:
    """audiocraft CompressionModel state dict (`compression_state_dict.bin`'s 'best_state', prefix
    removed) -> (EncodecConfig, our flat weights).

    `meta`: the checkpoint's non-tensor entries (convert.common.load_torch_checkpoint's second
    result); its 'xp.cfg' YAML, when present, supplies the sampling rate, pad mode and causality.
    """
    return _convert(sd, AUDIOCRAFT, _known_from_audiocraft(meta, source), source)


def encodec_hf_to_audiocraft(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename a Hugging Face EncodecModel state dict to audiocraft's layout (table above)."""
    dec_kinds = _layer_kinds(sd, HF, "decoder")
    convs = sorted(i for i, kind in dec_kinds.items() if kind == "conv")
    transposed = set(convs[1:-1])  # every decoder conv but the first and the last is an up-sampling one
    out: dict[str, np.ndarray] = {}
    enc_rx, dec_rx, book_rx = HF.layer_rx("encoder"), HF.layer_rx("decoder"), re.compile(r"^quantizer\.layers\.(\d+)\.codebook\.")
    for key, value in sd.items():
        key2 = key.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v")
        if m := book_rx.match(key2):
            out[f"quantizer.vq.layers.{m.group(1)}._codebook." + key2[m.end():]] = value
            continue
        for part, rx in (("encoder", enc_rx), ("decoder", dec_rx)):
            if m := rx.match(key2):
                i, rest = int(m.group(1)), key2[m.end():]
                if rest.startswith("conv."):
                    stem = "convtr.convtr." if part == "decoder" and i in transposed else "conv.conv."
                    rest = stem + rest[len("conv."):]
                elif rest.startswith(("block.", "shortcut.")):
                    rest = re.sub(r"^(block\.\d+\.|shortcut\.)conv\.", r"\1conv.conv.", rest)
                out[f"{part}.model.{i}.{rest}"] = value
                break
        else:
            out[key2] = value
    return out
