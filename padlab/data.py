"""The shipped corpora and tokenizer: texts, labels, token ids and lengths.

Two real, openly licensed English corpora ship in ``data/`` (see ``data/README.md``):

* ``wordnet``: 117,659 WordNet 3.0 glosses, labelled by lexicographer file (45 classes);
  short texts.
* ``fortunes``: 14,176 fortunes from Debian's ``fortunes`` package, labelled by file
  (39 classes); a heavy tail of long texts.

One instruction set, for fine-tuning a decoder: ``wordnet-define`` (:func:`load_instructions`),
117,659 real prompt/response pairs "define: <lemma> (<part of speech>)" -> the synset's gloss.

Every length in the series is a real token count from ``data/tokenizer.json``, a WordPiece
vocabulary of 8,192 entries trained on both corpora. Counts include ``[CLS]`` and ``[SEP]``.
"""
from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._validate import check_choice, check_int, fail

CORPORA = ("wordnet", "fortunes")
INSTRUCTION_SETS = ("wordnet-define",)
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
# The tokenizer has no end-of-text token of its own: [SEP] closes every response, so a decoder
# learns to emit it when an answer is complete (and generation stops there).
END_OF_RESPONSE_ID = SEP_ID
IGNORE_INDEX = -100


def data_dir() -> Path:
    """The folder holding the shipped data (``$PADLAB_DATA`` overrides it)."""
    env = os.environ.get("PADLAB_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "data"


class _FlatSequences:
    """What :class:`Corpus` and :class:`InstructionSet` share: sequences stored flat, sequence
    ``i`` is ``token_ids[offsets[i]:offsets[i+1]]``."""

    token_ids: np.ndarray
    offsets: np.ndarray

    def ids(self, i: int) -> np.ndarray:
        """Token ids of sequence ``i`` (a read-only view; a negative ``i`` counts from the end).
        An :class:`InstructionSet` example's ids are its prompt, then its response."""
        n = len(self.offsets) - 1
        i = check_int("i", i)
        if not -n <= i < n:
            raise fail("i", i, f"be in [-{n}, {n})")
        i %= n
        return self.token_ids[self.offsets[i]:self.offsets[i + 1]]


@dataclass(frozen=True)
class Corpus(_FlatSequences):
    """One tokenised corpus, stored flat: ``token_ids[offsets[i]:offsets[i+1]]`` is text ``i``.

    A ``Corpus`` is also a map-style dataset: ``corpus[i]`` is
    ``{"input_ids": list[int], "labels": int}``, ready for :mod:`padlab.padding` collators.
    """

    name: str
    texts: list[str]
    labels: np.ndarray          # int64, one class index per text
    label_names: list[str]
    token_ids: np.ndarray       # int32, every text's ids concatenated
    offsets: np.ndarray         # int64, len(texts) + 1
    lengths: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lengths", np.diff(self.offsets))
        for arr in (self.labels, self.token_ids, self.offsets, self.lengths):
            arr.setflags(write=False)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.ids(i).tolist(), "labels": int(self.labels[i])}

    def subset(self, n: int, seed: int = 0) -> "Corpus":
        """A seeded random subset of ``n`` texts, in a fixed order."""
        n = check_int("n", n, min_value=1)
        if n > len(self):
            raise fail("n", n, f"be at most the corpus size {len(self)}")
        idx = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return self.select(idx)

    def select(self, indices: np.ndarray) -> "Corpus":
        """The texts at ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        lens = self.lengths[idx]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        # Gather every selected token in one vectorised step.
        starts = np.repeat(self.offsets[idx] - offsets[:-1], lens)
        token_ids = self.token_ids[starts + np.arange(offsets[-1])]
        return Corpus(self.name, [self.texts[i] for i in idx], self.labels[idx].copy(),
                      list(self.label_names), token_ids, offsets)

    def percentiles(self, qs: tuple[float, ...] = (50, 90, 99, 100)) -> dict[str, float]:
        """Token-length percentiles, e.g. ``{"p50": 11.0, ...}``."""
        return {f"p{q:g}": float(np.percentile(self.lengths, q)) for q in qs}


def _read_tsv_gz(path: Path, columns: tuple[str, str] = ("text", "label")) -> tuple[list[str], list[str]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        if header != list(columns):
            raise ValueError(f"{path.name}: unexpected header {header!r}")
        texts, labels = [], []
        for text, label in reader:
            texts.append(text.replace("\\n", "\n").replace("\\t", "\t").replace("\\\\", "\\"))
            labels.append(label)
    return texts, labels


@functools.lru_cache(maxsize=1)
def load_tokenizer():
    """The shipped WordPiece tokenizer (a ``tokenizers.Tokenizer``)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(data_dir() / "tokenizer.json"))


def vocab_size() -> int:
    """Number of entries in the shipped vocabulary."""
    return load_tokenizer().get_vocab_size()


def _cache_path(name: str, files: tuple[str, ...] | None = None) -> Path:
    src = data_dir()
    blob = b"".join((src / f).read_bytes() for f in (files or (f"{name}.tsv.gz",)))
    key = hashlib.sha256(blob + (src / "tokenizer.json").read_bytes()).hexdigest()[:16]
    root = Path(os.environ.get("PADLAB_CACHE", Path.home() / ".cache" / "padlab"))
    return root / f"{name}-{key}.npz"


def _tokenize(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    enc = load_tokenizer().encode_batch(texts)
    lens = np.fromiter((len(e.ids) for e in enc), dtype=np.int64, count=len(enc))
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    token_ids = np.fromiter((i for e in enc for i in e.ids), dtype=np.int32, count=int(offsets[-1]))
    return token_ids, offsets


@functools.lru_cache(maxsize=None)
def load_corpus(name: str) -> Corpus:
    """Load a shipped corpus by name (``"wordnet"`` or ``"fortunes"``), tokenised.

    The first call tokenises (a few seconds) and caches the ids on disk under
    ``~/.cache/padlab`` (``$PADLAB_CACHE`` overrides); later calls in the same process
    return the same object.
    """
    check_choice("corpus", name, CORPORA)
    texts, raw_labels = _read_tsv_gz(data_dir() / f"{name}.tsv.gz")
    label_names = sorted(set(raw_labels))
    index = {n: i for i, n in enumerate(label_names)}
    labels = np.array([index[x] for x in raw_labels], dtype=np.int64)
    cache = _cache_path(name)
    token_ids = offsets = None
    if cache.exists():
        try:
            with np.load(cache) as z:
                token_ids, offsets = z["token_ids"], z["offsets"]
        except (OSError, ValueError, KeyError):
            token_ids = None
    if token_ids is None or len(offsets) != len(texts) + 1:
        token_ids, offsets = _tokenize(texts)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, token_ids=token_ids, offsets=offsets)
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only home still works, just without the disk cache
    return Corpus(name, texts, labels, label_names, np.asarray(token_ids, dtype=np.int32),
                  np.asarray(offsets, dtype=np.int64))


def encode(texts: list[str]) -> list[list[int]]:
    """Token ids (with ``[CLS]``/``[SEP]``) for arbitrary texts."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise fail("texts", texts, "be a list of strings")
    return [e.ids for e in load_tokenizer().encode_batch(list(texts))]


@dataclass(frozen=True)
class InstructionSet(_FlatSequences):
    """Prompt/response pairs, tokenised and stored flat like :class:`Corpus`.

    Example ``i`` is ``token_ids[offsets[i]:offsets[i+1]]``: ``[CLS] prompt [SEP]`` (its first
    ``prompt_lengths[i]`` tokens), then ``response [SEP]`` (``response_lengths[i]`` tokens; the
    closing ``[SEP]`` is :data:`END_OF_RESPONSE_ID`). ``instructions[i]`` is
    ``{"input_ids": list[int], "labels": list[int]}`` with ``labels`` equal to ``input_ids`` on
    the response and :data:`IGNORE_INDEX` on the prompt: the completion-only target.
    """

    name: str
    prompts: list[str]
    responses: list[str]
    token_ids: np.ndarray        # int32, every example's ids concatenated
    offsets: np.ndarray          # int64, len + 1
    prompt_lengths: np.ndarray   # int64, tokens of "[CLS] prompt [SEP]"
    lengths: np.ndarray = field(init=False)
    response_lengths: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lengths", np.diff(self.offsets))
        object.__setattr__(self, "response_lengths", self.lengths - self.prompt_lengths)
        for arr in (self.token_ids, self.offsets, self.prompt_lengths, self.lengths, self.response_lengths):
            arr.setflags(write=False)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ids = self.ids(i)
        labels = ids.astype(np.int64)
        labels[:self.prompt_lengths[i % len(self)]] = IGNORE_INDEX
        return {"input_ids": ids.tolist(), "labels": labels.tolist()}


def _wordnet_define_pairs() -> tuple[list[str], list[str]]:
    glosses, _ = _read_tsv_gz(data_dir() / "wordnet.tsv.gz")
    lemmas, pos = _read_tsv_gz(data_dir() / "wordnet_lemmas.tsv.gz", ("lemmas", "pos"))
    if len(lemmas) != len(glosses):
        raise ValueError(f"wordnet_lemmas.tsv.gz has {len(lemmas)} rows, wordnet.tsv.gz {len(glosses)}")
    prompts = [f"define: {words.split('|', 1)[0]} ({p})" for words, p in zip(lemmas, pos)]
    return prompts, glosses


def load_instructions(name: str = "wordnet-define") -> InstructionSet:
    """Load a shipped instruction set by name (``"wordnet-define"``), tokenised and cached.

    ``wordnet-define``: for every WordNet synset, the prompt ``"define: <first lemma> (<part of
    speech>)"`` and, as the response, its gloss (the ``wordnet`` corpus text, row for row).
    Pairs are tokenised with the shipped tokenizer's pair template, ``[CLS] prompt [SEP]
    response [SEP]``, so every length is a real token count.
    """
    return _load_instructions(check_choice("name", name, INSTRUCTION_SETS))


@functools.lru_cache(maxsize=None)
def _load_instructions(name: str) -> InstructionSet:
    prompts, responses = _wordnet_define_pairs()
    cache = _cache_path(name, ("wordnet.tsv.gz", "wordnet_lemmas.tsv.gz"))
    arrays = None
    if cache.exists():
        try:
            with np.load(cache) as z:
                arrays = z["token_ids"], z["offsets"], z["prompt_lengths"]
        except (OSError, ValueError, KeyError):
            arrays = None
    if arrays is None or len(arrays[1]) != len(prompts) + 1:
        enc = load_tokenizer().encode_batch(list(zip(prompts, responses)))
        lens = np.fromiter((len(e.ids) for e in enc), dtype=np.int64, count=len(enc))
        # type id 1 marks the second segment: "response [SEP]".
        resp = np.fromiter((sum(e.type_ids) for e in enc), dtype=np.int64, count=len(enc))
        offsets = np.zeros(len(enc) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        token_ids = np.fromiter((i for e in enc for i in e.ids), dtype=np.int32, count=int(offsets[-1]))
        arrays = token_ids, offsets, lens - resp
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, token_ids=arrays[0], offsets=arrays[1], prompt_lengths=arrays[2])
            os.replace(tmp, cache)
        except OSError:
            pass
    token_ids, offsets, prompt_lengths = arrays
    return InstructionSet(name, prompts, responses, np.asarray(token_ids, dtype=np.int32),
                          np.asarray(offsets, dtype=np.int64), np.asarray(prompt_lengths, dtype=np.int64))
