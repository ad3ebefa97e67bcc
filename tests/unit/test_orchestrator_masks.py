"""The masks the orchestrator builds without decoding pixels (RLE runs only): a box, and
the union of what segmentation found past the model servers' mask limit."""

from __future__ import annotations

import numpy as np
import pytest
from mic2e import codecs
from mic2e.v1 import common_pb2
from mic2e_services.orchestrator import convert as msgs
from mic2e_services.schema import MASKS
from PIL import Image


def rle(mask: np.ndarray) -> common_pb2.Mask:
    h, w = mask.shape
    return common_pb2.Mask(width=w, height=h, rle=common_pb2.Rle(counts=codecs.rle_encode(mask)))


def decoded(mask: common_pb2.Mask) -> np.ndarray:
    return codecs.rle_decode(list(mask.rle.counts), mask.width, mask.height)


@pytest.mark.parametrize("seed", range(5))
def test_the_union_of_rle_masks_is_their_pixels_or(seed):
    rng = np.random.default_rng(seed)
    h, w = 23, 31
    masks = [rng.random((h, w)) < p for p in (0.0, 0.05, 0.3, 0.9)]
    masks.append(np.ones((h, w), bool) if seed == 0 else masks[2])  # all on; a duplicate
    merged = msgs.union([rle(m) for m in masks])
    assert (merged.width, merged.height) == (w, h)
    np.testing.assert_array_equal(decoded(merged), np.logical_or.reduce(masks))


def test_past_the_mask_limit_segmentation_finds_one_union():
    h, w = 20, 50
    found = []
    for i in range(MASKS.max_items + 8):  # 40 small objects, some touching
        m = np.zeros((h, w), bool)
        m[i % h, i: i + 3] = True
        found.append(m)
    instances = [common_pb2.Instance(mask=rle(m)) for m in found]
    assert len(msgs.found_masks(instances[:MASKS.max_items])) == MASKS.max_items
    (merged,) = msgs.found_masks(instances)
    np.testing.assert_array_equal(decoded(merged), np.logical_or.reduce(found))


@pytest.mark.parametrize("box", [(2.5, 3.0, 7.2, 9.0), (0, 0, 16, 12), (15, 11, 16, 12),
                                 (0, 5, 16, 6)])
def test_a_box_becomes_every_pixel_it_touches(box):
    data = codecs.encode_image(Image.new("RGB", (16, 12)))
    mask = decoded(msgs.box_mask(common_pb2.Box(x0=box[0], y0=box[1], x1=box[2], y1=box[3]),
                               data))
    expected = np.zeros((12, 16), bool)
    x0, y0, x1, y1 = (int(np.floor(box[0])), int(np.floor(box[1])), int(np.ceil(box[2])),
                      int(np.ceil(box[3])))
    expected[y0:y1, x0:x1] = True
    np.testing.assert_array_equal(mask, expected)
