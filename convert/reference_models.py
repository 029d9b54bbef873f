"""Reference material built on the fly, for tests, benchmarks and the demo (never at run time).

- `train_tiny_spiece(path)`: a tiny T5-style sentencepiece model trained from a fixed corpus.
"""

from __future__ import annotations

import io
import os

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
