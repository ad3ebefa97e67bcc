"""FLUX inpainting's model side, without a server: the shared weights stay as loaded,
and the masks it hands the pipeline and the compositor are the ones the API promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mic2e_services.api.flux import inpaint_working_size
from mic2e_services.flux.model import FluxGenerator, _working_mask
from mic2e_services.regions import feathered as _feathered

from tests.masks import within


def test_half_precision_weights_stay_as_loaded_when_inpaint_is_first_used(tiny_flux):
    # In float16 transformers keeps T5's `wo` layers in float32 (T5 overflows in fp16);
    # a pipeline made with `from_pipe(dtype=...)` would cast them in place, changing
    # Generate's numbers and the resident bytes.
    model = FluxGenerator(str(tiny_flux), dtype="float16")
    model.load()
    dtypes = {(name, key): p.dtype for name, part in model._pipe.components.items()
              if isinstance(part, torch.nn.Module) for key, p in part.named_parameters()}
    assert torch.float32 in dtypes.values(), "nothing kept in float32: nothing to check"
    before = model.resident_parameters()
    pipe = model.inpaint_pipeline()
    assert {(name, key): p.dtype for name, part in model._pipe.components.items()
            if isinstance(part, torch.nn.Module) for key, p in part.named_parameters()} == dtypes
    assert model.resident_parameters() == before
    assert pipe.transformer is model._pipe.transformer


@pytest.mark.parametrize(("size", "line"), [((96, 64), 33), ((3000, 2000), 1500)])
def test_a_thin_mask_reaches_the_latents(size, line):
    # The pipeline samples the mask once per 8x8 latent cell (nearest): a one-pixel line
    # between two samples, or any thin line once a large image is scaled down, would be
    # left out and silently not repainted.
    from diffusers.image_processor import VaeImageProcessor

    width, height = size
    mask = np.zeros((height, width), bool)
    mask[:, line] = True
    w, h = inpaint_working_size(width, height)
    image = _working_mask(mask, w, h, torch.device("cpu"))
    assert image.size == (w, h)
    processed = VaeImageProcessor(vae_scale_factor=16, do_normalize=False, do_binarize=True,
                                  do_convert_grayscale=True).preprocess(image, h, w)
    latent = torch.nn.functional.interpolate(processed, size=(h // 8, w // 8))
    columns = latent[0, 0].amax(dim=0)
    assert 1 <= columns.sum() <= 2 and columns[line * w // width // 8] == 1


@pytest.mark.parametrize("feather", [1, 6, 9])
def test_feathering_only_the_masks_box_equals_feathering_the_whole_image(feather):
    h, w = 80, 120
    mask = np.zeros((h, w), bool)
    mask[30:40, 50:58] = True  # well inside
    mask[0:5, 110:120] = True  # at a corner: the blur meets the image's edge
    alpha, (x0, y0, x1, y1) = _feathered(mask, feather)
    placed = np.zeros((h, w), np.float32)
    placed[y0:y1, x0:x1] = alpha
    # The same weights, computed on the whole image with 2-D boxes: the mask grown by a
    # square of half the feather, then blurred over the rest.
    grow, blur = feather // 2, feather - feather // 2
    grown = torch.nn.functional.max_pool2d(torch.from_numpy(mask).float()[None, None],
                                           2 * grow + 1, stride=1, padding=grow)
    whole = torch.nn.functional.avg_pool2d(grown, 2 * blur + 1, stride=1, padding=blur,
                                           count_include_pad=False)[0, 0]
    whole = torch.maximum(whole, torch.from_numpy(mask).float()).numpy()
    np.testing.assert_allclose(placed, whole, atol=1e-6)
    assert ((placed > 0) & (placed < 1)).any(), "an odd or small feather still blends"
    assert (placed[~within(mask, feather)] == 0).all()


class _LeavesAfter:
    """A StepContext whose caller leaves once the worker has looked `checks` times."""

    def __init__(self, checks: int) -> None:
        self.checks, self.events = checks, []

    def cancelled(self) -> bool:
        self.checks -= 1
        return self.checks < 0

    def progress(self, stage: str, step: int, total: int) -> None:
        self.events.append(step)


def test_the_work_before_the_first_step_stops_when_the_caller_leaves(tiny_flux, monkeypatch):
    """A caller who leaves while a large photo is being prepared (mask growth, resizing)
    frees the server before any denoising: the pipeline never runs."""
    from mic2e_services import errors
    from mic2e_services.api.flux import InpaintQuery
    from PIL import Image

    model = FluxGenerator(str(tiny_flux))
    model.load()
    ran = []
    monkeypatch.setattr(type(model.inpaint_pipeline()), "__call__",
                        lambda *a, **k: ran.append(1))
    mask = np.zeros((3024, 4032), bool)
    mask[1000:1200, 1000:1300] = True
    query = InpaintQuery(Image.new("RGB", (4032, 3024), "gray"), mask, "a cat", steps=4)
    for checks in (1, 2):  # gone after the first look, or after the mask's growth
        context = _LeavesAfter(checks)
        with pytest.raises(errors.Cancelled, match="before inpainting"):
            model.run([query], [context])
        assert context.events == [] and ran == [] and context.checks < 0
