"""Reference material built on the fly, for tests, benchmarks and the demo (never at run time).

- PyTorch reference models (transformers' MusicGen, EnCodec, T5) built from configs, every
  parameter then set to seeded random values (LayerNorm scales near 1) so that each path
  contributes to the output. Nothing is downloaded.
- `train_tiny_spiece(path)`: a tiny T5-style sentencepiece model trained from a fixed corpus.
- laion_clap (1.1.7): `clap_model(seed)`, its non-fusion HTSAT-base + roberta-base CLAP with random
  weights, imported without the package __init__s (which pull in torchvision, webdataset, wget);
  `laion_clap_audio_embedding(model, clips)`, what `CLAP_Module.get_audio_embedding_from_data`
  computes; `write_clap_tokenizer(folder)`, a small roberta-style vocab.json / merges.txt.

torch and transformers are imported here: this module belongs to the conversion side.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import importlib
import importlib.util
import io
import json
import os
import sys
import types

import numpy as np
import torch

# A small music-instruction corpus for the tiny sentencepiece model (deterministic: no randomness).
_SPM_INSTRUMENTS = (
    "drums", "bass", "piano", "guitar", "strings", "synth", "vocals", "organ", "brass", "flute",
    "violin", "cello", "saxophone", "trumpet", "percussion", "pad", "choir", "harp",
)
_SPM_GENRES = (
    "rock", "jazz", "pop", "funk", "ambient", "electronic", "classical", "hip hop", "lo-fi", "techno",
    "reggae", "blues", "disco", "café jazz", "bossa nova", "k-pop",
)
_SPM_MOODS = ("calm", "energetic", "dark", "happy", "sad", "dreamy", "upbeat", "mellow", "epic")
_SPM_TEMPLATES = (
    "Music piece. Instruct: Add {i}.",
    "Music piece. Instruct: Remove {i}.",
    "Music piece. Instruct: Only {i}.",
    "Instruct: No {i}.",
    "A {m} {g} track with {i} and {j}.",
    "{g} song, {m} mood, {n} bpm, featuring {i}.",
    "Add {i} to the {g} mix!",
    "Only {i}, please; keep it {m}.",
    "{m} {g} with a {i} solo (live recording)",
)


def _spm_corpus() -> list[str]:
    lines = []
    n = 0
    for t, template in enumerate(_SPM_TEMPLATES):
        for k in range(40):
            i = _SPM_INSTRUMENTS[(k + t) % len(_SPM_INSTRUMENTS)]
            j = _SPM_INSTRUMENTS[(3 * k + 2 * t + 1) % len(_SPM_INSTRUMENTS)]
            g = _SPM_GENRES[(5 * k + t) % len(_SPM_GENRES)]
            m = _SPM_MOODS[(7 * k + 3 * t) % len(_SPM_MOODS)]
            lines.append(template.format(i=i, j=j, g=g, m=m, n=60 + (13 * n) % 120))
            n += 1
    lines += ["Bëyoncé-style R&B — smooth vocals.", "日本の音楽: ピアノ と ドラム", "Ünïcödé tëst: naïve façade, Straße."]
    return lines



def train_tiny_spiece(path: str | os.PathLike) -> str:
    """Write a tiny T5-style sentencepiece unigram model (`spiece.model`) to `path`; returns the path.

    Like T5's: pad=0, eos=1, unk=2, no bos, nmt_nfkc normalisation. 150 pieces; with T5's 100
    sentinels the tokenizer has 250 ids, so pair it with a T5 whose vocab_size >= 250 (e.g.
    `tiny_t5_config(vocab=256)`): `load_t5` refuses a tokenizer larger than the embedding.
    Trained single-threaded from a fixed in-memory corpus: byte-identical on every run.
    """
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_spm_corpus()), model_writer=buf, model_type="unigram", vocab_size=150,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, num_threads=1,
        normalization_rule_name="nmt_nfkc", hard_vocab_limit=False, minloglevel=2,
    )
    path = os.fspath(path)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


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


def tiny_t5_config(
    d_model: int = 24, vocab: int = 256, feed_forward_proj: str = "relu", num_buckets: int = 8, max_distance: int = 16,
    num_layers: int = 2,
):
    """A tiny T5 (3 heads of 8); `feed_forward_proj` "relu" is t5-base style, "gated-gelu" t5 v1.1 / flan-t5.

    vocab 256 >= the 250 ids of the `spm_model` fixture's tokenizer, so the two can share a snapshot.
    """
    from transformers import T5Config

    return T5Config(
        vocab_size=vocab, d_model=d_model, d_kv=8, d_ff=48, num_layers=num_layers, num_heads=3,
        relative_attention_num_buckets=num_buckets, relative_attention_max_distance=max_distance,
        feed_forward_proj=feed_forward_proj, dropout_rate=0.0,
    )


def t5_base_config():
    """t5-base shapes (the text encoder of every MusicGen size): 12 layers, d_model 768, 12 heads of 64."""
    from transformers import T5Config

    return T5Config(
        vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="relu",
        layer_norm_epsilon=1e-6, dropout_rate=0.0,
    )


def musicgen_model(
    dim: int = 32, layers: int = 2, heads: int = 4, card: int = 16, codebooks: int = 4, audio_channels: int = 1,
    text_config=None, audio_config=None, seed: int = 0, fitted_codec: bool = False,
):
    """A MusicgenForConditionalGeneration with random weights (tiny by default).

    Stereo (musicgen-stereo layout): codebooks=8, audio_channels=2 over the mono EnCodec.
    fitted_codec: the audio encoder's weights come from `encodec_model` (codebooks fitted to its
    residuals), so decoded audio depends on the codes; otherwise its codebooks stay zero (init)."""
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
    model = randomize_(MusicgenForConditionalGeneration(config), seed)
    if fitted_codec:
        model.audio_encoder.load_state_dict(encodec_model(model.config.audio_encoder, seed=seed).state_dict())
    return model


def musicgen_small_model(seed: int = 0):
    """musicgen-small shapes: decoder 1024 x 24 (16 heads), t5-base text encoder, EnCodec 32 kHz."""
    t5 = t5_base_config()
    codec = encodec_32k_config()
    return musicgen_model(dim=1024, layers=24, heads=16, card=2048, text_config=t5, audio_config=codec, seed=seed)


def encodec_32k_config():
    """MusicGen's EnCodec 32 kHz (facebook/encodec_32khz): mono, ratios 8,5,4,4 (hop 640), 64 filters,
    latent 128, 2 LSTM layers, 4 codebooks x 2048 (2.2 kbps), non-causal, reflect padding."""
    from transformers import EncodecConfig

    return EncodecConfig(
        sampling_rate=32000, audio_channels=1, num_filters=64, hidden_size=128, upsampling_ratios=[8, 5, 4, 4],
        codebook_size=2048, target_bandwidths=[2.2], num_lstm_layers=2, normalize=False, use_causal_conv=False,
        pad_mode="reflect", norm_type="weight_norm", use_conv_shortcut=False, compress=2, kernel_size=7,
        last_kernel_size=7, residual_kernel_size=3, num_residual_layers=1,
    )


def encodec_model(config, seed: int = 0, fit_seconds: float = 0.5):
    """A transformers EncodecModel with random weights that keep every path active.

    Weight-norm gains ~ 1 + N(0, 0.25^2) (so each conv keeps its input's scale instead of shrinking
    it 20x per layer), directions and biases random, LSTM weights N(0, 1/W). Codebooks are buffers
    (zeros after init): each is drawn from a Gaussian with the per-dimension mean and std of the RVQ
    residual at its stage, measured on `fit_seconds` of seeded noise, so codes spread over the codebook.
    """
    from transformers import EncodecModel

    torch.manual_seed(seed)
    model = EncodecModel(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith(("weight_g", "original0")):
                p.copy_(1.0 + 0.25 * noise)
            elif ".lstm." in name and "weight" in name:
                p.copy_(noise / p.shape[1] ** 0.5)
            else:
                p.copy_(0.05 * noise)
        n = max(config.hop_length, int(fit_seconds * config.sampling_rate))
        wav = 0.3 * torch.randn(1, config.audio_channels, n, generator=g)
        model.eval()
        r = model.encoder(wav).permute(0, 2, 1).reshape(-1, config.hidden_size)
        for layer in model.quantizer.layers:
            book = layer.codebook
            e = r.mean(0) + r.std(0) * torch.randn(book.embed.shape, generator=g)
            book.embed.copy_(e)
            book.embed_avg.copy_(e)
            r = r - e[book.quantize(r)]
    return model.eval()


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------ laion_clap (CLAP)

# roberta-base's config (what laion_clap downloads with RobertaModel.from_pretrained("roberta-base"))
ROBERTA_BASE = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                    max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
                    eos_token_id=2, hidden_act="gelu")
# laion_clap's model_configs/HTSAT-base.json audio_cfg
HTSAT_BASE_AUDIO = dict(audio_length=1024, clip_samples=480000, mel_bins=64, sample_rate=48000, window_size=1024, hop_size=480,
                        fmin=50, fmax=14000, class_num=527, model_type="HTSAT", model_name="base")


@contextlib.contextmanager
def _stub_modules(names):
    """Empty stand-ins for modules laion_clap imports at the top but never uses on our path (torchvision's
    FrozenBatchNorm2d, h5py), present only while it is imported."""
    saved = {n: sys.modules.get(n) for n in names}
    for n in names:
        if n not in sys.modules or saved[n] is None:
            mod = types.ModuleType(n)
            mod.FrozenBatchNorm2d = None
            sys.modules[n] = mod
    try:
        yield
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def laion_clap_root() -> str:
    """The folder of the installed laion_clap package (found without importing it)."""
    pkg = sys.modules.get("laion_clap")
    if pkg is not None and getattr(pkg, "__path__", None):
        return list(pkg.__path__)[0]
    spec = importlib.util.find_spec("laion_clap")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("laion_clap is not installed (pip install --no-deps laion-clap==1.1.7)")
    return spec.submodule_search_locations[0]


def laion_clap_model_module():
    """laion_clap.clap_module.model, imported without the package __init__s (which pull in torchvision,
    webdataset, wget); torchvision / h5py are stubbed during the import where they are absent."""
    name = "laion_clap.clap_module.model"
    if name in sys.modules:
        return sys.modules[name]
    root = laion_clap_root()
    for pkg, path in (("laion_clap", root), ("laion_clap.clap_module", f"{root}/clap_module")):
        if pkg not in sys.modules:
            m = types.ModuleType(pkg)
            m.__path__ = [path]
            sys.modules[pkg] = m
    # what model.py imports from transformers / torchlibrosa, imported before the stubs exist (transformers
    # probes for torchvision with find_spec, which a stub without a spec would break)
    from transformers import BartModel, BertModel, RobertaModel  # noqa: F401
    from transformers.tokenization_utils_base import BatchEncoding  # noqa: F401
    import torchlibrosa.stft  # noqa: F401

    stubs = [] if importlib.util.find_spec("h5py") else ["h5py"]
    try:
        has_tv = importlib.util.find_spec("torchvision") is not None
    except ValueError:
        has_tv = False
    stubs += [] if has_tv else ["torchvision", "torchvision.ops", "torchvision.ops.misc"]
    with _stub_modules(stubs):
        return importlib.import_module(name)


_DATA_FUNCTIONS: dict = {}


def laion_clap_data_functions() -> dict:
    """laion_clap's `get_audio_features`, `int16_to_float32`, `float32_to_int16` (training/data.py), compiled
    from its source (the module itself imports webdataset, torchvision and wget); cached."""
    if not _DATA_FUNCTIONS:
        import torch.nn.functional as F

        path = laion_clap_root() + "/training/data.py"
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        wanted = {"get_audio_features", "int16_to_float32", "float32_to_int16"}
        body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
        if {n.name for n in body} != wanted:
            raise ImportError(f"{path}: expected the functions {sorted(wanted)}, found {sorted(n.name for n in body)}")
        ns = {"np": np, "torch": torch, "F": F, "suppress": contextlib.suppress}
        exec(compile(ast.Module(body=body, type_ignores=[]), path, "exec"), ns)
        _DATA_FUNCTIONS.update({k: ns[k] for k in wanted})
    return _DATA_FUNCTIONS


def laion_clap_audio_input(wav: np.ndarray, audio_cfg: dict = HTSAT_BASE_AUDIO) -> dict:
    """What CLAP_Module.get_audio_embedding_from_data(use_tensor=False) hands the model for one clip
    (wav [T] float at 48 kHz): int16 quantisation, then get_audio_features (rand_trunc, repeatpad, 10 s)."""
    fns = laion_clap_data_functions()
    wav = torch.from_numpy(fns["int16_to_float32"](fns["float32_to_int16"](wav))).float()
    return fns["get_audio_features"]({}, wav, 480000, data_truncating="rand_trunc", data_filling="repeatpad",
                                     audio_cfg=audio_cfg)


def laion_clap_audio_embedding(model: torch.nn.Module, clips) -> np.ndarray:
    """CLAP_Module.get_audio_embedding_from_data(clips, use_tensor=False) of a non-fusion `model` (laion_clap's
    CLAP, eval mode): clips [N, T] mono float at 48 kHz -> L2-normalised [N, joint_dim] float32."""
    with torch.no_grad():
        return model.get_audio_embedding([laion_clap_audio_input(w) for w in clips]).numpy()


def randomize_clap_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights of moderate scale in every float parameter / batch-norm statistic of a laion_clap
    CLAP; the frontend (STFT kernels, mel filters) and the Swin buffers (attn_mask) stay as built."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point() or "_extractor." in name or name.endswith("attn_mask"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dim() > 1:
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / t[0].numel()) ** 0.5)
            elif "norm" in name.lower() and name.endswith("weight"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.4 + 0.8)
            else:
                t.copy_(torch.rand(t.shape, generator=g) * 0.2 - 0.1)
    return model


def clap_model(seed: int = 0) -> torch.nn.Module:
    """laion_clap's CLAP as create_model("HTSAT-base", "roberta", enable_fusion=False) builds it (the model
    of CLAP_Module(amodel="HTSAT-base") and of music_audioset_epoch_15_esc_90.14.pt), with the RoBERTa made
    from roberta-base's config (no download), seeded random weights (`randomize_clap_`), eval mode."""
    from transformers import RobertaConfig, RobertaModel

    mod = laion_clap_model_module()

    class LocalRoberta:
        @staticmethod
        def from_pretrained(name):
            if name != "roberta-base":
                raise ValueError(f"clap_model: expected roberta-base, laion_clap asked for {name!r}")
            return RobertaModel(RobertaConfig(**ROBERTA_BASE), add_pooling_layer=True)

    text_cfg = dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12, model_type="roberta")
    saved = mod.RobertaModel
    mod.RobertaModel = LocalRoberta
    try:
        model = mod.CLAP(embed_dim=1024, audio_cfg=HTSAT_BASE_AUDIO, text_cfg=text_cfg, enable_fusion=False, fusion_type="None")
    finally:
        mod.RobertaModel = saved
    return randomize_clap_(model, seed).eval()


def save_clap_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> str:
    """Save `model` as the published laion_clap checkpoints are laid out: {"epoch", "state_dict":
    {"module.<key>"}}, with the text position_ids buffer that transformers < 4.31 saved. Returns the path."""
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    sd["module.text_branch.embeddings.position_ids"] = torch.arange(ROBERTA_BASE["max_position_embeddings"])[None]
    path = os.fspath(path)
    torch.save({"epoch": 15, "state_dict": sd}, path)
    return path


def write_clap_tokenizer(folder: str | os.PathLike) -> str:
    """Write a small roberta-style tokenizer (vocab.json, merges.txt) to `folder`; returns the folder.

    <s> <pad> </s> <unk> (ids 0-3, as roberta-base), the 256 byte symbols, then 120 merges learnt greedily
    (most frequent pair) on a few fixed sentences, and <mask>: ids fit roberta-base's vocabulary.
    Deterministic: byte-identical on every run."""
    from imgen_jax.eval.nets.bpe import byte_alphabet, pre_tokenize

    corpus = ("The quick brown fox's drums and bass, electric guitar music. Don't stop! It's 120 bpm; "
              "we'll see... café naïve 日本語 piano solo with strings and the vocals ") * 3
    alpha = byte_alphabet()
    words = collections.Counter("".join(alpha[b] for b in p.encode()) for p in pre_tokenize(corpus))
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for ch in alpha.values():
        vocab.setdefault(ch, len(vocab))
    segs, merges = {w: list(w) for w in words}, []
    for _ in range(120):
        pairs: collections.Counter = collections.Counter()
        for w, c in words.items():
            for pair in zip(segs[w][:-1], segs[w][1:]):
                pairs[pair] += c
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append(f"{a} {b}")
        vocab.setdefault(a + b, len(vocab))
        for w, s in segs.items():
            out, i = [], 0
            while i < len(s):
                if i < len(s) - 1 and (s[i], s[i + 1]) == (a, b):
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            segs[w] = out
    vocab["<mask>"] = len(vocab)
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(vocab))
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder
