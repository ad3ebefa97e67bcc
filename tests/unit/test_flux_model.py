"""FluxGenerator on the tiny FLUX.1-schnell checkpoint, on CPU.

Pictures are noise; sizes, seeds, batching, progress, cancellation, truncation and the
validation of every API field are real.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import numpy as np  # noqa: E402
from mic2e_dev.flux import write_tiny  # noqa: E402
from mic2e_services import errors  # noqa: E402
from mic2e_services.flux.model import (  # noqa: E402
    MAX_SEQUENCE_LENGTH,
    FluxGenerator,
    GenerateOutput,
    GenerateQuery,
)
from mic2e_services.runtime.model_api import Model  # noqa: E402

from tests.fakes import Recorder  # noqa: E402

SMALL = 256  # the smallest size the API allows: keeps every generation fast


@pytest.fixture(scope="module", autouse=True)
def pinned_threads() -> Iterator[None]:
    # CPU results depend on the thread count; pin it so reruns compare equal. One thread:
    # other test processes on a small machine make multi-thread barriers stall for seconds.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("flux-tiny")
    write_tiny(path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> FluxGenerator:
    generator = FluxGenerator(str(checkpoint), device="cpu")
    generator.load()
    generator.warmup()
    return generator


def run_one(model: FluxGenerator, query: GenerateQuery,
            ctx: Recorder | None = None) -> GenerateOutput:
    (result,) = model([query], [ctx or Recorder()])
    assert isinstance(result, GenerateOutput), result
    return result


def pixels(result: GenerateOutput) -> np.ndarray:
    return np.asarray(result.image).astype(np.int16)


# --- the checkpoint -------------------------------------------------------------------


def test_checkpoint_layout_and_keys(checkpoint: Path) -> None:
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    for folder in (
        "transformer",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "vae",
        "scheduler",
    ):
        assert (checkpoint / folder).is_dir(), folder
    assert (checkpoint / "model_index.json").is_file()
    for cls, sub in [
        (FluxTransformer2DModel, "transformer"),
        (AutoencoderKL, "vae"),
        (CLIPTextModel, "text_encoder"),
        (T5EncoderModel, "text_encoder_2"),
    ]:
        _, info = cls.from_pretrained(checkpoint, subfolder=sub, output_loading_info=True)
        assert not info["missing_keys"], (sub, info["missing_keys"])
        assert not info["unexpected_keys"], (sub, info["unexpected_keys"])
        assert not info.get("mismatched_keys"), (sub, info["mismatched_keys"])


def test_checkpoint_is_deterministic_and_small(checkpoint: Path, tmp_path: Path) -> None:
    write_tiny(tmp_path)

    def files(root: Path) -> dict[str, bytes]:
        return {
            p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    first, second = files(checkpoint), files(tmp_path)
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []
    assert sum(len(data) for data in first.values()) < 5 * 1024 * 1024


# --- the model ------------------------------------------------------------------------


def test_provenance_and_protocol(model: FluxGenerator, checkpoint: Path) -> None:
    assert isinstance(model, Model)
    assert model.model_id == checkpoint.name
    assert FluxGenerator(str(checkpoint), model_name="flux-schnell@us-east").model_id == \
        "flux-schnell@us-east"
    assert model.revision.startswith("local-")
    assert (model.dtype_name, model.device_name) == ("float32", "cpu")
    assert FluxGenerator(str(checkpoint)).revision  # known (as "unknown") before load


def test_progress_once_per_step_in_order(model: FluxGenerator) -> None:
    ctx = Recorder()
    result = run_one(model, GenerateQuery("a red bicycle", SMALL, SMALL, steps=3, seed=1), ctx)
    assert ctx.events == [("generation", i, 3) for i in (1, 2, 3)]
    assert result.steps == 3


@pytest.mark.parametrize(("width", "height"), [(SMALL, SMALL), (384, SMALL)])
def test_image_has_requested_size(model: FluxGenerator, width: int, height: int) -> None:
    result = run_one(model, GenerateQuery("a red bicycle", width, height, steps=2, seed=0))
    assert result.image.size == (width, height)
    assert result.image.mode == "RGB"


def test_same_seed_same_bytes_other_seed_differs(model: FluxGenerator) -> None:
    query = GenerateQuery("a dog on a beach", SMALL, SMALL, steps=2, seed=7)
    a, b = run_one(model, query), run_one(model, query)
    assert a.seed == b.seed == 7
    assert a.image.tobytes() == b.image.tobytes()
    other = run_one(model, GenerateQuery("a dog on a beach", SMALL, SMALL, steps=2, seed=8))
    assert other.image.tobytes() != a.image.tobytes()


def test_missing_seed_is_drawn_and_reproduces(model: FluxGenerator) -> None:
    drawn = run_one(model, GenerateQuery("a cat", SMALL, SMALL, steps=1))
    assert isinstance(drawn.seed, int) and drawn.seed >= 0
    again = run_one(model, GenerateQuery("a cat", SMALL, SMALL, steps=1, seed=drawn.seed))
    assert again.image.tobytes() == drawn.image.tobytes()


def test_batch_matches_one_by_one(model: FluxGenerator) -> None:
    q1 = GenerateQuery("a red bicycle", SMALL, SMALL, steps=2, seed=1)
    q2 = GenerateQuery("a dog on a beach at sunset", SMALL, SMALL, steps=2, seed=2)
    assert model.batch_key(q1) == model.batch_key(q2) is not None
    alone = [run_one(model, q1), run_one(model, q2)]
    together = model([q1, q2], [Recorder(), Recorder()])
    for single, batched in zip(alone, together, strict=True):
        assert isinstance(batched, GenerateOutput)
        assert batched.seed == single.seed
        # Each request has its own generator, so the starting noise is identical; on CPU the
        # batched matmuls accumulate in another order, which moves a few pixels by one
        # 8-bit level. Not bit-identical, but the same picture.
        diff = np.abs(pixels(batched) - pixels(single))
        assert diff.max() <= 2, diff.max()
    assert pixels(together[0]).tobytes() != pixels(together[1]).tobytes()


def test_cancel_after_first_step_stops_within_one_step(model: FluxGenerator) -> None:
    calls = []
    hook = model._pipe.transformer.register_forward_hook(lambda *args: calls.append(1))
    try:
        ctx = Recorder(cancel_after=1)
        with pytest.raises(errors.Cancelled):
            model([GenerateQuery("a red bicycle", SMALL, SMALL, steps=4, seed=0)], [ctx])
    finally:
        hook.remove()
    assert ctx.events == [("generation", 1, 4)]
    assert len(calls) == 1
    # The pipeline is reusable afterwards.
    assert run_one(model, GenerateQuery("a red bicycle", SMALL, SMALL, steps=1, seed=0))


def test_cancel_one_of_a_batch_keeps_the_other(model: FluxGenerator) -> None:
    q = GenerateQuery("a red bicycle", SMALL, SMALL, steps=3, seed=3)
    keep, drop = Recorder(), Recorder(cancel_after=1)
    results = model([q, q], [keep, drop])
    assert isinstance(results[0], GenerateOutput)
    assert isinstance(results[1], errors.Cancelled)
    assert [e[1] for e in keep.events] == [1, 2, 3]
    assert drop.events == [("generation", 1, 3)]


def test_long_prompt_reports_truncation(model: FluxGenerator) -> None:
    words = ["dog"] * 300  # one T5 piece each: 300 + </s> > 256
    result = run_one(model, GenerateQuery(" ".join(words), SMALL, SMALL, steps=1, seed=0))
    assert result.prompt_truncated
    assert result.truncated_prompt == " ".join(words[: MAX_SEQUENCE_LENGTH - 1])
    short = run_one(model, GenerateQuery("a red bicycle", SMALL, SMALL, steps=1, seed=0))
    assert (short.prompt_truncated, short.truncated_prompt) == (False, "")


BAD = [
    ("prompt", {"prompt": ""}),
    ("prompt", {"prompt": "  \n "}),
    ("prompt", {"prompt": "x" * 2001}),
    ("width", {"width": 264}),
    ("width", {"width": 240}),
    ("width", {"width": 2064}),
    ("height", {"height": 250}),
    ("height", {"height": 4096}),
    ("steps", {"steps": 0}),
    ("steps", {"steps": 51}),
    ("seed", {"seed": -1}),
]


@pytest.mark.parametrize(("field", "change"), BAD, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD)])
def test_bad_input_names_its_field(model: FluxGenerator, field: str, change: dict) -> None:
    query = GenerateQuery(
        **{
            "prompt": "a red bicycle",
            "width": SMALL,
            "height": SMALL,
            "steps": 1,
            "seed": 0,
            **change,
        }
    )
    with pytest.raises(errors.InvalidArgument) as info:
        model.check(query)
    assert [v.field for v in info.value.violations] == [field]


def test_every_bad_field_is_named_at_once(model: FluxGenerator) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        model.check(GenerateQuery("", 100, 4096, steps=51, seed=-1))
    assert [v.field for v in info.value.violations] == ["prompt", "width", "height", "steps",
                                                        "seed"]


def test_estimate_scales_with_steps_and_pixels(model: FluxGenerator) -> None:
    small = model.estimate_seconds(GenerateQuery("a", SMALL, SMALL, steps=1))
    assert small > 0
    assert model.estimate_seconds(GenerateQuery("a", SMALL, SMALL, steps=4)) > small
    assert model.estimate_seconds(GenerateQuery("a", 1024, 1024, steps=1)) > small
