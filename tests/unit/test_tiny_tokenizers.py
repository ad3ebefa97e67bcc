"""The offline tiny CLIP / T5 tokenizers load through transformers and tokenize prompts."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

transformers = pytest.importorskip("transformers")

from mic2e_dev.tiny_tokenizers import (  # noqa: E402
    CLIP_VOCAB_SIZE,
    T5_EXTRA_IDS,
    T5_VOCAB_SIZE,
    save_clip_tokenizer,
    save_t5_tokenizer,
)

PROMPTS = ["remove the instance of dog", "a red bicycle", "A photo of a cat sitting on a sofa"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip")
    save_clip_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("t5")
    save_t5_tokenizer(path)
    return path


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# --- CLIP -----------------------------------------------------------------------------


def test_clip_loads_with_clip_and_auto_tokenizer(clip_dir: Path) -> None:
    tok = transformers.CLIPTokenizer.from_pretrained(clip_dir)
    auto = transformers.AutoTokenizer.from_pretrained(clip_dir)
    assert isinstance(auto, transformers.CLIPTokenizer)
    assert transformers.CLIPTokenizerFast is transformers.CLIPTokenizer
    assert len(tok) == CLIP_VOCAB_SIZE
    assert tok.model_max_length == 77


def test_clip_known_words_are_single_tokens(clip_dir: Path) -> None:
    tok = transformers.CLIPTokenizer.from_pretrained(clip_dir)
    assert tok.tokenize("remove the instance of dog") == [
        "remove</w>",
        "the</w>",
        "instance</w>",
        "of</w>",
        "dog</w>",
    ]
    # Upper case is folded, as in the real CLIP tokenizer.
    assert tok.tokenize("A Red Bicycle") == ["a</w>", "red</w>", "bicycle</w>"]


def test_clip_special_tokens_and_no_unknowns(clip_dir: Path) -> None:
    tok = transformers.CLIPTokenizer.from_pretrained(clip_dir)
    assert tok.bos_token == "<|startoftext|>"
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    ids = tok("a red bicycle").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert len(ids) == 5
    # Byte-level BPE: unseen words and non-ASCII text spell out, never become unk.
    odd = tok("xylophone Zürich 42 ☃").input_ids[1:-1]
    assert tok.unk_token_id not in odd
    assert max(odd) < CLIP_VOCAB_SIZE
    assert tok.decode(tok("a red bicycle").input_ids, skip_special_tokens=True) == "a red bicycle"


def test_clip_pads_and_truncates_to_max_length(clip_dir: Path) -> None:
    tok = transformers.CLIPTokenizer.from_pretrained(clip_dir)
    short = tok(
        PROMPTS,
        padding="max_length",
        max_length=tok.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    assert tuple(short.input_ids.shape) == (len(PROMPTS), 77)
    assert short.input_ids[0, 7].item() == tok.pad_token_id
    long = tok(" ".join(["dog"] * 200), padding="max_length", max_length=77, truncation=True)
    assert len(long.input_ids) == 77
    assert long.input_ids[-1] == tok.eos_token_id


def test_clip_custom_max_length(tmp_path: Path) -> None:
    save_clip_tokenizer(tmp_path, model_max_length=32)
    assert transformers.CLIPTokenizer.from_pretrained(tmp_path).model_max_length == 32


def test_clip_is_deterministic_and_small(clip_dir: Path, tmp_path: Path) -> None:
    save_clip_tokenizer(tmp_path)
    assert _files(tmp_path) == _files(clip_dir)
    assert sum(len(b) for b in _files(clip_dir).values()) < 200_000


# --- T5 -------------------------------------------------------------------------------


def test_t5_loads_with_t5_and_auto_tokenizer(t5_dir: Path) -> None:
    tok = transformers.T5TokenizerFast.from_pretrained(t5_dir)
    auto = transformers.AutoTokenizer.from_pretrained(t5_dir)
    assert isinstance(auto, transformers.T5TokenizerFast)
    assert len(tok) == T5_VOCAB_SIZE
    assert tok.model_max_length == 256


def test_t5_known_words_are_single_pieces(t5_dir: Path) -> None:
    tok = transformers.T5TokenizerFast.from_pretrained(t5_dir)
    assert tok.tokenize("remove the instance of dog") == [
        "▁remove",
        "▁the",
        "▁instance",
        "▁of",
        "▁dog",
    ]
    assert tok.tokenize("A red bicycle") == ["▁A", "▁red", "▁bicycle"]


def test_t5_special_tokens_and_no_unknowns(t5_dir: Path) -> None:
    tok = transformers.T5TokenizerFast.from_pretrained(t5_dir)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok("a red bicycle").input_ids
    assert ids[-1] == tok.eos_token_id and len(ids) == 4
    ascii_text = "Xylophone, 42 (quite) rare!"
    assert tok.unk_token_id not in tok(ascii_text).input_ids
    sentinels = tok.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(T5_EXTRA_IDS)])
    assert len(set(sentinels)) == T5_EXTRA_IDS and max(sentinels) == T5_VOCAB_SIZE - 1
    assert tok.decode(ids, skip_special_tokens=True) == "a red bicycle"


def test_t5_pads_and_truncates_to_max_length(t5_dir: Path) -> None:
    tok = transformers.T5TokenizerFast.from_pretrained(t5_dir)
    batch = tok(PROMPTS, padding="max_length", max_length=256, truncation=True, return_tensors="pt")
    assert tuple(batch.input_ids.shape) == (len(PROMPTS), 256)
    assert batch.input_ids[1, 4].item() == tok.pad_token_id
    long = tok(" ".join(["dog"] * 300), padding="max_length", max_length=256, truncation=True)
    assert len(long.input_ids) == 256
    assert long.input_ids[-1] == tok.eos_token_id


def test_t5_is_deterministic_and_small(t5_dir: Path, tmp_path: Path) -> None:
    save_t5_tokenizer(tmp_path)
    assert _files(tmp_path) == _files(t5_dir)
    assert sum(len(b) for b in _files(t5_dir).values()) < 200_000
