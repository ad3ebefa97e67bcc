"""Tiny CLIP and T5 tokenizers for the tiny checkpoints (`make-tiny`, tests).

The real tokenizers (49 408 CLIP BPE tokens, 32 100 T5 SentencePiece pieces) cannot be
downloaded here, and random tiny text encoders only need token ids that are stable and
in range. The tiny vocabularies are checked in as the files the real repositories ship
(`tokenizer_data/`: CLIP's vocab.json and merges.txt, T5's spiece.model), in the real
*formats* (byte-level BPE with ``</w>`` for CLIP, a Unigram vocabulary with ``extra_ids``
sentinels for T5) and knowing a few hundred common English words, so ordinary prompts
give one token per word (CLIP never produces an unknown token: every byte is in the
vocabulary). The tokenizers here are made from those files by transformers' own classes
and saved with stable bytes. Tiny text encoders use ``vocab_size`` at least
`CLIP_VOCAB_SIZE` / `T5_VOCAB_SIZE`.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

__all__ = [
    "CLIP_BOS_TOKEN",
    "CLIP_EOS_TOKEN",
    "CLIP_VOCAB_SIZE",
    "T5_EXTRA_IDS",
    "T5_VOCAB_SIZE",
    "clip_text_config",
    "save_clip_tokenizer",
    "save_t5_tokenizer",
    "special_token_ids",
    "write_clip_vocab",
    "write_t5_spiece",
]

_DATA = resources.files(__name__.rsplit(".", 1)[0]).joinpath("tokenizer_data")

# ---------------------------------------------------------------------------------
# CLIP: byte-level BPE, as openai/clip-vit-large-patch14 lays it out.

CLIP_BOS_TOKEN = "<|startoftext|>"
CLIP_EOS_TOKEN = "<|endoftext|>"
_CLIP_VOCAB: dict[str, int] = json.loads(_DATA.joinpath("clip/vocab.json").read_text("utf-8"))
_CLIP_MERGES = [tuple(line.split()) for line in
                _DATA.joinpath("clip/merges.txt").read_text("utf-8").splitlines()[1:]]
#: Size of the tiny CLIP vocabulary; a tiny CLIPTextConfig needs vocab_size >= this.
CLIP_VOCAB_SIZE: int = len(_CLIP_VOCAB)
CLIP_BOS_TOKEN_ID: int = _CLIP_VOCAB[CLIP_BOS_TOKEN]
CLIP_EOS_TOKEN_ID: int = _CLIP_VOCAB[CLIP_EOS_TOKEN]


def save_clip_tokenizer(directory: Path, *, model_max_length: int = 77) -> None:
    """Write a tiny CLIP tokenizer into `directory` (created if missing).

    Loads with ``transformers.CLIPTokenizer.from_pretrained(directory)`` (also through
    ``AutoTokenizer`` and the CLIP / SAM3 processors). ``<|endoftext|>`` serves as
    eos, pad and unk, as in openai/clip-vit-large-patch14.
    """
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer(vocab=dict(_CLIP_VOCAB), merges=list(_CLIP_MERGES),
                              model_max_length=model_max_length)
    _save(tokenizer, Path(directory))
    # Slow/legacy readers (transformers 4, open_clip-style code) want these two files.
    write_clip_vocab(directory)


def write_clip_vocab(directory: Path) -> None:
    """Only `vocab.json` and `merges.txt` of the tiny CLIP tokenizer: with a published
    tokenizer_config.json beside them they are a whole CLIP tokenizer, as CLIP-L's
    repositories ship it (no tokenizer.json)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        with resources.as_file(_DATA.joinpath("clip", name)) as source:
            shutil.copyfile(source, directory / name)


# ---------------------------------------------------------------------------------
# T5: a SentencePiece Unigram vocabulary, as google/t5-v1_1-xxl lays it out.

T5_EXTRA_IDS = 100


def _t5_pieces() -> list[tuple[str, float]]:
    """(piece, score) of the tiny spiece.model, ids in order: ``<pad>`` 0, ``</s>`` 1,
    ``<unk>`` 2, then the words and single characters (no sentinels)."""
    from sentencepiece import sentencepiece_model_pb2 as sp

    model = sp.ModelProto.FromString(_DATA.joinpath("t5/spiece.model").read_bytes())
    # Scores were written with 4 decimals; float32 in the file, rounded back here.
    return [(p.piece, round(p.score, 4)) for p in model.pieces]


#: Size of the tiny T5 vocabulary including the sentinels; tiny T5Config.vocab_size.
T5_VOCAB_SIZE: int = len(_t5_pieces()) + T5_EXTRA_IDS


def save_t5_tokenizer(directory: Path, *, model_max_length: int = 256) -> None:
    """Write a tiny T5 tokenizer into `directory` (created if missing).

    Loads with ``transformers.T5TokenizerFast.from_pretrained(directory)`` (in
    transformers 5 the same class as ``T5Tokenizer``) and through ``AutoTokenizer``.
    """
    from transformers import T5TokenizerFast

    tokenizer = T5TokenizerFast(vocab=_t5_pieces(), extra_ids=T5_EXTRA_IDS,
                                model_max_length=model_max_length)
    _save(tokenizer, Path(directory))


def write_t5_spiece(path: Path) -> None:
    """The tiny T5 vocabulary as a SentencePiece model file (`spiece.model`), as T5's
    repositories ship it beside tokenizer.json."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_DATA.joinpath("t5/spiece.model").read_bytes())


def special_token_ids(directory: Path) -> dict[str, int]:
    """Token -> id of the special tokens of a tiny tokenizer written here: the added
    tokens of its tokenizer.json, or CLIP's start/end-of-text ids in its vocab.json."""
    directory = Path(directory)
    if (directory / "tokenizer.json").is_file():
        data = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
        return {t["content"]: t["id"] for t in data["added_tokens"]}
    vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    return {token: vocab[token] for token in (CLIP_BOS_TOKEN, CLIP_EOS_TOKEN)}


# ---------------------------------------------------------------------------------


def _save(tokenizer, directory: Path) -> None:
    """save_pretrained, then JSON files rewritten with sorted keys (stable bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = tokenizer.save_pretrained(str(directory))
    for name in written:
        path = Path(name)
        if path.suffix != ".json" or not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        if path.name != "tokenizer.json":
            # Configs may carry the library version; it says nothing about the files.
            data.pop("transformers_version", None)
        _write_text(path, json.dumps(data, ensure_ascii=False, indent=1, sort_keys=True) + "\n")


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="\n")


def clip_text_config(**sizes: object) -> dict[str, object]:
    """`CLIPTextConfig` arguments that match the tiny CLIP tokenizer (vocabulary size and
    special-token ids, pad = end of text as in CLIP-L), plus the given sizes."""
    return {
        "vocab_size": CLIP_VOCAB_SIZE,
        "max_position_embeddings": 77,
        "bos_token_id": CLIP_BOS_TOKEN_ID,
        "eos_token_id": CLIP_EOS_TOKEN_ID,
        "pad_token_id": CLIP_EOS_TOKEN_ID,
        **sizes,
    }
