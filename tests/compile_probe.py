"""One server start with torch.compile (Inductor) on the tiny SAM3, in its own process.

Run as ``python -m tests.compile_probe CHECKPOINT CACHE_DIR``: loads the model as the
segmentation server does, answers a text and a click query eagerly, then compiles the
ViT through the model's own `enable_compile` (what the `compile` setting calls), answers
them again and prints one JSON line: Inductor's cache counters and the mask IoU of
compiled against eager. A fresh process per start is what a restart is: nothing of the
first compile survives in memory, only in CACHE_DIR.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import PIL.Image


def main(checkpoint: str, cache_dir: str) -> None:
    from mic2e_services.runtime.model_api import CompileSpec, QuietContext
    from mic2e_services.segmentation.model import PromptQuery, Sam3Segmenter, TextQuery
    from torch._dynamo.utils import counters

    model = Sam3Segmenter(checkpoint, device="cpu")
    model.load()
    rng = np.random.default_rng(3)
    image = PIL.Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    ctx = [QuietContext()]

    def answer() -> list[np.ndarray]:
        model.clear_cache()
        (text,) = model([TextQuery(image=image, image_key="probe", text="dog",
                                   score_threshold=0.0, max_instances=4)], ctx)
        (click,) = model([PromptQuery(image=image, image_key="probe",
                                      points=((64.0, 48.0, True),))], ctx)
        return [s.mask for s in text.instances] + [click.best.mask]

    eager = answer()
    model.enable_compile(CompileSpec(backend="inductor", mode="default", cache_dir=cache_dir))
    compiled = answer()

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        union = np.logical_or(a, b).sum()
        return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)

    print(json.dumps({
        "fxgraph_cache_miss": counters["inductor"]["fxgraph_cache_miss"],
        "fxgraph_cache_hit": counters["inductor"]["fxgraph_cache_hit"],
        "masks": len(eager),
        "min_iou": min(iou(a, b) for a, b in zip(eager, compiled, strict=True)),
    }))


if __name__ == "__main__":
    main(*sys.argv[1:3])
