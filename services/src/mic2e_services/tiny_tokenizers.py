"""Tiny CLIP and T5 tokenizers built offline, for the tiny checkpoints (`make-tiny`, tests).

The real tokenizers (49 408 CLIP BPE tokens, 32 100 T5 SentencePiece pieces) cannot be
downloaded here, and random tiny text encoders only need token ids that are stable and
in range. These tokenizers keep the real *formats* (byte-level BPE with ``</w>`` for
CLIP, a Unigram vocabulary with ``extra_ids`` sentinels for T5) so the pipelines load
them through their ordinary ``from_pretrained``, and they know a few hundred common
English words so ordinary prompts give one token per word instead of a flood of
characters (CLIP never produces an unknown token: every byte is in the vocabulary).

Everything is derived from the word list below with no randomness, so the files are
byte-identical on every run. Tiny text encoders must use ``vocab_size`` at least
`CLIP_VOCAB_SIZE` / `T5_VOCAB_SIZE`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

__all__ = [
    "CLIP_BOS_TOKEN",
    "CLIP_EOS_TOKEN",
    "CLIP_VOCAB_SIZE",
    "T5_EXTRA_IDS",
    "T5_VOCAB_SIZE",
    "WORDS",
    "clip_vocab_and_merges",
    "save_clip_tokenizer",
    "save_t5_tokenizer",
    "special_token_ids",
    "t5_pieces",
    "write_clip_vocab",
    "write_t5_spiece",
]

# Words the tiny tokenizers know whole: prompt vocabulary of the three services
# ("remove the instance of dog", "a red bicycle on a street at sunset", ...). Order is
# irrelevant (sorted and de-duplicated below); changing it changes every token id, so
# CLIP_VOCAB_SIZE / T5_VOCAB_SIZE change with it.
_WORD_TEXT = """
a an the this that these those some any every each all no one two three four five
of in on at to from with without by for into onto over under above below behind
near next beside between through across along around inside outside up down off out
and or but not very too so then than as is are was were be been being has have had
it its he she they them their his her my your our we you i me us there here
remove removed removing delete erase clear instance instances object objects thing
add replace change make create generate show put keep move fill paint draw
photo photograph picture image portrait painting drawing illustration render
style realistic photorealistic detailed high quality sharp focus cinematic lighting
close view front back side top bottom left right center middle background foreground
dog dogs cat cats bird birds horse horses cow sheep fish duck chicken animal animals
person people man men woman women boy girl child children baby face hand hands hair
car cars bus truck train bicycle bike motorcycle boat ship plane airplane road street
house houses building city town tree trees flower flowers grass garden park forest
mountain mountains hill river lake sea ocean beach sand water sky cloud clouds sun
moon star stars snow rain fire light shadow shadows reflection window door wall roof
table chair sofa bed lamp cup glass bottle plate bowl book phone computer screen
bag box ball hat shirt dress shoe shoes umbrella sign fence bridge field farm
red green blue yellow orange purple pink brown black white gray grey gold silver
dark bright light colorful big small large little tall short long old new young
beautiful cute happy sad wooden metal stone old modern vintage empty full clean
morning evening night day sunset sunrise summer winter spring autumn
sitting standing walking running playing sleeping flying swimming holding wearing
looking
""".split()

WORDS: tuple[str, ...] = tuple(sorted(set(_WORD_TEXT)))

# ---------------------------------------------------------------------------------
# CLIP: byte-level BPE, as openai/clip-vit-large-patch14 lays it out.

CLIP_BOS_TOKEN = "<|startoftext|>"
CLIP_EOS_TOKEN = "<|endoftext|>"
_EOW = "</w>"


def _bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE, in byte order of GPT-2 / CLIP.

    Printable Latin-1 bytes stand for themselves; the others (controls, space, ...)
    are shifted past 255 so every byte is one visible, non-whitespace character.
    """
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = {b: chr(b) for b in keep}
    shifted = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + shifted)
            shifted += 1
    ordered = [chars[b] for b in keep] + [chars[b] for b in range(256) if b not in keep]
    return ordered


def _train_bpe(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """Plain BPE training on `words` until every word is one symbol.

    Ties in pair frequency break on the pair itself, so the result is deterministic.
    Applying the merges in this order (as the BPE model does) reproduces each word
    as a single token.
    """
    # The ASCII words need no byte mapping: their characters stand for themselves.
    segmented = [[*w[:-1], w[-1] + _EOW] for w in words]
    merges: list[tuple[str, str]] = []
    while True:
        counts: Counter[tuple[str, str]] = Counter()
        for symbols in segmented:
            counts.update(zip(symbols, symbols[1:], strict=False))
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        joined = best[0] + best[1]
        for i, symbols in enumerate(segmented):
            out: list[str] = []
            j = 0
            while j < len(symbols):
                if j + 1 < len(symbols) and (symbols[j], symbols[j + 1]) == best:
                    out.append(joined)
                    j += 2
                else:
                    out.append(symbols[j])
                    j += 1
            segmented[i] = out


def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The tiny CLIP vocabulary (token -> id) and merges, in the CLIP order.

    Ids: the 256 byte characters, the same with ``</w>``, one token per merge, then
    ``<|startoftext|>`` and ``<|endoftext|>`` last.
    """
    byte_chars = _bytes_to_unicode()
    tokens = [*byte_chars, *(c + _EOW for c in byte_chars)]
    merges = _train_bpe(WORDS)
    seen = set(tokens)
    for left, right in merges:
        # Two different merge paths can spell the same token; it keeps one id.
        if left + right not in seen:
            seen.add(left + right)
            tokens.append(left + right)
    tokens += [CLIP_BOS_TOKEN, CLIP_EOS_TOKEN]
    return {tok: i for i, tok in enumerate(tokens)}, merges


_CLIP_VOCAB, _CLIP_MERGES = clip_vocab_and_merges()
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

    tokenizer = CLIPTokenizer(
        vocab=dict(_CLIP_VOCAB),
        merges=list(_CLIP_MERGES),
        model_max_length=model_max_length,
    )
    _save(tokenizer, Path(directory))
    # Slow/legacy readers (transformers 4, open_clip-style code) want these two files.
    write_clip_vocab(directory)


def write_clip_vocab(directory: Path) -> None:
    """Only `vocab.json` and `merges.txt` of the tiny CLIP tokenizer: with a published
    tokenizer_config.json beside them they are a whole CLIP tokenizer, as CLIP-L's
    repositories ship it (no tokenizer.json)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_text(directory / "vocab.json", json.dumps(_CLIP_VOCAB, ensure_ascii=False) + "\n")
    _write_text(
        directory / "merges.txt",
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in _CLIP_MERGES),
    )


# ---------------------------------------------------------------------------------
# T5: a SentencePiece-style Unigram vocabulary, as google/t5-v1_1-xxl lays it out.

T5_EXTRA_IDS = 100
_T5_SPACE = "▁"
# Characters a prompt may contain, as single pieces so no ASCII text becomes <unk>.
_T5_CHARS = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
)


def t5_pieces() -> list[tuple[str, float]]:
    """The tiny T5 Unigram pieces (piece, log-probability score), ids in list order.

    ``<pad>``=0, ``</s>``=1, ``<unk>``=2, ``▁``, then ``▁word`` / ``▁Word`` pieces, then
    single characters. Scores make a whole known word always beat spelling it out; the
    ``<extra_id_N>`` sentinels are added by the tokenizer after these.
    """
    pieces: list[tuple[str, float]] = [
        ("<pad>", 0.0),
        ("</s>", 0.0),
        ("<unk>", 0.0),
        (_T5_SPACE, -3.0),
    ]
    known = {p for p, _ in pieces}
    # Rounded scores keep the JSON short and identical across platforms.
    for rank, word in enumerate(WORDS):
        for variant, penalty in ((word, 0.0), (word[:1].upper() + word[1:], 0.5)):
            piece = _T5_SPACE + variant
            if piece not in known:
                known.add(piece)
                pieces.append((piece, round(-6.0 - penalty - math.log1p(rank) / 10, 4)))
    for char in _T5_CHARS:
        if char not in known:
            known.add(char)
            pieces.append((char, -12.0))
    return pieces


_T5_PIECES = t5_pieces()
#: Size of the tiny T5 vocabulary including the sentinels; tiny T5Config.vocab_size.
T5_VOCAB_SIZE: int = len(_T5_PIECES) + T5_EXTRA_IDS


def save_t5_tokenizer(directory: Path, *, model_max_length: int = 256) -> None:
    """Write a tiny T5 tokenizer into `directory` (created if missing).

    Loads with ``transformers.T5TokenizerFast.from_pretrained(directory)`` (in
    transformers 5 the same class as ``T5Tokenizer``) and through ``AutoTokenizer``.
    """
    from transformers import T5TokenizerFast

    tokenizer = T5TokenizerFast(
        vocab=list(_T5_PIECES),
        extra_ids=T5_EXTRA_IDS,
        model_max_length=model_max_length,
    )
    _save(tokenizer, Path(directory))


def special_token_ids(directory: Path) -> dict[str, int]:
    """Token -> id of the special tokens of a tiny tokenizer written here: the added
    tokens of its tokenizer.json, or CLIP's start/end-of-text ids in its vocab.json."""
    directory = Path(directory)
    if (directory / "tokenizer.json").is_file():
        data = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
        return {t["content"]: t["id"] for t in data["added_tokens"]}
    vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    return {token: vocab[token] for token in (CLIP_BOS_TOKEN, CLIP_EOS_TOKEN)}


def write_t5_spiece(path: Path) -> None:
    """The tiny T5 vocabulary as a SentencePiece model file (`spiece.model`), as T5's
    repositories ship it beside tokenizer.json: the same pieces and scores, a Unigram
    model with `<pad>` 0, `</s>` 1, `<unk>` 2 and no sentinels (the tokenizer adds the
    `<extra_id_N>` ones). Deterministic bytes."""
    from sentencepiece import sentencepiece_model_pb2 as sp

    model = sp.ModelProto()
    kinds = {"<pad>": sp.ModelProto.SentencePiece.CONTROL,
             "</s>": sp.ModelProto.SentencePiece.CONTROL,
             "<unk>": sp.ModelProto.SentencePiece.UNKNOWN}
    for piece, score in _T5_PIECES:
        model.pieces.add(piece=piece, score=score,
                         type=kinds.get(piece, sp.ModelProto.SentencePiece.NORMAL))
    spec = model.trainer_spec
    spec.model_type = sp.TrainerSpec.UNIGRAM
    spec.vocab_size = len(_T5_PIECES)
    spec.pad_id, spec.eos_id, spec.unk_id, spec.bos_id = 0, 1, 2, -1
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = True
    model.normalizer_spec.remove_extra_whitespaces = True
    model.normalizer_spec.escape_whitespaces = True
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString(deterministic=True))


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
