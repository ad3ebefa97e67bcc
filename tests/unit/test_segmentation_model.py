"""SAM3 model code on the tiny checkpoint: loading, shapes, caching, checks, cancellation.

Random tiny weights score about 0.25, so text queries pass their own low threshold.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hashlib  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
from mic2e_dev.sam3 import write_tiny  # noqa: E402
from mic2e_services import errors  # noqa: E402
from mic2e_services.segmentation.model import (  # noqa: E402
    PromptQuery,
    PromptResult,
    Sam3Segmenter,
    Segment,
    TextQuery,
    TextResult,
)

WIDTH, HEIGHT = 160, 120  # non-square on purpose: catches width/height swaps


class Ctx:
    """A StepContext that records progress and can be cancelled."""

    def __init__(self, cancelled: bool = False) -> None:
        self._cancelled = cancelled
        self.events: list[tuple[str, int, int]] = []

    def cancelled(self) -> bool:
        return self._cancelled

    def progress(self, stage: str, step: int, total: int) -> None:
        self.events.append((stage, step, total))


def _image(seed: int, size: tuple[int, int] = (WIDTH, HEIGHT)) -> tuple[PIL.Image.Image, str]:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = PIL.Image.fromarray(pixels)
    return image, hashlib.sha256(pixels.tobytes()).hexdigest()


def _text(seed: int = 0, **kw) -> TextQuery:
    image, key = _image(seed)
    kw.setdefault("text", "a dog")
    kw.setdefault("score_threshold", 0.0)
    return TextQuery(image=image, image_key=key, **kw)


def _prompt(seed: int = 0, **kw) -> PromptQuery:
    image, key = _image(seed)
    return PromptQuery(image=image, image_key=key, **kw)


def _run(seg: Sam3Segmenter, *queries):
    return seg(list(queries), [Ctx() for _ in queries])


@pytest.fixture(scope="module", autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: threads only add overhead and noise
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sam3")
    write_tiny(path, seed=0)
    return path


@pytest.fixture(scope="module")
def seg(ckpt: Path) -> Sam3Segmenter:
    model = Sam3Segmenter(str(ckpt), device="cpu")
    model.load()
    model.warmup()
    return model


def _assert_segment(segment: Segment) -> None:
    assert segment.mask.dtype == np.bool_
    assert segment.mask.shape == (HEIGHT, WIDTH)
    x0, y0, x1, y1 = segment.box
    if not segment.mask.any():
        assert segment.box == (0, 0, 0, 0)
        return
    assert 0 <= x0 < x1 <= WIDTH and 0 <= y0 < y1 <= HEIGHT
    inside = np.zeros_like(segment.mask)
    inside[y0:y1, x0:x1] = True
    assert not (segment.mask & ~inside).any(), "mask pixels outside the box"
    # Tight: every edge of the box touches the mask.
    assert segment.mask[y0].any() and segment.mask[y1 - 1].any()
    assert segment.mask[:, x0].any() and segment.mask[:, x1 - 1].any()


# ---------------------------------------------------------------------------- checkpoint


def test_tiny_checkpoint_loads_without_missing_or_unexpected_keys(ckpt: Path) -> None:
    from transformers import Sam3Model, Sam3Processor, Sam3TrackerModel, Sam3TrackerProcessor

    for cls in (Sam3Model, Sam3TrackerModel):
        _, info = cls.from_pretrained(str(ckpt), output_loading_info=True)
        assert not info["missing_keys"], (cls, info)
        assert not info["unexpected_keys"], (cls, info)
        assert not info["mismatched_keys"], (cls, info)
    text = Sam3Processor.from_pretrained(str(ckpt))
    assert text.tokenizer("a dog")["input_ids"][0] == text.tokenizer.bos_token_id
    prompts = Sam3TrackerProcessor.from_pretrained(str(ckpt))
    assert prompts.image_processor.to_dict() == text.image_processor.to_dict()


def test_tiny_checkpoint_is_deterministic_small_and_in_the_real_layout(
    ckpt: Path, tmp_path: Path
) -> None:
    write_tiny(tmp_path, seed=0)
    files = sorted(p.name for p in ckpt.iterdir())
    assert {"config.json", "model.safetensors", "processor_config.json",
            "tokenizer.json", "tokenizer_config.json"} <= set(files)
    assert files == sorted(p.name for p in tmp_path.iterdir())
    for name in files:
        assert (ckpt / name).read_bytes() == (tmp_path / name).read_bytes(), name
    assert sum((ckpt / name).stat().st_size for name in files) < 5 * 1024 * 1024
    import json

    config = json.loads((ckpt / "config.json").read_text())
    assert config["model_type"] == "sam3_video"  # what facebook/sam3 ships


def test_load_shares_one_backbone_and_reports_provenance(seg: Sam3Segmenter) -> None:
    assert seg.shares_backbone
    assert seg._tracker.vision_encoder.backbone is seg._detector.vision_encoder.backbone
    assert seg.revision.startswith("local-")
    assert (seg.dtype_name, seg.device_name) == ("float32", "cpu")
    assert seg.estimate_seconds(_text(seed=99)) > 0


# ---------------------------------------------------------------------------- text


def test_text_query_returns_instances_at_image_size(seg: Sam3Segmenter) -> None:
    ctx = Ctx()
    (result,) = seg([_text()], [ctx])
    assert isinstance(result, TextResult)
    assert result.instances, "threshold 0 must keep instances of the random model"
    scores = [s.score for s in result.instances]
    assert scores == sorted(scores, reverse=True)
    for segment in result.instances:
        assert 0.0 <= segment.score <= 1.0
        _assert_segment(segment)
    assert ctx.events == [("segmentation", 1, 1)]


def test_text_query_threshold_and_max_instances(seg: Sam3Segmenter) -> None:
    everything, top2, none = _run(
        seg, _text(), _text(max_instances=2), _text(score_threshold=1.0)
    )
    assert len(top2.instances) == min(2, len(everything.instances))
    assert [s.score for s in top2.instances] == [s.score for s in everything.instances[:2]]
    assert none.instances == []


def test_text_path_matches_transformers(seg: Sam3Segmenter) -> None:
    """Cached / split vision path == the plain Sam3Model forward + processor post-processing."""
    query = _text(seed=5)
    (ours,) = _run(seg, query)
    processor = seg._det_processor
    inputs = processor(images=query.image, text=query.text, return_tensors="pt")
    with torch.inference_mode():
        out = seg._detector(**inputs)
    (ref,) = processor.post_process_instance_segmentation(
        out, threshold=0.0, mask_threshold=0.5, target_sizes=[(HEIGHT, WIDTH)]
    )
    order = torch.sort(ref["scores"], descending=True, stable=True).indices
    ref_masks = [ref["masks"][i].bool().numpy() for i in order if ref["masks"][i].any()]
    ref_scores = [float(ref["scores"][i]) for i in order if ref["masks"][i].any()]
    assert len(ours.instances) == len(ref_masks)
    np.testing.assert_allclose([s.score for s in ours.instances], ref_scores, atol=1e-5)
    for segment, mask in zip(ours.instances, ref_masks, strict=True):
        assert np.array_equal(segment.mask, mask)


# ---------------------------------------------------------------------------- prompts


def test_point_query_returns_best_mask_and_alternatives(seg: Sam3Segmenter) -> None:
    plain, alts = _run(
        seg,
        _prompt(points=((40.0, 30.0, True),)),
        _prompt(points=((40.0, 30.0, True),), return_alternatives=True),
    )
    assert isinstance(plain, PromptResult) and plain.alternatives == []
    _assert_segment(plain.best)
    assert len(alts.alternatives) == 2
    scores = [alts.best.score] + [s.score for s in alts.alternatives]
    assert scores == sorted(scores, reverse=True)
    for segment in [alts.best, *alts.alternatives]:
        _assert_segment(segment)
    # A single click uses the three-candidate output either way: same best mask.
    assert np.array_equal(plain.best.mask, alts.best.mask)


def test_box_and_mixed_prompts(seg: Sam3Segmenter) -> None:
    (box,) = _run(seg, _prompt(box=(10.0, 20.0, 100.0, 90.0)))
    (mixed,) = _run(seg, _prompt(points=((50.0, 50.0, True), (5.0, 5.0, False)),
                                 box=(10.0, 20.0, 100.0, 90.0), return_alternatives=True))
    assert box.alternatives == []
    _assert_segment(box.best)
    assert len(mixed.alternatives) == 2
    _assert_segment(mixed.best)


def test_point_path_matches_transformers(seg: Sam3Segmenter) -> None:
    """Exact while the no-memory embedding is zero, as in the tiny checkpoint (see below)."""
    query = _prompt(seed=6, points=((120.0, 20.0, True),), return_alternatives=True)
    (ours,) = _run(seg, query)
    processor = seg._trk_processor
    inputs = processor(images=query.image, input_points=[[[[120.0, 20.0]]]],
                       input_labels=[[[1]]], return_tensors="pt")
    with torch.inference_mode():
        out = seg._tracker(**inputs, multimask_output=True)
    masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0][0]
    iou = out.iou_scores[0, 0]
    best = int(torch.argmax(iou))
    assert ours.best.score == pytest.approx(float(iou[best]), abs=1e-5)
    assert np.array_equal(ours.best.mask, masks[best].numpy())


def test_tracker_features_follow_the_video_model(seg: Sam3Segmenter, ckpt: Path) -> None:
    """The no-memory embedding lands where Sam3TrackerVideoModel (and SAM 3) put it.

    The tiny checkpoint holds a zero embedding, which hides the placement; a non-zero
    one makes Sam3TrackerModel.get_image_embeddings differ, but not the video model.
    """
    from transformers import Sam3TrackerVideoModel

    video = Sam3TrackerVideoModel.from_pretrained(str(ckpt)).eval()
    image, _ = _image(8)
    pixels = seg._trk_processor.image_processor(images=image, return_tensors="pt")[
        "pixel_values"]
    embedding = torch.linspace(-1.0, 1.0, seg._tracker.no_memory_embedding.numel())
    saved = seg._tracker.no_memory_embedding.detach().clone()
    try:
        with torch.inference_mode():
            seg._tracker.no_memory_embedding.copy_(embedding.view_as(saved))
            video.no_memory_embedding.copy_(embedding.view_as(saved))
            ours = seg._tracker_neck(seg._tracker.vision_encoder.backbone(pixels).last_hidden_state)
            ref = video.get_image_embeddings(pixels)
    finally:
        with torch.inference_mode():
            seg._tracker.no_memory_embedding.copy_(saved)
    assert len(ours) == len(ref) == 3
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------- caching


def test_same_request_twice_is_identical(seg: Sam3Segmenter) -> None:
    for query in (_text(seed=7), _prompt(seed=7, points=((3.0, 4.0, True),),
                                         return_alternatives=True)):
        seg.clear_cache()  # first run encodes, second reads the cache: still identical
        (a,), (b,) = _run(seg, query), _run(seg, query)
        segs_a = a.instances if isinstance(a, TextResult) else [a.best, *a.alternatives]
        segs_b = b.instances if isinstance(b, TextResult) else [b.best, *b.alternatives]
        assert len(segs_a) == len(segs_b) > 0
        for x, y in zip(segs_a, segs_b, strict=True):
            assert np.array_equal(x.mask, y.mask) and x.score == y.score and x.box == y.box


@pytest.mark.parametrize(
    "second",
    [
        lambda: _text(seed=11, text="a cat"),
        lambda: _prompt(seed=11, points=((10.0, 10.0, True),)),
        lambda: _prompt(seed=11, box=(1.0, 2.0, 50.0, 60.0)),
    ],
    ids=["text-text", "text-point", "text-box"],
)
def test_second_query_on_same_image_skips_vision_encoder(seg: Sam3Segmenter, second) -> None:
    seg.clear_cache()
    runs = seg.vision_encoder_runs
    _run(seg, _text(seed=11))
    assert seg.vision_encoder_runs == runs + 1
    (result,) = _run(seg, second())
    assert not isinstance(result, BaseException)
    assert seg.vision_encoder_runs == runs + 1
    _run(seg, _text(seed=12))  # another image does run it
    assert seg.vision_encoder_runs == runs + 2


def test_feature_cache_is_an_lru_bounded_in_bytes(ckpt: Path) -> None:
    small = Sam3Segmenter(str(ckpt))
    small.load()
    a, b, c = (_text(seed=s) for s in (21, 22, 23))
    _run(small, a)
    one = small.cache_bytes()  # every image is resized to one square: one size each
    assert one > 0
    small.feature_cache_bytes = 2 * one + one // 2  # room for two images, not three
    _run(small, b)
    assert small.cache_bytes() == 2 * one
    _run(small, a)  # a becomes most recent, so c evicts b
    _run(small, c)
    assert small.cached_image_keys() == [a.image_key, c.image_key]
    runs = small.vision_encoder_runs
    _run(small, a)
    assert small.vision_encoder_runs == runs
    _run(small, b)
    assert small.vision_encoder_runs == runs + 1
    assert small.cache_bytes() <= small.feature_cache_bytes
    small.feature_cache_bytes = one // 2  # smaller than one image: nothing is kept
    _run(small, c)
    assert small.cached_image_keys() == [] and small.cache_bytes() == 0


@pytest.mark.parametrize("kind", ["text", "prompt"])
def test_a_batch_agrees_with_each_request_alone(seg: Sam3Segmenter, kind: str) -> None:
    seg.clear_cache()
    runs = seg.vision_encoder_runs
    if kind == "text":
        queries = [_text(seed=31), _text(seed=32, text="a red car"), _text(seed=31, text="x")]
    else:  # one batch key: one positive point each
        queries = [_prompt(seed=31, points=((1.0, 1.0, True),)),
                   _prompt(seed=32, points=((20.0, 9.0, True),)),
                   _prompt(seed=31, points=((5.0, 5.0, True),))]
    assert len({seg.batch_key(q) for q in queries}) == 1
    results = _run(seg, *queries)
    assert seg.vision_encoder_runs == runs + 2  # two distinct images, each encoded once
    for query, batched in zip(queries, results, strict=True):
        (alone,) = _run(seg, query)
        a = batched.instances if isinstance(batched, TextResult) else [batched.best]
        b = alone.instances if isinstance(alone, TextResult) else [alone.best]
        np.testing.assert_allclose([s.score for s in a], [s.score for s in b], atol=1e-5)


def test_batch_key(seg: Sam3Segmenter) -> None:
    assert seg.batch_key(_text(seed=1)) == seg.batch_key(_text(seed=2, text="x"))
    one = seg.batch_key(_prompt(points=((1.0, 1.0, True),)))
    assert one == seg.batch_key(_prompt(seed=3, points=((5.0, 5.0, False),)))
    assert one != seg.batch_key(_prompt(points=((1.0, 1.0, True), (2.0, 2.0, True))))
    assert one != seg.batch_key(_prompt(box=(0.0, 0.0, 5.0, 5.0)))
    assert one != seg.batch_key(_text())


# ---------------------------------------------------------------------------- checks


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (lambda: _text(text="   "), "text"),
        (lambda: _text(text="x" * 201), "text"),
        (lambda: _text(score_threshold=float("nan")), "score_threshold"),
        (lambda: _text(score_threshold=1.5), "score_threshold"),
        (lambda: _text(score_threshold=-0.1), "score_threshold"),
        (lambda: _text(max_instances=-1), "max_instances"),
        (lambda: _prompt(), "points"),
        (lambda: _prompt(points=((10.0, 10.0, True), (WIDTH + 1.0, 5.0, True))), "points[1]"),
        (lambda: _prompt(points=((-1.0, 5.0, True),)), "points[0]"),
        (lambda: _prompt(points=((float("nan"), 5.0, True),)), "points[0]"),
        (lambda: _prompt(box=(0.0, 0.0, WIDTH + 10.0, 10.0)), "box"),
        (lambda: _prompt(box=(10.0, 10.0, 10.0, 50.0)), "box"),
        (lambda: _prompt(box=(50.0, 10.0, 10.0, 50.0)), "box"),
        (lambda: _prompt(box=(0.0, float("nan"), 10.0, 10.0)), "box"),
        (lambda: _prompt(box=(0.0, 1.0, 10.0)), "box"),
        (lambda: _prompt(points=((1.0, 2.0),)), "points[0]"),
    ],
)
def test_bad_input_names_its_field(seg: Sam3Segmenter, query, field: str) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        seg.check(query())
    assert [v.field for v in info.value.violations] == [field]


def test_every_bad_field_is_named_at_once(seg: Sam3Segmenter) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        seg.check(_text(text="", score_threshold=2.0, max_instances=-1))
    assert [v.field for v in info.value.violations] == ["text", "score_threshold",
                                                        "max_instances"]
    with pytest.raises(errors.InvalidArgument) as info:
        seg.check(_prompt(points=((-1.0, 5.0, True), (1.0, 1.0, True), (1.0, 2.0)),
                          box=(5.0, 5.0, 1.0, 1.0)))
    assert [v.field for v in info.value.violations] == ["points[0]", "points[2]", "box"]


# ---------------------------------------------------------------------------- cancellation


def test_cancelled_request_is_skipped(seg: Sam3Segmenter) -> None:
    seg.clear_cache()
    runs = seg.vision_encoder_runs
    gone, kept = Ctx(cancelled=True), Ctx()
    results = seg([_text(seed=51), _text(seed=52)], [gone, kept])
    assert isinstance(results[0], errors.Cancelled)
    assert isinstance(results[1], TextResult)
    assert gone.events == [] and kept.events == [("segmentation", 1, 1)]
    assert seg.vision_encoder_runs == runs + 1  # the cancelled image was never encoded


def test_all_cancelled_raises(seg: Sam3Segmenter) -> None:
    runs = seg.vision_encoder_runs
    with pytest.raises(errors.Cancelled):
        seg([_text(seed=61)], [Ctx(cancelled=True)])
    assert seg.vision_encoder_runs == runs


def test_model_code_imports_no_grpc() -> None:
    source = Path(__file__).parents[2] / "services/src/mic2e_services/segmentation/model.py"
    text = source.read_text()
    assert "import grpc" not in text and "_pb2" not in text
