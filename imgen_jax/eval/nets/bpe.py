"""RoBERTa's byte-level BPE tokenizer (GPT-2's scheme) in pure Python: CLAP's text input.

Gives the ids of transformers' `RobertaTokenizer` built from the same `vocab.json` / `merges.txt`
(`add_prefix_space=False`, the roberta-base default), as laion_clap calls it:
`tokenizer(texts, padding="max_length", truncation=True, max_length=77)`.

    pre-tokenize   GPT-2's pattern  's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
                   written out as a scanner (`pre_tokenize`): runs of letters / digits / other symbols,
                   each taking one preceding ASCII space; a whitespace run before a word leaves its last
                   character to that word (or to itself when it is not a plain space)
    bytes          each piece's UTF-8 bytes, each byte shown as one printable character (`byte_alphabet`)
    merge          repeatedly join the adjacent pair of lowest rank in merges.txt (all of its
                   occurrences, left to right) until no pair has a rank
    ids            vocab.json; a piece the vocabulary lacks is `<unk>`
    wrap           `<s>` ids `</s>`, the ids truncated to max_length - 2 first; padded with `<pad>`
                   (attention mask 0) to max_length

Letters and digits are Unicode categories L* / N* of Python's `unicodedata` (the `regex` module's
tables may be of a newer Unicode version: characters assigned since differ). Special-token strings
in the text ("<mask>", "</s>") are read as plain text, where transformers would map them to their ids.
"""

from __future__ import annotations

import functools
import json
import os
import unicodedata

import numpy as np

from imgen_jax.errors import ImgenError

CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
BOS, PAD, EOS, UNK = "<s>", "<pad>", "</s>", "<unk>"


@functools.lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """GPT-2's map byte -> printable character: printable Latin-1 bytes stand for themselves, the
    other 68 bytes (controls, space, soft hyphen ...) take characters 256, 257, ... in byte order."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def _kind(ch: str) -> str:
    """'s' whitespace (as the regex module's \\s: str.isspace but not \\x1c-\\x1f), 'L', 'N' or 'o' (other)."""
    if ch.isspace() and not "\x1c" <= ch <= "\x1f":
        return "s"
    cat = unicodedata.category(ch)[0]
    return cat if cat in "LN" else "o"


def pre_tokenize(text: str) -> list[str]:
    """The pieces GPT-2's pre-tokenization pattern splits `text` into (see the module docstring)."""
    kinds = [_kind(c) for c in text]
    n, i, out = len(text), 0, []
    while i < n:
        k = kinds[i]
        if k == "s":
            j = i
            while j < n and kinds[j] == "s":
                j += 1
            if j == n:  # trailing whitespace: one piece
                out.append(text[i:j])
                i = j
                continue
            if j - i > 1:  # \s+(?!\S): all but the last, which goes with the next piece (or alone)
                out.append(text[i:j - 1])
                i = j - 1
            if text[i] != " ":  # only a plain space joins the next piece
                out.append(text[i])
                i += 1
                continue
            start, i = i, i + 1
        else:
            start = i
            if text[i] == "'":
                c = next((c for c in CONTRACTIONS if text.startswith(c, i)), None)
                if c is not None:
                    out.append(c)
                    i += len(c)
                    continue
        k = kinds[i]
        while i < n and kinds[i] == k:
            i += 1
        out.append(text[start:i])
    return out


class RobertaBPE:
    """RoBERTa's tokenizer from a vocabulary {token: id} and the ranked merges [(a, b), ...].

    `batch(texts, 77)` -> (ids [B, 77] int32, attention_mask [B, 77] int32), as laion_clap's
    `CLAP_Module.tokenizer`; `encode(text)` -> the ids of one text without `<s>` / `</s>`.
    """

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], source: str = "tokenizer"):
        missing = [t for t in (BOS, PAD, EOS, UNK) if t not in vocab]
        if missing:
            raise ImgenError(f"{source}: vocabulary lacks the special tokens {missing}")
        self.vocab = vocab
        self.ranks = {tuple(m): r for r, m in enumerate(merges)}
        self.bos, self.pad, self.eos, self.unk = (vocab[t] for t in (BOS, PAD, EOS, UNK))
        self.source = source
        self._bytes = byte_alphabet()
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_files(cls, vocab_json: str | os.PathLike, merges_txt: str | os.PathLike) -> "RobertaBPE":
        """From Hugging Face's `vocab.json` and `merges.txt` (e.g. roberta-base's)."""
        vocab_text, merges_text = (read_text(p) for p in (vocab_json, merges_txt))
        return cls.from_strings(vocab_text, merges_text, f"{os.fspath(vocab_json)} + {os.path.basename(merges_txt)}")

    @classmethod
    def from_strings(cls, vocab_json: str, merges_txt: str, source: str = "tokenizer") -> "RobertaBPE":
        """From the text of `vocab.json` and of `merges.txt` (what a converted CLAP file stores)."""
        try:
            vocab = json.loads(vocab_json)
        except json.JSONDecodeError as e:
            raise ImgenError(f"{source}: vocab.json is not JSON ({e})") from None
        if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
            raise ImgenError(f"{source}: vocab.json must map token strings to integer ids")
        merges = []
        for n, line in enumerate(merges_txt.splitlines(), start=1):
            if not line.strip() or (n == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ImgenError(f"{source}: merges.txt line {n} is not two symbols separated by a space: {line[:40]!r}")
            merges.append((parts[0], parts[1]))
        return cls(vocab, merges, source)

    def _bpe(self, piece: str) -> list[int]:
        """The ids of one pre-tokenized piece."""
        hit = self._cache.get(piece)
        if hit is not None:
            return hit
        word = [self._bytes[b] for b in piece.encode("utf-8")]
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word[:-1], word[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids = [self.vocab.get(t, self.unk) for t in word]
        if len(self._cache) < 100_000:
            self._cache[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """The BPE ids of `text` (no special tokens, untruncated)."""
        if not isinstance(text, str):
            raise ImgenError(f"{self.source}: expected a string to tokenize, got {type(text).__name__}")
        return [i for piece in pre_tokenize(text) for i in self._bpe(piece)]

    def batch(self, texts: list[str], max_length: int = 77) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), both [len(texts), max_length] int32: `<s>` ids[:max_length - 2]
        `</s>`, then `<pad>` with mask 0."""
        ids = np.full((len(texts), max_length), self.pad, np.int32)
        mask = np.zeros((len(texts), max_length), np.int32)
        for row, text in enumerate(texts):
            toks = [self.bos] + self.encode(text)[: max_length - 2] + [self.eos]
            ids[row, : len(toks)] = toks
            mask[row, : len(toks)] = 1
        return ids, mask


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file's content; a missing or unreadable file is one ImgenError."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise ImgenError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ImgenError(f"{path}: unreadable ({e})") from None
