"""The mic2e Python clients: `AsyncClient` (asyncio) and `Client` (blocking).

`AsyncClient` is the implementation; `Client` runs one on a private event-loop thread and
holds no logic of its own. Both talk to the orchestrator (one address for everything) or
directly to a model server; which one is found out once, through grpc.health.v1. Images
go over the wire once per server (`mic2e.image_refs`, the policy the orchestrator uses
too). Streamed calls yield `Progress` events (and, for removals and replacements, a
`Segmented` event) followed by exactly one result. Failures raise the typed exceptions
of `mic2e.errors`.

    from mic2e import Client
    with Client("localhost:50051") as client:
        for event in client.remove_objects("photo.jpg", text="dog"):
            print(event)
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Sequence,
)
from typing import Any, Concatenate, ParamSpec, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mic2e import _convert as cv
from mic2e._requests import (
    clear_options,
    generate_request,
    inpaint_options,
    prompt_request,
    remove_request,
    replace_request,
    text_request,
    with_image,
)
from mic2e.channel import aio_channel
from mic2e.errors import Mic2eError, from_rpc_error
from mic2e.image_refs import ImageReferences
from mic2e.types import (
    BoxT,
    ClearResult,
    GenerateResult,
    InpaintResult,
    Point,
    Progress,
    PromptSegmentation,
    RemoveResult,
    ReplaceResult,
    Segmented,
    TextSegmentation,
)
from mic2e.v1 import (
    common_pb2,
    flux_pb2,
    flux_pb2_grpc,
    object_clear_pb2,
    object_clear_pb2_grpc,
    orchestrator_pb2_grpc,
    segmentation_pb2_grpc,
)

__all__ = ["AsyncClient", "Client", "DEFAULT_ADDRESS"]

#: The orchestrator's default address.
DEFAULT_ADDRESS = "localhost:50051"
_EDIT_SERVICE = "mic2e.v1.EditService"
T = TypeVar("T")


def _error(exc: grpc.RpcError) -> Mic2eError:
    return from_rpc_error(exc.code(), exc.details() or "", exc.trailing_metadata())


class AsyncClient:
    """Asyncio client. Use as an async context manager or await `close()`.

    Args:
        address: ``host:port`` of the orchestrator (default) or of one model server.
        credentials: channel credentials for TLS / mTLS (None: plaintext).
        token: bearer token sent as ``authorization`` metadata.
        timeout: default deadline of every call, in seconds (None: no deadline).
        image_patches: edits (remove, replace, fill, inpaint, clear) ask the server for
            the changed part only and apply it to the image sent, so the result's `image`
            is still the whole picture while a fraction of it travels (default True;
            False: the server sends the whole picture, `data` holds its bytes).
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, *,
                 credentials: grpc.ChannelCredentials | None = None, token: str | None = None,
                 timeout: float | None = None, image_patches: bool = True) -> None:
        self.address = address
        self.timeout = timeout
        self.image_patches = image_patches
        self._channel = aio_channel(address, credentials=credentials)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._refs = ImageReferences()
        self._via_orchestrator: bool | None = None
        self._edit = orchestrator_pb2_grpc.EditServiceStub(self._channel)
        self._seg = segmentation_pb2_grpc.SegmentationServiceStub(self._channel)
        self._clear = object_clear_pb2_grpc.ObjectClearServiceStub(self._channel)
        self._flux = flux_pb2_grpc.FluxServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    def _kw(self, timeout: float | None) -> dict[str, Any]:
        return {"timeout": timeout if timeout is not None else self.timeout,
                "metadata": self._metadata}

    async def health(self, service: str = "", *, timeout: float | None = 5) -> str:
        """The server's grpc.health.v1 status name for `service`."""
        try:
            resp = await self._health.Check(health_pb2.HealthCheckRequest(service=service),
                                            **self._kw(timeout))
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    async def via_orchestrator(self) -> bool:
        """True when `address` is an orchestrator (found out once)."""
        if self._via_orchestrator is None:
            try:
                await self.health(_EDIT_SERVICE)
                self._via_orchestrator = True
            except Mic2eError as exc:
                if exc.code != grpc.StatusCode.NOT_FOUND:
                    raise
                self._via_orchestrator = False
        return self._via_orchestrator

    async def _unary(self, data: bytes | None, call: Callable[[Any], Any]) -> Any:
        try:
            return await self._refs.unary(data, call)
        except grpc.RpcError as exc:
            raise _error(exc) from None

    async def _stream(self, data: bytes | None, call: Callable[[Any], AsyncIterable[Any]],
                      convert: Callable[[Any], T]) -> AsyncIterator[T]:
        """Events of `call`, converted; `data`: its image (sent once, as `_refs` says)."""
        try:
            async for message in self._refs.stream(data, call):
                yield convert(message)
        except grpc.RpcError as exc:
            raise _error(exc) from None

    async def segment_by_text(self, image: cv.ImageInput, text: str, *,
                              score_threshold: float | None = None, max_instances: int = 0,
                              mask_format: str = "png", timeout: float | None = None
                              ) -> TextSegmentation:
        """Every instance of `text` in `image`, best first."""
        stub = self._edit if await self.via_orchestrator() else self._seg
        data = cv.image_bytes(image)
        resp = await self._unary(data, lambda img: stub.SegmentByText(
            text_request(img, text, score_threshold, max_instances, mask_format),
            **self._kw(timeout)))
        return cv.text_segmentation(resp)

    async def segment_by_prompt(self, image: cv.ImageInput, *,
                                points: Sequence[Point | tuple] = (), box: BoxT | None = None,
                                return_alternatives: bool = False, timeout: float | None = None
                                ) -> PromptSegmentation:
        """The one object marked by clicked `points` and/or a `box`."""
        stub = self._edit if await self.via_orchestrator() else self._seg
        data = cv.image_bytes(image)
        resp = await self._unary(data, lambda img: stub.SegmentByPrompt(
            prompt_request(img, points, box, return_alternatives), **self._kw(timeout)))
        return cv.prompt_segmentation(resp)

    async def generate(self, prompt: str, *, width: int | None = None,
                       height: int | None = None, steps: int | None = None,
                       seed: int | None = None, output_format: str = "png",
                       timeout: float | None = None
                       ) -> AsyncIterator[Progress | GenerateResult]:
        """Text to image: `Progress` per step, then one `GenerateResult`."""
        stub = self._edit if await self.via_orchestrator() else self._flux
        req = generate_request(prompt, width, height, steps, seed, output_format)
        async for event in self._stream(None, lambda _: stub.Generate(req, **self._kw(timeout)),
                                        cv.generate_event):
            yield event

    async def clear(self, image: cv.ImageInput, masks: Sequence[cv.MaskInput], *,
                    label: str = "", timeout: float | None = None, **options: Any
                    ) -> AsyncIterator[Progress | ClearResult]:
        """ObjectClear directly on an object-clear server (see `Client.clear`)."""
        data = cv.image_bytes(image)
        mask_msgs = [cv.mask_proto(m) for m in masks]
        opts = clear_options(dict(options), self.image_patches)
        async for event in self._stream(data, lambda img: self._clear.Clear(
                object_clear_pb2.ClearRequest(image=img, masks=mask_msgs, label=label,
                                              options=opts), **self._kw(timeout)),
                lambda m: cv.clear_event(m, data)):
            yield event

    async def inpaint(self, image: cv.ImageInput, masks: Sequence[cv.MaskInput], prompt: str,
                      *, timeout: float | None = None, **options: Any
                      ) -> AsyncIterator[Progress | InpaintResult]:
        """Repaint the masked region from `prompt` with FLUX (a flux server, or through the
        orchestrator): `Progress` per step, then one `InpaintResult`. `options`:
        strength, steps, seed, guidance_scale, mask_dilation, feather, output_format,
        repainted_mask."""
        stub = self._edit if await self.via_orchestrator() else self._flux
        data = cv.image_bytes(image)
        mask_msgs = [cv.mask_proto(m) for m in masks]
        opts = inpaint_options(dict(options), self.image_patches)
        async for event in self._stream(data, lambda img: stub.Inpaint(
                flux_pb2.InpaintRequest(image=img, masks=mask_msgs, prompt=prompt,
                                        options=opts), **self._kw(timeout)),
                lambda m: cv.inpaint_event(m, data)):
            yield event

    async def replace_objects(self, image: cv.ImageInput, replacement: str, *,
                              text: str | None = None, points: Sequence[Point | tuple] = (),
                              box: BoxT | None = None, masks: Sequence[cv.MaskInput] = (),
                              fill_box: BoxT | None = None, min_score: float | None = None,
                              max_instances: int = 0, timeout: float | None = None,
                              **options: Any) -> AsyncIterator[Progress | Segmented
                                                               | ReplaceResult]:
        """Segment the target (text=, points=/box=), or take masks= or everything in
        fill_box=, and repaint it as `replacement` ("a cat"), through the orchestrator:
        `Progress`, `Segmented` (not for masks / fill_box), per-step `Progress`, then one
        `ReplaceResult`. `options` as `inpaint`'s."""
        data = cv.image_bytes(image)
        req = replace_request(common_pb2.Image(), replacement, text, points, box, masks,
                               fill_box, min_score, max_instances, options, self.image_patches)
        async for event in self._stream(data, lambda img: self._edit.ReplaceObjects(
                with_image(req, img), **self._kw(timeout)),
                lambda m: cv.replace_event(m, data)):
            yield event

    async def fill(self, image: cv.ImageInput, box: BoxT, prompt: str, *,
                   timeout: float | None = None, **options: Any
                   ) -> AsyncIterator[Progress | ReplaceResult]:
        """Paint `prompt` into everything inside `box` (x0, y0, x1, y1): `replace_objects`
        with a box target."""
        async for event in self.replace_objects(image, prompt, fill_box=box, timeout=timeout,
                                                **options):
            yield event  # type: ignore[misc]

    async def remove_objects(self, image: cv.ImageInput, *, text: str | None = None,
                             points: Sequence[Point | tuple] = (), box: BoxT | None = None,
                             masks: Sequence[cv.MaskInput] = (), min_score: float | None = None,
                             max_instances: int = 0, mask_dilation: int | None = None,
                             label: str = "", timeout: float | None = None, **options: Any
                             ) -> AsyncIterator[Progress | Segmented | RemoveResult]:
        """Segment (unless `masks`) and remove, through the orchestrator: `Progress`,
        `Segmented` (not for masks), per-step `Progress`, then one `RemoveResult`.
        `options`: steps, guidance_scale, short_side, seed, fusion, strategy ("resize",
        the default: the photo's own pixels outside the repainted region; "crop": the
        model on a crop around the object; "reference": the reference's picture),
        output_format, repainted_mask."""
        data = cv.image_bytes(image)
        req = remove_request(common_pb2.Image(), text, points, box, masks, min_score,
                              max_instances, mask_dilation, label, options, self.image_patches)
        async for event in self._stream(data, lambda img: self._edit.RemoveObjects(
                with_image(req, img), **self._kw(timeout)), lambda m: cv.remove_event(m, data)):
            yield event



P = ParamSpec("P")
R = TypeVar("R")


def _blocking(method: Callable[Concatenate[AsyncClient, P], Awaitable[R]]
              ) -> Callable[Concatenate[Client, P], R]:
    """`Client.<name>`: `AsyncClient.<name>` run to completion, with its signature."""
    @functools.wraps(method)
    def call(self: Client, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._run(method(self._client, *args, **kwargs))
    return call


def _streaming(method: Callable[Concatenate[AsyncClient, P], AsyncIterator[R]]
               ) -> Callable[Concatenate[Client, P], Iterator[R]]:
    """`Client.<name>`: `AsyncClient.<name>`'s events as a plain iterator."""
    @functools.wraps(method)
    def call(self: Client, *args: P.args, **kwargs: P.kwargs) -> Iterator[R]:
        return self._iterate(method(self._client, *args, **kwargs))
    return call


class Client:
    """Blocking client: the same methods as `AsyncClient`, which it runs on a private
    event-loop thread (its streamed calls are plain iterators). Use as a context manager
    or call `close()`. Arguments as `AsyncClient`'s."""

    # The methods, with AsyncClient's signatures and documentation (editors show both).
    health = _blocking(AsyncClient.health)
    via_orchestrator = _blocking(AsyncClient.via_orchestrator)
    segment_by_text = _blocking(AsyncClient.segment_by_text)
    segment_by_prompt = _blocking(AsyncClient.segment_by_prompt)
    generate = _streaming(AsyncClient.generate)
    clear = _streaming(AsyncClient.clear)
    remove_objects = _streaming(AsyncClient.remove_objects)
    inpaint = _streaming(AsyncClient.inpaint)
    replace_objects = _streaming(AsyncClient.replace_objects)
    fill = _streaming(AsyncClient.fill)

    def __init__(self, address: str = DEFAULT_ADDRESS, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="mic2e-client")
        self._thread.start()

        async def make() -> AsyncClient:  # grpc.aio objects belong to the loop they are made on
            return AsyncClient(address, **kwargs)

        self._client = self._run(make())
        self.address, self.timeout = address, self._client.timeout

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self._client.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    def _run(self, coroutine: Any) -> Any:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            # Interrupted while waiting (Ctrl-C in this thread): the coroutine still runs
            # on the loop thread; cancel it there too, so the call stops on the server.
            future.cancel()
            raise

    def _iterate(self, events: AsyncIterator[T]) -> Iterator[T]:
        waiting: list[asyncio.Task[Any]] = []

        async def step() -> T:
            waiting[:] = [asyncio.current_task()]  # type: ignore[list-item]
            return await events.__anext__()

        async def finish() -> None:
            # A wait interrupted in this thread (Ctrl-C) may still be running on the loop:
            # it must have ended before aclose(), which refuses a generator that runs.
            # Submitted after `step`, so `waiting` is already set when this runs.
            for task in waiting:
                if not task.done():
                    task.cancel()
                    await asyncio.wait([task])
            await events.aclose()  # leaving early cancels the call

        try:
            while True:
                try:
                    yield self._run(step())
                except StopAsyncIteration:
                    return
        finally:
            self._run(finish())
