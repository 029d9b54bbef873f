"""LAION-CLAP weights: a laion_clap checkpoint + roberta-base's tokenizer files -> one imgen_jax CLAP file.

The checkpoint (`music_audioset_epoch_15_esc_90.14.pt`: {"state_dict": {"module.<name>": tensor},
"optimizer": ...}) and roberta-base's vocab.json / merges.txt become one safetensors file
(imgen_jax.eval.nets.clap): the weights, with the config and the tokenizer files in its metadata.

    laion_clap (non-fusion CLAP, HTSAT + roberta)                 ours
    audio_branch.bn0.{weight,bias,running_mean,running_var}        audio/bn0/{scale,bias} (folded, eps 1e-5)
    audio_branch.patch_embed.proj.{weight [E,1,p,p], bias}         audio/patch_embed/{kernel [p,p,1,E], bias}
    audio_branch.patch_embed.norm                                  audio/patch_norm
    audio_branch.layers.{i}.blocks.{j}.X                           audio/stages/{i}/pairs/{a if j even else b}/X
        norm1, norm2, mlp.fc1 -> fc1, mlp.fc2 -> fc2, attn.qkv,      stacked over j // 2 on a leading axis
        attn.proj, attn.relative_position_bias_table -> attn/bias_table
    audio_branch.layers.{i}.downsample.{norm,reduction}            audio/stages/{i}/merge/{norm,reduction}
    audio_branch.norm                                              audio/norm
    audio_projection.{0,2}, text_projection.{0,2}                  {audio,text}_projection/{fc1,fc2}
    text_branch.embeddings.{word,position,token_type}_embeddings   text/{...}_embeddings/embedding
    text_branch.embeddings.LayerNorm                               text/embed_norm
    text_branch.encoder.layer.{l}.attention.self.{query,key,value} text/layers/{q,k,v}     (stacked over l)
    ....attention.output.dense / .LayerNorm                        text/layers/o, attn_norm
    ....intermediate.dense, output.dense, output.LayerNorm         text/layers/ff_in, ff_out, ff_norm
    text_branch.pooler.dense                                       text/pooler

LayerNorm weight/bias -> scale/bias; Linear weight [out, in] -> kernel [in, out]. Checked, not
converted: the STFT kernels (shape) and logmel_extractor.melW (against our Slaney filters), every
relative_position_index and shifted-window attn_mask (against ours). Not used by the embeddings and
skipped: the classifier head (tscam_conv, head), audio_transform / text_transform (training-only
MLPs), logit_scale_a / _t, text_branch.embeddings.position_ids, num_batches_tracked. Sizes (Swin
width, depths, heads, window, spec_size; RoBERTa vocabulary, width, layers, FF, positions; joint
width) come from the shapes; the frontend settings and RoBERTa's head count (12) are HTSAT-base /
roberta-base's (ClapConfig defaults), melW confirming the former. Fusion checkpoints are refused.

    python -m convert.clap_weights music_audioset_epoch_15_esc_90.14.pt roberta-base/ clap.safetensors

`roberta-base/` is a folder with roberta-base's `vocab.json` and `merges.txt` (e.g. a Hugging Face snapshot).
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Mapping

import numpy as np

from convert.common import KeyReader, fold_batch_norm, load_torch_checkpoint, strip_prefix
from imgen_jax.errors import ImgenError
from imgen_jax.eval.nets.bpe import RobertaBPE, read_text
from imgen_jax.eval.nets.clap import (KIND, MERGES_META, VOCAB_META, ClapConfig, relative_index, shift_mask)
from imgen_jax.eval.nets.common import save_net, slaney_mel_filters

A = "audio_branch."
T = "text_branch."
SKIP = ("num_batches_tracked", A + "tscam_conv.", A + "head.", "audio_transform.", "text_transform.",
        "logit_scale_a", "logit_scale_t", T + "embeddings.position_ids")


def _count(sd: Mapping[str, np.ndarray], pattern: str) -> int:
    """1 + the largest integer captured by `pattern` among the keys (0 when none matches)."""
    found = [int(m.group(1)) for k in sd if (m := re.match(pattern, k))]
    return max(found) + 1 if found else 0


def detect_config(sd: Mapping[str, np.ndarray], source: str) -> ClapConfig:
    """ClapConfig with the sizes read from the state dict's shapes (frontend: ClapConfig's defaults)."""
    need = (A + "patch_embed.proj.weight", A + "logmel_extractor.melW", T + "embeddings.word_embeddings.weight",
            "audio_projection.0.weight", A + "layers.0.blocks.0.attn.relative_position_bias_table")
    absent = [k for k in need if k not in sd]
    if absent:
        raise ImgenError(f"{source}: not a laion_clap HTSAT + roberta state dict (no {', '.join(absent)}; "
                         f"first keys: {', '.join(sorted(sd)[:4])})")
    if any("fusion_model" in k or "mel_conv" in k for k in sd):
        raise ImgenError(f"{source}: a fusion CLAP checkpoint (enable_fusion=True); only non-fusion checkpoints "
                         f"(e.g. music_audioset_epoch_15_esc_90.14.pt, 630k-audioset-best.pt) are supported")
    stages = _count(sd, re.escape(A) + r"layers\.(\d+)\.")
    depths = tuple(_count(sd, re.escape(A) + rf"layers\.{i}\.blocks\.(\d+)\.") for i in range(stages))
    heads = tuple(int(sd[f"{A}layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1]) for i in range(stages))
    table = int(sd[A + "layers.0.blocks.0.attn.relative_position_bias_table"].shape[0])
    window = (int(round(table ** 0.5)) + 1) // 2
    embed_dim, _, patch, _ = sd[A + "patch_embed.proj.weight"].shape
    rows, mels = sd[A + "logmel_extractor.melW"].shape
    mask = sd.get(A + "layers.0.blocks.1.attn_mask")
    spec = ClapConfig.spec_size if mask is None else int(round(mask.shape[0] ** 0.5)) * window * int(patch)
    fc1 = sd.get(A + "layers.0.blocks.0.mlp.fc1.weight")
    vocab, width = sd[T + "embeddings.word_embeddings.weight"].shape
    ff = sd.get(T + "encoder.layer.0.intermediate.dense.weight")
    pos = sd.get(T + "embeddings.position_embeddings.weight")
    types = sd.get(T + "embeddings.token_type_embeddings.weight")
    try:
        return ClapConfig(
            window=2 * (int(rows) - 1), n_mels=int(mels), spec_size=spec, patch_size=int(patch), embed_dim=int(embed_dim),
            depths=depths, heads=heads, window_size=window,
            mlp_ratio=ClapConfig.mlp_ratio if fc1 is None else fc1.shape[0] / embed_dim,
            vocab_size=int(vocab), text_width=int(width), text_layers=_count(sd, re.escape(T) + r"encoder\.layer\.(\d+)\."),
            text_ff=ClapConfig.text_ff if ff is None else int(ff.shape[0]),
            max_positions=ClapConfig.max_positions if pos is None else int(pos.shape[0]),
            type_vocab_size=ClapConfig.type_vocab_size if types is None else int(types.shape[0]),
            joint_dim=int(sd["audio_projection.0.weight"].shape[0]))
    except ValueError as e:
        raise ImgenError(f"{source}: sizes read from the weights do not make a CLAP model ({e})") from None


def _stack(items: list) -> np.ndarray | None:
    return None if any(t is None for t in items) else np.stack(items)


def _linear_t(r: KeyReader, key: str, din: int, dout: int, bias: bool = True) -> tuple:
    """(kernel [din, dout], bias [dout] or None) of a torch Linear `key`."""
    w = r.take(f"{key}.weight", (dout, din))
    return (None if w is None else w.T), (r.take(f"{key}.bias", (dout,)) if bias else None)


class _Out:
    """Our flat weights, with per-layer tensors collected for stacking."""

    def __init__(self):
        self.flat: dict[str, np.ndarray | None] = {}
        self.stacks: dict[str, list] = {}

    def linear(self, r: KeyReader, name: str, key: str, din: int, dout: int, bias: bool = True, stacked: bool = False):
        k, b = _linear_t(r, key, din, dout, bias)
        self.put(f"{name}/kernel", k, stacked)
        if bias:
            self.put(f"{name}/bias", b, stacked)

    def norm(self, r: KeyReader, name: str, key: str, dim: int, stacked: bool = False):
        self.put(f"{name}/scale", r.take(f"{key}.weight", (dim,)), stacked)
        self.put(f"{name}/bias", r.take(f"{key}.bias", (dim,)), stacked)

    def put(self, name: str, arr, stacked: bool = False):
        if stacked:
            self.stacks.setdefault(name, []).append(arr)
        else:
            self.flat[name] = arr

    def done(self) -> dict[str, np.ndarray | None]:
        return {**self.flat, **{k: _stack(v) for k, v in self.stacks.items()}}


def _check_buffer(r: KeyReader, key: str, want: np.ndarray, source: str) -> None:
    got = r.take(key, want.shape)
    if got is not None and not np.array_equal(np.asarray(got, want.dtype), want):
        raise ImgenError(f"{source}: {key} differs from the Swin buffer we compute (another window / shift layout)")


def _audio(r: KeyReader, out: _Out, cfg: ClapConfig, source: str) -> None:
    n_bins = cfg.window // 2 + 1
    for part in ("real", "imag"):
        r.take(f"{A}spectrogram_extractor.stft.conv_{part}.weight", (n_bins, 1, cfg.window))
    mel = r.take(A + "logmel_extractor.melW", (n_bins, cfg.n_mels))
    if mel is not None:
        ours = slaney_mel_filters(cfg.sample_rate, cfg.window, cfg.n_mels, cfg.f_min, cfg.f_max, "ClapConfig")
        diff = float(np.abs(mel - ours).max())
        if diff > 1e-5 * float(np.abs(mel).max()):
            raise ImgenError(f"{source}: {A}logmel_extractor.melW differs from the Slaney filters of {cfg.sample_rate} Hz, "
                             f"{cfg.f_min}-{cfg.f_max} Hz (max difference {diff:.3g}): another frontend")
    bn0 = fold_batch_norm(r, A + "bn0", cfg.n_mels)
    out.put("audio/bn0/scale", None if bn0 is None else bn0[0])
    out.put("audio/bn0/bias", None if bn0 is None else bn0[1])
    e, p = cfg.embed_dim, cfg.patch_size
    w = r.take(A + "patch_embed.proj.weight", (e, 1, p, p))
    out.put("audio/patch_embed/kernel", None if w is None else w.transpose(2, 3, 1, 0))
    out.put("audio/patch_embed/bias", r.take(A + "patch_embed.proj.bias", (e,)))
    out.norm(r, "audio/patch_norm", A + "patch_embed.norm", e)
    for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.heads)):
        dim, res = e * 2 ** i, cfg.resolution(i)
        win = min(cfg.window_size, res)
        shift = 0 if res <= cfg.window_size else cfg.window_size // 2
        hidden = int(dim * cfg.mlp_ratio)
        for j in range(depth):
            key, name = f"{A}layers.{i}.blocks.{j}", f"audio/stages/{i}/pairs/{'ab'[j % 2]}"
            out.norm(r, f"{name}/norm1", f"{key}.norm1", dim, stacked=True)
            out.linear(r, f"{name}/attn/qkv", f"{key}.attn.qkv", dim, 3 * dim, stacked=True)
            out.linear(r, f"{name}/attn/proj", f"{key}.attn.proj", dim, dim, stacked=True)
            out.put(f"{name}/attn/bias_table", r.take(f"{key}.attn.relative_position_bias_table", ((2 * win - 1) ** 2, heads)), True)
            _check_buffer(r, f"{key}.attn.relative_position_index", relative_index(win), source)
            if j % 2 and shift:
                _check_buffer(r, f"{key}.attn_mask", shift_mask(res, win, shift), source)
            out.norm(r, f"{name}/norm2", f"{key}.norm2", dim, stacked=True)
            out.linear(r, f"{name}/fc1", f"{key}.mlp.fc1", dim, hidden, stacked=True)
            out.linear(r, f"{name}/fc2", f"{key}.mlp.fc2", hidden, dim, stacked=True)
        if i < len(cfg.depths) - 1:
            out.norm(r, f"audio/stages/{i}/merge/norm", f"{A}layers.{i}.downsample.norm", 4 * dim)
            out.linear(r, f"audio/stages/{i}/merge/reduction", f"{A}layers.{i}.downsample.reduction", 4 * dim, 2 * dim, bias=False)
    out.norm(r, "audio/norm", A + "norm", cfg.audio_width)


def _text(r: KeyReader, out: _Out, cfg: ClapConfig) -> None:
    d, f = cfg.text_width, cfg.text_ff
    for name, rows in (("word", cfg.vocab_size), ("position", cfg.max_positions), ("token_type", cfg.type_vocab_size)):
        out.put(f"text/{name}_embeddings/embedding", r.take(f"{T}embeddings.{name}_embeddings.weight", (rows, d)))
    out.norm(r, "text/embed_norm", T + "embeddings.LayerNorm", d)
    for l in range(cfg.text_layers):
        key = f"{T}encoder.layer.{l}"
        for ours, theirs in (("q", "query"), ("k", "key"), ("v", "value")):
            out.linear(r, f"text/layers/{ours}", f"{key}.attention.self.{theirs}", d, d, stacked=True)
        out.linear(r, "text/layers/o", f"{key}.attention.output.dense", d, d, stacked=True)
        out.norm(r, "text/layers/attn_norm", f"{key}.attention.output.LayerNorm", d, stacked=True)
        out.linear(r, "text/layers/ff_in", f"{key}.intermediate.dense", d, f, stacked=True)
        out.linear(r, "text/layers/ff_out", f"{key}.output.dense", f, d, stacked=True)
        out.norm(r, "text/layers/ff_norm", f"{key}.output.LayerNorm", d, stacked=True)
    out.linear(r, "text/pooler", T + "pooler.dense", d, d)


def clap_from_torch(sd: Mapping[str, np.ndarray], source: str) -> tuple[ClapConfig, dict[str, np.ndarray]]:
    """laion_clap state dict (bare, `module.`-prefixed, or a whole checkpoint flattened with its
    `state_dict.` prefix) -> (config, our flat weights); every key problem in one ImgenError."""
    if any(k.startswith("state_dict.") for k in sd):
        sd = strip_prefix(sd, "state_dict.")
    if sd and all(k.startswith("module.") for k in sd):
        sd = strip_prefix(sd, "module.")
    cfg = detect_config(sd, source)
    r = KeyReader(sd, source, ignore=SKIP)
    out = _Out()
    _audio(r, out, cfg, source)
    _text(r, out, cfg)
    for which, din in (("audio", cfg.audio_width), ("text", cfg.text_width)):
        out.linear(r, f"{which}_projection/fc1", f"{which}_projection.0", din, cfg.joint_dim)
        out.linear(r, f"{which}_projection/fc2", f"{which}_projection.2", cfg.joint_dim, cfg.joint_dim)
    r.finish()
    return cfg, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.done().items()}  # type: ignore[arg-type]


def read_tokenizer(folder: str | os.PathLike, cfg: ClapConfig) -> dict[str, str]:
    """The tokenizer files of `folder` (vocab.json, merges.txt) as metadata strings, checked to parse and
    to fit the model's vocabulary."""
    folder = os.fspath(folder)
    vocab, merges = (read_text(os.path.join(folder, n)) for n in ("vocab.json", "merges.txt"))
    tok = RobertaBPE.from_strings(vocab, merges, folder)
    top = max(tok.vocab.values())
    if top >= cfg.vocab_size or tok.pad != cfg.pad_id:
        raise ImgenError(f"{folder}: tokenizer ids up to {top} (pad {tok.pad}) do not fit the model's vocabulary "
                         f"of {cfg.vocab_size} (pad {cfg.pad_id}): not roberta-base's tokenizer?")
    return {VOCAB_META: vocab, MERGES_META: merges}


def convert_clap(src: str | os.PathLike, tokenizer: str | os.PathLike, out: str | os.PathLike) -> ClapConfig:
    """Convert a laion_clap checkpoint (.pt / .safetensors) and roberta-base's tokenizer folder to our file."""
    sd, _ = load_torch_checkpoint(src)
    cfg, flat = clap_from_torch(sd, os.fspath(src))
    save_net(out, KIND, cfg, flat, extra=read_tokenizer(tokenizer, cfg))
    return cfg


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="laion_clap checkpoint, e.g. music_audioset_epoch_15_esc_90.14.pt")
    p.add_argument("tokenizer", help="folder with roberta-base's vocab.json and merges.txt")
    p.add_argument("out", help="output .safetensors")
    a = p.parse_args(argv)
    cfg = convert_clap(a.src, a.tokenizer, a.out)
    print(f"{a.out}: CLAP HTSAT {cfg.embed_dim}-{list(cfg.depths)} + RoBERTa {cfg.text_layers}x{cfg.text_width}, "
          f"joint {cfg.joint_dim}")


if __name__ == "__main__":
    try:
        main()
    except ImgenError as e:
        raise SystemExit(f"error: {e}")
