"""ObjectClear model code on a tiny random checkpoint (CPU, offline).

The checkpoint is written once per module by `object_clear.tiny.write_tiny` and loaded
through the same `from_pretrained` code as the real weights.
"""

from __future__ import annotations

import os

import pytest

# Nothing may be downloaded; huggingface_hub reads this when it is first imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import numpy as np  # noqa: E402
from mic2e_services import errors  # noqa: E402
from mic2e_services.object_clear import fusion  # noqa: E402
from mic2e_services.object_clear.model import (  # noqa: E402
    STAGE,
    ClearOutput,
    ClearQuery,
    ObjectClearModel,
)
from mic2e_services.object_clear.pipeline import COMPONENTS, working_size  # noqa: E402
from mic2e_services.object_clear.tiny import write_tiny  # noqa: E402
from PIL import Image  # noqa: E402

# Non-square and small: short side 256 gives a 336x256 working size, fast on CPU.
WIDTH, HEIGHT = 96, 72
SHORT_SIDE = 256


class RecordingContext:
    """A StepContext that records progress and cancels after `cancel_after` events."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.events: list[tuple[str, int, int]] = []
        self.cancel_after = cancel_after

    def cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.events) >= self.cancel_after

    def progress(self, stage: str, step: int, total: int) -> None:
        self.events.append((stage, step, total))


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    # SDXL-style outputs change with the thread count, and the seed tests compare bytes.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("object_clear_tiny")
    write_tiny(path)
    return path


@pytest.fixture(scope="module")
def model(tiny_dir):
    m = ObjectClearModel(str(tiny_dir))
    m.load()
    return m


def make_image(width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def make_mask(width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[height // 4 : height // 2, width // 3 : 2 * width // 3] = True
    return mask


def query(**overrides) -> ClearQuery:
    fields = dict(
        image=make_image(),
        mask=make_mask(),
        label="dog",
        steps=2,
        short_side=SHORT_SIDE,
        seed=1,
    )
    fields.update(overrides)
    return ClearQuery(**fields)


def run_one(model: ObjectClearModel, q: ClearQuery, context=None):
    (result,) = model([q], [context or RecordingContext()])
    return result


# -- checkpoint ---------------------------------------------------------------------------


def test_tiny_checkpoint_layout_is_small_and_byte_identical(tiny_dir, tmp_path):
    write_tiny(tmp_path)
    first = {p.relative_to(tiny_dir): p.read_bytes() for p in tiny_dir.rglob("*") if p.is_file()}
    second = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert first == second
    assert sum(len(b) for b in first.values()) < 5 * 1024 * 1024
    folders = {p.parts[0] for p in first if len(p.parts) > 1}
    assert folders == set(COMPONENTS)
    assert (tiny_dir / "model_index.json").is_file()
    assert (tiny_dir / "postfuse_module" / "model.safetensors").is_file()
    assert (tiny_dir / "postfuse_module" / "config.json").is_file()


def test_every_component_loads_without_missing_or_unexpected_keys(model):
    info = model.pipeline.loading_info
    assert set(info) == {
        "unet",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "image_prompt_encoder",
        "postfuse_module",
    }
    for name, loading in info.items():
        assert loading == {"missing_keys": [], "unexpected_keys": []}, name
    names = {k.rsplit(".", 1)[0] for k in model.pipeline.postfuse_module.state_dict()}
    assert names == {
        "mlp1.layernorm",
        "mlp1.fc1",
        "mlp1.fc2",
        "mlp2.layernorm",
        "mlp2.fc1",
        "mlp2.fc2",
        "layer_norm",
    }
    assert model.revision == "local"
    assert (model.dtype_name, model.device_name) == ("float32", "cpu")


# -- the model ----------------------------------------------------------------------------


def test_progress_per_step_and_output_at_input_size(model):
    context = RecordingContext()
    q = query(steps=3, mask_dilation=2)
    out = run_one(model, q, context)
    assert isinstance(out, ClearOutput)
    assert context.events == [(STAGE, 1, 3), (STAGE, 2, 3), (STAGE, 3, 3)]
    assert out.image.size == (WIDTH, HEIGHT) and out.image.mode == "RGB"
    assert (out.steps, out.seed) == (3, 1)
    assert out.mask.dtype == bool and out.mask.shape == (HEIGHT, WIDTH)
    assert out.mask[q.mask].all() and out.mask.sum() > q.mask.sum()  # dilated


def test_same_seed_same_bytes_other_seed_differs_and_drawn_seed_is_reported(model):
    drawn = run_one(model, query(seed=None))
    assert isinstance(drawn.seed, int)
    again = run_one(model, query(seed=drawn.seed))
    other = run_one(model, query(seed=drawn.seed + 1))
    assert again.image.tobytes() == drawn.image.tobytes()
    assert other.image.tobytes() != drawn.image.tobytes()


def test_cancellation_stops_within_one_step(model):
    context = RecordingContext(cancel_after=2)
    with pytest.raises(errors.Cancelled):
        model([query(steps=10)], [context])
    assert 2 <= len(context.events) <= 3


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"mask": np.zeros((HEIGHT, WIDTH + 1), dtype=bool)}, "masks"),
        ({"mask": np.zeros((HEIGHT, WIDTH), dtype=bool)}, "masks"),
        ({"steps": 0}, "options.steps"),
        ({"steps": 101}, "options.steps"),
        ({"guidance_scale": float("nan")}, "options.guidance_scale"),
        ({"guidance_scale": 0.5}, "options.guidance_scale"),
        ({"guidance_scale": 20.5}, "options.guidance_scale"),
        ({"short_side": 255}, "options.short_side"),
        ({"short_side": 2049}, "options.short_side"),
        ({"mask_dilation": -1}, "options.mask_dilation"),
        ({"mask_dilation": 257}, "options.mask_dilation"),
        ({"label": "x" * 101}, "label"),
    ],
)
def test_bad_input_names_its_field(model, overrides, field):
    context = RecordingContext()
    result = run_one(model, query(**overrides), context)
    assert isinstance(result, errors.InvalidArgument)
    assert result.field == field
    assert context.events == []


def test_a_bad_request_fails_alone(model):
    good, bad = RecordingContext(), RecordingContext()
    results = model([query(steps=1), query(steps=0)], [good, bad])
    assert isinstance(results[0], ClearOutput)
    assert isinstance(results[1], errors.InvalidArgument)
    assert len(good.events) == 1 and bad.events == []


def test_compatible_requests_share_a_batch(model, monkeypatch):
    # Different image sizes, same working size: one UNet batch. One caller cancels midway;
    # its batch-mate still gets its result and the cancelled one gets Cancelled.
    monkeypatch.setattr(model, "max_batch_size", 2)
    big = query(image=make_image(2 * WIDTH, 2 * HEIGHT), mask=make_mask(2 * WIDTH, 2 * HEIGHT))
    small = query(label="cat", seed=7)
    assert model.batch_key(big) == model.batch_key(small)
    keep, cancel = RecordingContext(), RecordingContext(cancel_after=1)
    out_big, out_small = model([big, small], [keep, cancel])
    assert isinstance(out_big, ClearOutput) and out_big.image.size == (2 * WIDTH, 2 * HEIGHT)
    assert isinstance(out_small, errors.Cancelled)
    assert keep.events == [(STAGE, 1, 2), (STAGE, 2, 2)]


def test_a_batched_request_gets_the_picture_it_gets_alone(model, monkeypatch):
    # Batching is on by default on a GPU: a caller's result must not depend on its
    # batch-mates (own noise, own object token, own attention map and fusion).
    monkeypatch.setattr(model, "max_batch_size", 3)
    a = query(seed=11)
    b = query(image=make_image(seed=5), label="cat", seed=12)
    c = query(image=make_image(seed=9), mask=~make_mask(), seed=13)
    (alone,) = model([a], [RecordingContext()])
    batched = model([b, a, c], [RecordingContext() for _ in range(3)])
    assert all(isinstance(r, ClearOutput) for r in [alone, *batched])
    x = np.asarray(alone.image, dtype=np.float64)
    y = np.asarray(batched[1].image, dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    # fp32 on CPU: only summation order may differ (a batched conv), never the picture.
    assert mse == 0.0 or 10 * np.log10(255.0**2 / mse) > 50.0, mse
    assert batched[0].image.tobytes() != alone.image.tobytes()  # and the batch is real


def test_batching_is_on_by_default_on_accelerators_only():
    assert ObjectClearModel("unused").max_batch_size == 1  # CPU: batching gains nothing
    assert ObjectClearModel("unused", max_batch_size=4).max_batch_size == 4


def test_warmup_calibrates_estimates(model):
    model.warmup()
    short, long = query(steps=5), query(steps=50)
    assert 0 < model.estimate_seconds(short) < model.estimate_seconds(long)
    assert model.batch_key(short) == (working_size(WIDTH, HEIGHT, SHORT_SIDE), 5, 2.5, True)


# -- the pipeline -------------------------------------------------------------------------


def test_attention_map_has_latent_size_and_unit_range(model):
    pipe = model.pipeline
    image = torch.rand(3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(0))
    mask = torch.from_numpy(make_mask())
    out = pipe(
        image,
        mask,
        "dog",
        num_inference_steps=2,
        short_side=SHORT_SIDE,
        generator=torch.Generator().manual_seed(0),
    )
    width, height = out.working_size
    assert (width, height) == working_size(WIDTH, HEIGHT, SHORT_SIDE)
    amap = out.attention_maps
    assert amap.shape == (1, 1, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    assert float(amap.min()) == pytest.approx(0.0, abs=1e-6)
    assert float(amap.max()) == pytest.approx(1.0, abs=1e-6)
    assert out.images[0].shape == (3, HEIGHT, WIDTH)
    assert pipe.attention_capture.capture is False  # only ever on during the last step


# -- fusion.py alone ----------------------------------------------------------------------


def _smooth_image(height: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, height // 16, width // 16, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic")
    detail = 0.05 * torch.rand(1, 3, height, width, generator=g)
    return (0.9 * smooth + detail).clamp(0, 1)


def test_fusion_keeps_far_background_and_generated_object():
    h, w = 192, 256
    original = _smooth_image(h, w, seed=0)
    # Attention on a block in the middle (latent grid of 1/8 size).
    amap = torch.zeros(1, 1, h // 8, w // 8)
    amap[..., 10:14, 14:18] = 1.0
    g = torch.Generator().manual_seed(1)
    # The model repaints the object and leaves the background nearly untouched (noise).
    generated = (original + 0.03 * torch.randn(original.shape, generator=g)).clamp(0, 1)
    generated[..., 72:120, 104:152] = torch.rand(1, 3, 48, 48, generator=g)

    fused = fusion.attention_guided_fusion(original, generated, amap)

    hard, soft = fusion.soft_fusion_mask(amap, (h, w))
    inside = hard[0, 0] > 0.5
    assert torch.equal(fused[0][:, inside], generated[0][:, inside])
    far = ~fusion.dilate_mask(inside, 32)
    assert far.sum() > 0.5 * h * w
    error = (fused[0][:, far] - original[0][:, far]).abs()
    assert error.mean() < 0.005 and error.max() < 0.03
    # The colour fix keeps the original's detail: closer than the generated pixels were.
    assert error.mean() < (generated[0][:, far] - original[0][:, far]).abs().mean() / 4
    assert fused.min() >= 0 and fused.max() <= 1
    # soft = 1 on the hard mask, feathered just outside it, 0 far away.
    assert torch.all(soft >= hard) and soft[0, 0][far].max() == 0


def test_wavelet_bands_sum_to_the_image():
    x = torch.rand(2, 3, 40, 52, generator=torch.Generator().manual_seed(0))
    high, low = fusion.wavelet_decompose(x, levels=5)
    torch.testing.assert_close(high + low, x)
    fixed = fusion.wavelet_color_fix(x, x)
    torch.testing.assert_close(fixed, x)


def test_ellipse_kernel_matches_opencv_shape():
    k = fusion.ellipse_kernel(5)
    expected = torch.tensor(
        [[0, 0, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0]],
        dtype=torch.float32,
    )
    assert torch.equal(k, expected)
    k21 = fusion.ellipse_kernel(21)
    assert k21.shape == (21, 21) and k21[10].all() and k21[0].sum() == 1


def test_mask_dilation_is_a_disk_both_ways():
    mask = torch.zeros(80, 90, dtype=torch.bool)
    mask[40, 45] = True
    small = fusion.dilate_mask(mask, 3)
    assert torch.equal(small[37:44, 42:49].float(), fusion.disk_kernel(3))
    assert small.sum() == fusion.disk_kernel(3).sum()
    # Radius above the direct-convolution limit goes through the FFT: same result.
    blob = torch.zeros(1, 1, 80, 90, dtype=torch.bool)
    blob[..., 30:45, 20:70] = True
    blob[..., 5, 5] = True
    direct = fusion.binary_dilate(blob, fusion.disk_kernel(20)) > 0.5
    assert torch.equal(fusion.dilate_mask(blob, 20), direct)
    assert torch.equal(fusion.dilate_mask(mask, 0), mask)
