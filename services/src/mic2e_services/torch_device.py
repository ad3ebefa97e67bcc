"""Device and dtype choices shared by the model modules (imports torch: model side only)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from mic2e_services import errors
from mic2e_services.runtime.model_api import CompileSpec

log = logging.getLogger(__name__)

#: Recompiles allowed per compiled function before torch falls back to eager for new
#: shapes. Torch's default (8) is close to the variants a server can meet (sizes,
#: batches, ObjectClear's attention-capture step); a silent fallback to eager would look
#: like a slow server, so allow well beyond them.
_RECOMPILE_LIMIT = 64

# Messages of CUDA errors after which the context is unusable: every later call fails too.
_FATAL_CUDA = ("illegal memory access", "unspecified launch failure", "device-side assert",
               "CUDA error: an illegal instruction", "misaligned address",
               "uncorrectable ECC error", "device not ready", "CUDA driver", "launch timed out")

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps`` -> a torch.device, refusing absent ones early."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available")
    return dev


def resolve_dtype(dtype: str | None, device: torch.device, *, half: torch.dtype) -> torch.dtype:
    """The compute dtype: the named one, else ``half`` on an accelerator and fp32 on CPU.

    Half precision on CPU is slow and poorly supported, hence fp32 there by default.
    """
    if dtype:
        try:
            return _DTYPES[dtype.lower()]
        except KeyError:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None
    return torch.float32 if device.type == "cpu" else half


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (as reported in provenance)."""
    return str(dtype).removeprefix("torch.")


def translate_error(exc: BaseException) -> BaseException | None:
    """Map a device failure to a domain error; None for anything else.

    Out of memory gives cached blocks back and becomes RESOURCE_EXHAUSTED (the server
    keeps serving); a dead CUDA context becomes `errors.DeviceLost` (the server exits).
    """
    if isinstance(exc, torch.OutOfMemoryError):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return errors.ResourceExhausted(f"out of device memory: {str(exc).splitlines()[0]}",
                                        retry_after_s=1.0, reason="OUT_OF_MEMORY")
    if isinstance(exc, RuntimeError) and any(m in str(exc) for m in _FATAL_CUDA):
        return errors.DeviceLost(f"the device failed: {str(exc).splitlines()[0]}")
    return None


def check_memory_options(device: torch.device, *, quantization: str = "none",
                         offload: str = "none", compile: CompileSpec | None = None) -> None:
    """Refuse, before anything loads, a memory mode this device cannot run.

    The message names the setting, so an operator knows what to change.
    """
    if compile is not None and offload != "none":
        # Offload moves the weights on and off the device on every call: new addresses
        # each time defeat CUDA graphs, and the hooks break the compiled graph.
        raise ValueError(f"compile with offload={offload!r} is not supported: offload "
                         "moves the weights every call; set MIC2E_COMPILE=0 or "
                         "MIC2E_OFFLOAD=none")
    if offload != "none" and device.type == "cpu":
        raise ValueError(f"offload={offload!r} moves idle parts off an accelerator, but "
                         "device is 'cpu'; set MIC2E_OFFLOAD=none (--offload none)")
    if quantization == "fp8":
        capable = (device.type == "cuda"
                   and torch.cuda.get_device_capability(device) >= (8, 9))
        if not capable:
            raise ValueError("quantization='fp8' needs a CUDA GPU with compute capability "
                             f"8.9 or newer (Ada, Hopper), not {device}; set "
                             "MIC2E_QUANTIZATION=int8 or none")
    if quantization not in ("none", "int8", "fp8"):
        raise ValueError(f"unknown quantization {quantization!r}; use none, int8 or fp8")


def quantize_weights(module: torch.nn.Module, quantization: str,
                     device: torch.device | None = None) -> None:
    """Weight-only quantisation of `module`'s linear layers in place (torchao).

    int8 halves a bf16/fp16 model's weight memory; fp8 does the same with fp8 kernels on
    GPUs that have them. Activations stay in the compute dtype. With `device`, each layer
    moves there just before it is quantised, so a module loaded in CPU memory reaches a
    small card already quantised: the full-precision weights never sit on it together.
    """
    if quantization == "none":
        return
    from torchao.quantization import (
        Float8WeightOnlyConfig,
        Int8WeightOnlyConfig,
        quantize_,
    )

    config = Int8WeightOnlyConfig() if quantization == "int8" else Float8WeightOnlyConfig()

    def plain_linear(layer: torch.nn.Module, fqn: str) -> bool:
        # Skips layers already quantised through a module shared with another model
        # (SAM3's ViT is held by both its detector and its tracker).
        return isinstance(layer, torch.nn.Linear) and type(layer.weight) is torch.nn.Parameter

    quantize_(module, config, filter_fn=plain_linear,
              device=device if device is not None and device.type != "cpu" else None)


def configure_compile_cache(cache_dir: str | None) -> None:
    """Point Inductor's and Triton's on-disk caches at `cache_dir`.

    Inductor reads TORCHINDUCTOR_CACHE_DIR whenever it looks for its cache, not at
    import, so setting it before the first compile is enough. The FX-graph and
    AOT-autograd caches then survive restarts: a warm restart re-traces but skips code
    generation and autotuning, which is most of the 80-100 s a cold compile costs.
    Triton's kernel cache goes beside it, over any TRITON_CACHE_DIR inherited (the
    image points that at /tmp for its read-only root), so it survives too.
    """
    if cache_dir is None:
        return
    path = Path(cache_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    os.environ["TRITON_CACHE_DIR"] = str(path / "triton")
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True


def compile_module(module: torch.nn.Module, spec: CompileSpec, *,
                   dynamic: bool | None = None) -> Callable[[], None]:
    """torch.compile `module` in place (compiled at its first call); returns an undo.

    In place (``nn.Module.compile``) rather than a wrapper: the module keeps its identity,
    so a pipeline reading ``transformer.config`` or two models sharing one backbone see
    the compiled module without any attribute being swapped. The first call (warm-up)
    pays the compilation, so the server is SERVING only once it is done. `dynamic`: as
    torch.compile's (None: static first, dynamic after a second shape; True: dynamic
    sizes from the first compile, for modules whose inputs vary in several dimensions).
    """
    configure_compile_cache(spec.cache_dir)
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, _RECOMPILE_LIMIT)
    dynamo_config.accumulated_recompile_limit = max(
        dynamo_config.accumulated_recompile_limit, 4 * _RECOMPILE_LIMIT)
    options: dict[str, object] = {"backend": spec.backend, "dynamic": dynamic}
    if spec.backend == "inductor" and spec.mode and spec.mode != "default":
        options["mode"] = spec.mode  # other backends take no mode (and warn about one)
    module.compile(**options)
    log.info("compiling %s at first call: %s", type(module).__name__, options)

    def undo() -> None:
        module._compiled_call_impl = None  # what nn.Module.compile set; eager again

    return undo


def memory_stats(device: torch.device) -> dict[str, float]:
    """Allocator figures in bytes (allocated, reserved, peak); empty off CUDA."""
    if device.type != "cuda":
        return {}
    return {"allocated": float(torch.cuda.memory_allocated(device)),
            "reserved": float(torch.cuda.memory_reserved(device)),
            "peak": float(torch.cuda.max_memory_allocated(device))}
