"""Rebuild padlab's shipped corpora and tokenizer from Debian packages.

Usage (as root on Debian/Ubuntu)::

    apt-get install wordnet-base fortunes fortunes-min
    python data/build_data.py            # writes data/*.tsv.gz, tokenizer.json, MANIFEST.json

The output is byte-for-byte reproducible for the same package versions: gzip
headers carry no timestamp, rows are in a fixed order, and the tokenizer is
trained with a fixed vocabulary size on the rebuilt texts. ``MANIFEST.json``
records each file's SHA-256, which ``tests/test_data.py`` checks.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNE_DIR = Path("/usr/share/games/fortunes")
# Left out: ascii-art is pictures, not text; the other three hold offensive material.
FORTUNE_EXCLUDE = {"ascii-art", "ethnic", "men-women", "drugs"}
VOCAB_SIZE = 8192
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# WordNet's 45 lexicographer files, in lex_filenum order (lexnames(5WN)).
LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal",
    "noun.artifact", "noun.attribute", "noun.body", "noun.cognition",
    "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon",
    "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body",
    "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
]


def _package_version(name: str) -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name],
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ss_type in a synset line -> the part of speech a learner reads ('s' is a satellite adjective).
POS_NAMES = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
# Adjective markers after a word: (a) attributive, (p) predicative, (ip) immediately postnominal.
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")


def _wordnet_synsets() -> list[tuple[str, list[str], str, int]]:
    """(gloss, lemmas, part of speech, lex_filenum) for every synset with a gloss, in file order."""
    out = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (WORDNET_DIR / f"data.{pos}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):  # licence header lines
                continue
            head, _, gloss = line.partition(" | ")
            gloss = gloss.strip()
            if not gloss:
                continue
            fields = head.split()
            # offset lex_filenum ss_type w_cnt(hex) word lex_id [word lex_id ...] ...
            w_cnt = int(fields[3], 16)
            words = [_ADJ_MARKER.sub("", w).replace("_", " ") for w in fields[4:4 + 2 * w_cnt:2]]
            out.append((gloss, words, POS_NAMES[fields[2]], int(fields[1])))
    return out


def wordnet_rows() -> list[tuple[str, str]]:
    """(gloss, lexicographer file) for every synset of WordNet 3.0."""
    return [(gloss, LEXNAMES[lex]) for gloss, _, _, lex in _wordnet_synsets()]


def wordnet_lemma_rows() -> list[tuple[str, str]]:
    """(lemmas joined by '|', part of speech) for every synset, row for row with wordnet_rows()."""
    return [("|".join(words), pos) for _, words, pos, _ in _wordnet_synsets()]


_OVERSTRIKE = re.compile(r".\x08")


def _read_fortune_file(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def fortune_rows() -> list[tuple[str, str]]:
    """(fortune, file name) for every fortune of the kept files, duplicates dropped."""
    rows, seen = [], set()
    for path in sorted(FORTUNE_DIR.iterdir()):
        if "." in path.name or not path.is_file() or path.name in FORTUNE_EXCLUDE:
            continue
        for chunk in _read_fortune_file(path).split("\n%\n"):
            text = _OVERSTRIKE.sub("", chunk).replace("\r", "").strip("%\n ").rstrip()
            text = "\n".join(line.rstrip() for line in text.splitlines())
            if not text or text in seen:
                continue
            seen.add(text)
            rows.append((text, path.name))
    return rows


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def write_tsv_gz(path: Path, rows: list[tuple[str, str]], header: str = "text\tlabel") -> None:
    buf = io.StringIO()
    buf.write(header + "\n")
    for text, label in rows:
        buf.write(f"{_escape(text)}\t{label}\n")
    with open(path, "wb") as fh:
        # mtime=0 and no file name keep the archive byte-reproducible.
        with gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0, compresslevel=9) as gz:
            gz.write(buf.getvalue().encode("utf-8"))


def train_tokenizer(texts: list[str], path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                        min_frequency=2, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = SPECIAL_TOKENS.index("[CLS]"), SPECIAL_TOKENS.index("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    # The trainer's vocabulary is the same set every run, but ties are broken in hash-map
    # order, so ids move. Re-number it (special tokens first, then sorted) so that the file,
    # and every token id in the series, is reproducible.
    spec = json.loads(tok.to_str())
    rest = sorted(t for t in spec["model"]["vocab"] if t not in SPECIAL_TOKENS)
    spec["model"]["vocab"] = {t: i for i, t in enumerate(SPECIAL_TOKENS + rest)}
    ids = spec["model"]["vocab"]
    for entry in spec["added_tokens"]:
        entry["id"] = ids[entry["content"]]
    for name, special in spec["post_processor"]["special_tokens"].items():
        special["ids"] = [ids[name]]
    path.write_text(json.dumps(spec, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(out_dir: Path = HERE) -> None:
    corpora = {"wordnet": wordnet_rows(), "fortunes": fortune_rows()}
    manifest: dict = {"packages": {p: _package_version(p) for p in ("wordnet-base", "fortunes", "fortunes-min")},
                      "files": {}}
    for name, rows in corpora.items():
        path = out_dir / f"{name}.tsv.gz"
        write_tsv_gz(path, rows)
        print(f"{name}: {len(rows)} texts, {len({r[1] for r in rows})} labels -> {path.name}")
    # The synsets' lemmas, row for row with wordnet.tsv.gz: the prompts of the decoder chapter's
    # "define: <lemma> (<part of speech>)" -> gloss pairs. Not tokenizer training text, so the
    # tokenizer (and every length in the series) is the same with or without this file.
    lemmas = wordnet_lemma_rows()
    write_tsv_gz(out_dir / "wordnet_lemmas.tsv.gz", lemmas, header="lemmas\tpos")
    print(f"wordnet_lemmas: {len(lemmas)} synsets -> wordnet_lemmas.tsv.gz")
    all_texts = [t for rows in corpora.values() for t, _ in rows]
    train_tokenizer(all_texts, out_dir / "tokenizer.json")
    for fname in ("wordnet.tsv.gz", "fortunes.tsv.gz", "wordnet_lemmas.tsv.gz", "tokenizer.json"):
        manifest["files"][fname] = sha256(out_dir / fname)
    (out_dir / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print("wrote MANIFEST.json")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
