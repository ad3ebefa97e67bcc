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
from mic2e_dev.objectclear import write_tiny  # noqa: E402
from mic2e_services import errors, masks  # noqa: E402
from mic2e_services.object_clear import fusion  # noqa: E402
from mic2e_services.object_clear.model import (  # noqa: E402
    STAGE,
    ClearOutput,
    ClearQuery,
    ObjectClearModel,
)
from mic2e_services.object_clear.pipeline import (  # noqa: E402
    DEFAULT_PROMPT,
    ObjectClearPipeline,
    prompt_for,
    working_size,
)
from PIL import Image  # noqa: E402

from tests.fakes import Recorder  # noqa: E402
from tests.fixtures import OBJECTCLEAR_KIT  # noqa: E402
from tests.masks import within  # noqa: E402

# Non-square and small: below the 512 short side, so it runs at its own size rounded up
# to multiples of 16 (96x80), fast on CPU.
WIDTH, HEIGHT = 96, 72
SHORT_SIDE = 512


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
    (result,) = model([q], [context or Recorder()])
    return result


# -- checkpoint ---------------------------------------------------------------------------


def test_make_tiny_writes_the_parity_kits_checkpoint_byte_for_byte(tiny_dir):
    # The kit's checkpoint is the published layout with tiny sizes, on the weights the
    # reference's outputs were made with: make-tiny must write exactly that.
    ours = {p.relative_to(tiny_dir): p.read_bytes() for p in tiny_dir.rglob("*") if p.is_file()}
    kit = OBJECTCLEAR_KIT / "checkpoint"
    theirs = {p.relative_to(kit): p.read_bytes() for p in kit.rglob("*") if p.is_file()}
    assert sorted(map(str, ours)) == sorted(map(str, theirs))
    different = [str(name) for name in ours if ours[name] != theirs[name]]
    assert different == []
    assert sum(len(b) for b in ours.values()) < 5 * 1024 * 1024


def test_the_checkpoint_loads_as_published(model):
    pipe = model.pipeline
    # The published model_index.json lists neither extra: loaded from their folders.
    assert type(pipe.image_prompt_encoder).__name__ == "CLIPVisionModelWithProjection"
    assert (pipe.postfuse_module.config.embed_dim, pipe.postfuse_module.config.embed_dim_img) \
        == (64, 32)
    names = {k.rsplit(".", 1)[0] for k in pipe.postfuse_module.state_dict()}
    assert names == {"mlp1.layernorm", "mlp1.fc1", "mlp1.fc2", "mlp2.layernorm", "mlp2.fc1",
                     "mlp2.fc2", "layer_norm"}
    assert pipe.config.force_zeros_for_empty_prompt is True
    assert pipe.vae.config.force_upcast is False
    assert model.revision.startswith("local-")
    assert (model.dtype_name, model.device_name) == ("float32", "cpu")


def test_a_missing_tensor_is_an_error_not_random_weights(tiny_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    weights = broken / "text_encoder_2" / "model.safetensors"
    state = load_file(str(weights))
    state.pop("text_model.final_layer_norm.weight")
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="text_encoder_2.*1 missing"):
        ObjectClearPipeline.from_pretrained(broken)


def test_save_pretrained_round_trip_keeps_the_published_index(model, tmp_path):
    import json

    model.pipeline.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert "image_prompt_encoder" not in index and "postfuse_module" not in index
    assert (tmp_path / "postfuse_module" / "model.safetensors").is_file()
    again = ObjectClearPipeline.from_pretrained(tmp_path)
    for name in ("unet", "postfuse_module", "image_prompt_encoder"):
        ours = getattr(model.pipeline, name).state_dict()
        theirs = getattr(again, name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name


# -- the model ----------------------------------------------------------------------------


def test_progress_per_step_and_output_at_input_size(model):
    context = Recorder()
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
    context = Recorder(cancel_after=2)
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
    with pytest.raises(errors.InvalidArgument) as info:
        model.check(query(**overrides))
    assert [v.field for v in info.value.violations] == [field]


def test_every_bad_field_is_named_at_once(model):
    with pytest.raises(errors.InvalidArgument) as info:
        model.check(query(steps=0, guidance_scale=float("inf"), label="x" * 101,
                          mask=np.zeros((HEIGHT, WIDTH), dtype=bool)))
    assert [v.field for v in info.value.violations] == [
        "options.steps", "options.guidance_scale", "label", "masks"]


def test_compatible_requests_share_a_batch(model, monkeypatch):
    # Different image sizes, same working size: one UNet batch. One caller cancels midway;
    # its batch-mate still gets its result and the cancelled one gets Cancelled.
    monkeypatch.setattr(model, "max_batch_size", 2)
    other = query(image=make_image(90, 70), mask=make_mask(90, 70))  # also runs at 96x80
    small = query(label="cat", seed=7)
    assert model.batch_key(other) == model.batch_key(small)
    keep, cancel = Recorder(), Recorder(cancel_after=1)
    out_other, out_small = model([other, small], [keep, cancel])
    assert isinstance(out_other, ClearOutput) and out_other.image.size == (90, 70)
    assert isinstance(out_small, errors.Cancelled)
    assert keep.events == [(STAGE, 1, 2), (STAGE, 2, 2)]


def test_a_batched_request_gets_the_picture_it_gets_alone(model, monkeypatch):
    # Batching is on by default on a GPU: a caller's result must not depend on its
    # batch-mates (own noise, own object token, own attention map and fusion).
    monkeypatch.setattr(model, "max_batch_size", 3)
    a = query(seed=11)
    b = query(image=make_image(seed=5), label="cat", seed=12)
    c = query(image=make_image(seed=9), mask=~make_mask(), seed=13)
    (alone,) = model([a], [Recorder()])
    batched = model([b, a, c], [Recorder() for _ in range(3)])
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
    assert model.batch_key(short) == (working_size(WIDTH, HEIGHT, SHORT_SIDE), 5, 2.5, True,
                                      False)


# -- the pipeline -------------------------------------------------------------------------


def test_attention_map_has_latent_size_and_unit_range(model):
    pipe = model.pipeline
    out = pipe(make_image(), make_mask(), num_inference_steps=2,
               generator=torch.Generator().manual_seed(0))
    width, height = out.working_size
    assert (width, height) == working_size(WIDTH, HEIGHT) == (96, 80)
    amap = out.attention_maps
    assert amap.shape == (1, 1, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    assert float(amap.min()) == pytest.approx(0.0, abs=1e-6)
    assert float(amap.max()) == pytest.approx(1.0, abs=1e-4)  # (a - min) / (max - min + 1e-8)
    assert out.prefusion.shape == (1, 3, height, width) and out.prefusion.dtype == torch.uint8
    assert out.images[0].size == (WIDTH, HEIGHT)
    assert pipe.attention_capture.capture is False  # only ever on during the last step


@pytest.mark.parametrize(("size", "short_side", "expected"), [
    ((320, 240), 512, (320, 240)),    # below 512: not scaled
    ((640, 480), 512, (640, 480)),
    ((448, 448), 512, (448, 448)),
    ((500, 300), 512, (512, 304)),    # each side rounded UP to 16
    ((800, 600), 512, (688, 512)),    # short side 512, long int(800 * 512 / 600) = 682 -> 688
    ((513, 1000), 512, (512, 1008)),  # int(998.05) = 998 -> 1008
    ((512, 512), 512, (512, 512)),
    ((1000, 750), 384, (512, 384)),   # a caller's own short side: 1000 * 384 / 750 = 512
    ((5, 3), 512, (16, 16)),
])
def test_working_size_is_the_reference_scripts(size, short_side, expected):
    assert working_size(*size, short_side) == expected


def test_the_prompt_is_the_references_unless_a_label_is_asked_for(model):
    assert prompt_for("") == prompt_for("  ") == DEFAULT_PROMPT == "remove the instance of object"
    assert prompt_for("dog") == "remove the instance of dog"
    ids = model.pipeline.tokenizer_2(DEFAULT_PROMPT, padding="max_length", max_length=77).input_ids
    # Token 5 is the word the object embedding replaces; tokenizer_2 pads with "!" (id 0).
    assert ids[:8] == [1175, 1073, 1132, 969, 677, 1030, 1176, 0]


# -- fusion.py alone ----------------------------------------------------------------------


def _smooth_image(height: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, height // 16, width // 16, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic")
    detail = 0.05 * torch.rand(1, 3, height, width, generator=g)
    return ((0.9 * smooth + detail).clamp(0, 1) * 255).round().to(torch.uint8)


def test_fusion_keeps_far_background_and_generated_object():
    h, w = 192, 256
    original = _smooth_image(h, w, seed=0)
    # Attention on a block in the middle (latent grid of 1/8 size).
    amap = torch.zeros(1, 1, h // 8, w // 8)
    amap[..., 10:14, 14:18] = 1.0
    g = torch.Generator().manual_seed(1)
    # The model repaints the object and leaves the background nearly untouched (noise).
    noise = (8 * torch.randn(original.shape, generator=g)).round()
    generated = (original.float() + noise).clamp(0, 255).to(torch.uint8)
    generated[..., 72:120, 104:152] = torch.randint(0, 256, (1, 3, 48, 48), generator=g,
                                                    dtype=torch.uint8)

    fused = fusion.attention_guided_fusion(original, generated, amap)

    assert fused.dtype == torch.uint8 and fused.shape == original.shape
    hard, soft = fusion.fusion_masks(amap, (h, w))
    inside = hard[0, 0] > 0.5
    assert torch.equal(fused[0][:, inside], generated[0][:, inside])
    far = ~masks.dilate_mask(inside, 32)
    assert far.sum() > 0.5 * h * w
    error = (fused[0][:, far].float() - original[0][:, far].float()).abs()
    # The colour fix keeps the original's detail: far closer than the generated pixels.
    assert error.mean() < 2.0 and error.mean() < (
        generated[0][:, far].float() - original[0][:, far].float()).abs().mean() / 3
    # soft = 1 on the hard mask, feathered just outside it, 0 far away.
    assert torch.all(soft >= hard) and soft[0, 0][far].max() == 0


def test_the_pyramid_resamples_as_scipy_zoom_does():
    # zoom(order=1) aligns corners, and gives 0 to a sample whose float64 coordinate falls
    # past the last pixel: 320 -> 160 puts the last column at 159 * (319 / 159) > 319.
    row = torch.arange(320, dtype=torch.float32).view(1, 1, 1, 320).expand(1, 1, 2, 320)
    small = fusion._zoom_linear(row.contiguous(), (1, 160))
    expected = torch.arange(160, dtype=torch.float64) * (319 / 159)
    expected[-1] = 0.0
    torch.testing.assert_close(small[0, 0, 0].double(), expected, atol=1e-3, rtol=0)
    assert fusion._beyond_edge(240, 120) == [] and fusion._beyond_edge(320, 160) == [159]


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
    small = masks.dilate_mask(mask, 3)
    assert torch.equal(small[37:44, 42:49].float(), masks.disk_kernel(3))
    assert small.sum() == masks.disk_kernel(3).sum()
    # Radius above the direct-convolution limit goes through the FFT: same result.
    blob = torch.zeros(1, 1, 80, 90, dtype=torch.bool)
    blob[..., 30:45, 20:70] = True
    blob[..., 5, 5] = True
    direct = masks.binary_dilate(blob, masks.disk_kernel(20)) > 0.5
    assert torch.equal(masks.dilate_mask(blob, 20), direct)
    assert torch.equal(masks.dilate_mask(mask, 0), mask)


def test_model_cpu_offload_reaches_every_component_through_its_hook(tiny_dir):
    # Offload moves a component to the device in its forward hook; a component used
    # without going through it (e.g. a CLIPModel's vision tower called directly) would
    # run off the device. On CPU the moves are no-ops, but the hooks still run.
    pipe = ObjectClearPipeline.from_pretrained(tiny_dir)
    pipe.enable_model_cpu_offload(device="cpu")
    calls = {}
    for name in ("text_encoder", "text_encoder_2", "image_prompt_encoder", "postfuse_module",
                 "unet", "vae"):
        hook = getattr(pipe, name)._hf_hook
        original = hook.pre_forward

        def counted(module, *args, _name=name, _original=original, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _original(module, *args, **kwargs)

        hook.pre_forward = counted
    out = pipe(make_image(), make_mask(), num_inference_steps=2,
               generator=torch.Generator().manual_seed(0))
    assert out.images[0].size == (WIDTH, HEIGHT)
    assert set(calls) == {"text_encoder", "text_encoder_2", "image_prompt_encoder",
                          "postfuse_module", "unet", "vae"}, calls
    assert calls["unet"] == 2 and calls["vae"] == 2  # two steps; one encode, one decode


# -- the result at the input's own size (strategies) -----------------------------------------

BIG_W, BIG_H, BIG_SIDE = 600, 450, 256  # scaled: the model runs at 352x256


def big_query(**overrides) -> ClearQuery:
    mask = np.zeros((BIG_H, BIG_W), dtype=bool)
    mask[300:360, 80:150] = True  # bottom left, away from the attention block below
    return query(image=make_image(BIG_W, BIG_H, seed=4), mask=mask, short_side=BIG_SIDE,
                 label="", **overrides)


def test_working_image_of_a_large_reduction_is_within_45_db_of_the_one_step_bicubic():
    """A reduction over 4x is done in two steps (`REDUCING_GAP`): still the reference's
    picture to the eye; a smaller one is the reference's resampling exactly."""
    from mic2e_services.object_clear.model import _at_working_size

    from tests.photos import detailed_photo

    photo = detailed_photo(2048, 1536)
    mask = np.zeros((1536, 2048), bool)
    mask[600:900, 800:1200] = True
    whole = (0, 0, 2048, 1536)
    for size in ((384, 288), (768, 576)):  # 5.3x: in two steps; 2.7x: in one
        fast, small_mask = _at_working_size(photo, mask, whole, size)
        exact = np.asarray(photo.resize(size, Image.Resampling.BICUBIC), np.float64)
        error = np.mean((np.asarray(fast, np.float64) - exact) ** 2)
        assert fast.size == size and small_mask.shape == (size[1], size[0])
        if size[0] * 4 > 2048:
            assert error == 0
        else:
            assert 0 < error and 10 * np.log10(255**2 / error) > 45


def test_resize_puts_back_exactly_the_region_the_model_repainted(model, monkeypatch):
    """With an attention map we control (hot on one latent block, top right, far from the
    mask), the region put back is the fusion's soft mask of that block together with the
    mask, enlarged to the photo: all of it, and nothing more than its feather around it;
    every other pixel is the input's own."""
    q = big_query()
    width, height = q.working_size()
    latent = np.zeros((height // 8, width // 8), dtype=np.float32)
    latent[2:5, 30:34] = 1.0
    controlled = torch.from_numpy(latent)[None, None]
    monkeypatch.setattr(ObjectClearPipeline, "attention_map",
                        lambda self, hw, cfg: controlled.clone())
    out = run_one(model, q)

    # What must be repainted, derived here: the soft mask > 0 of the block, with the mask
    # at the working size, enlarged nearest-neighbour; and the full-size mask itself.
    _, soft = fusion.fusion_masks(controlled, (height, width))
    mask_w = np.asarray(Image.fromarray(q.mask.astype(np.uint8) * 255).resize(
        (width, height), Image.Resampling.NEAREST)) > 127
    region_w = (soft[0, 0].numpy() > 0) | mask_w
    rows = np.arange(BIG_H) * height // BIG_H
    cols = np.arange(BIG_W) * width // BIG_W
    needed = region_w[rows][:, cols] | q.mask
    changed = out.edit.region()
    # The feather: two working pixels, and one more that bilinear enlarging reaches.
    reach = -(-3 * BIG_W // width)
    assert changed[needed].all(), "part of the repainted region was left out"
    assert not changed[~within(needed, reach + 1)].any(), "more than the region + feather"
    assert changed[:100, 450:].any() and changed[300:360, 80:150].all()  # block and object
    assert np.array_equal(np.asarray(out.image)[~changed], np.asarray(q.image)[~changed])


def test_reference_is_the_pipelines_own_picture(model):
    """`reference` gives what the pipeline (held to the reference by the parity test)
    draws: the working image resized back, every pixel resampled."""
    q = big_query(strategy="reference", seed=3)
    out = run_one(model, q)
    expected = model.pipeline(q.image, q.mask, short_side=BIG_SIDE, num_inference_steps=2,
                              generator=torch.Generator().manual_seed(3)).images[0]
    assert out.edit.box == (0, 0, BIG_W, BIG_H)
    assert np.array_equal(np.asarray(out.image), np.asarray(expected))


def test_crop_runs_the_model_on_the_object_and_its_surroundings(model, monkeypatch):
    q = big_query(strategy="crop")
    frame = q.frame()
    x0, y0, x1, y1 = frame
    # the mask's box (80..150 x 300..360) grown by the margin, then to the short side
    assert x0 <= 80 and x1 >= 150 and y0 <= 300 and y1 >= 360
    assert min(x1 - x0, y1 - y0) >= BIG_SIDE and (x1 - x0) * (y1 - y0) < BIG_W * BIG_H
    seen = []
    original = ObjectClearPipeline.__call__

    def spy(self, image, *args, **kwargs):
        seen.append(image[0].size)
        return original(self, image, *args, **kwargs)

    monkeypatch.setattr(ObjectClearPipeline, "__call__", spy)
    out = run_one(model, q)
    assert seen == [q.working_size()] and q.working_size() == working_size(
        x1 - x0, y1 - y0, BIG_SIDE)
    changed = out.edit.region()
    assert not changed[:, :x0].any() and not changed[:y0].any()
    assert not changed[:, x1:].any() and not changed[y1:].any()
    assert np.array_equal(np.asarray(out.image)[~changed], np.asarray(q.image)[~changed])


@pytest.mark.parametrize(("box", "size", "expected"), [
    ((1000, 1000, 1100, 1100), (4032, 3024), (794, 794, 1306, 1306)),  # a 512 square
    ((0, 0, 50, 40), (4032, 3024), (0, 0, 512, 512)),  # in a corner: shifted inside
    ((100, 100, 1900, 300), (4032, 3024), (0, 0, 2028, 512)),  # margin, then the short side
    ((10, 10, 20, 20), (300, 200), (0, 0, 300, 200)),  # a small image: all of it
])
def test_crop_frame(box, size, expected):
    from mic2e_services.api.object_clear import crop_frame

    assert crop_frame(box, *size, 512) == expected


def test_resize_and_reference_agree_on_the_region_of_a_photo_that_is_not_scaled(model):
    """An image at its working size (sides multiples of 16, short side below 512): on the
    region the model repainted (without fusion: the mask) both strategies give the model's
    pixels; outside it resize keeps the input's, while the reference's picture is the
    model's everywhere (with fusion: the input with its low frequencies moved)."""
    image, mask = make_image(96, 80, seed=9), make_mask(96, 80)
    reference = run_one(model, query(image=image, mask=mask, fusion=False,
                                     strategy="reference"))
    resize = run_one(model, query(image=image, mask=mask, fusion=False))
    region = resize.edit.region()
    assert region[mask].all() and not region[~within(mask, 2)].any()
    assert np.array_equal(np.asarray(resize.image)[mask], np.asarray(reference.image)[mask])
    assert np.array_equal(np.asarray(resize.image)[~region], np.asarray(image)[~region])
    assert not np.array_equal(np.asarray(reference.image)[~region], np.asarray(image)[~region])
