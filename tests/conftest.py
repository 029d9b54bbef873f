"""Shared test set-up: float32 everywhere, deterministic torch, the repo importable."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

try:
    import torch  # noqa: E402

    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
except ImportError:  # pragma: no cover - torch is part of the test extra
    pass


import pytest  # noqa: E402

# A small music-instruction corpus for the sentencepiece fixture (deterministic: no randomness).
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


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory) -> str:
    """Path of a tiny T5-style sentencepiece unigram model (`spiece.model`) trained on the fly.

    Like T5's: pad=0, eos=1, unk=2, no bos, nmt_nfkc normalisation. 150 pieces; with T5's 100
    sentinels the tokenizer has 250 ids, so pair it with a T5 whose vocab_size >= 250 (e.g.
    `tiny_t5_config(vocab=256)`): `load_t5` refuses a tokenizer larger than the embedding.
    Trained single-threaded from a fixed in-memory corpus: byte-identical on every run.
    """
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_spm_corpus()), model_writer=buf, model_type="unigram", vocab_size=150,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, num_threads=1,
        normalization_rule_name="nmt_nfkc", hard_vocab_limit=False, minloglevel=2,
    )
    out = tmp_path_factory.mktemp("spm")
    (out / "spiece.model").write_bytes(buf.getvalue())
    return str(out / "spiece.model")
