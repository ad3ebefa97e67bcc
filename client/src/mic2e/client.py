"""The mic2e Python clients: `Client` (blocking) and `AsyncClient` (asyncio).

Both talk to the orchestrator (one address for everything) or directly to a model server;
which one is found out once, through grpc.health.v1. Images go over the wire once per
server: later calls send only their SHA-256, and the bytes again only if the server
answers NOT_FOUND. Streamed calls yield `Progress` events (and, for removals, a
`Segmented` event) followed by exactly one result. Failures raise the typed exceptions of
`mic2e.errors`.

    from mic2e import Client
    with Client("localhost:50051") as client:
        for event in client.remove_objects("photo.jpg", text="dog"):
            print(event)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mic2e import _convert as cv
from mic2e.channel import aio_channel, sync_channel
from mic2e.errors import Mic2eError, from_rpc_error
from mic2e.types import (
    BoxT,
    ClearResult,
    GenerateResult,
    Point,
    Progress,
    PromptSegmentation,
    RemoveResult,
    Segmented,
    TextSegmentation,
)
from mic2e.v1 import (
    common_pb2,
    flux_pb2,
    flux_pb2_grpc,
    object_clear_pb2,
    object_clear_pb2_grpc,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
)

__all__ = ["AsyncClient", "Client", "DEFAULT_ADDRESS"]

#: The orchestrator's default address.
DEFAULT_ADDRESS = "localhost:50051"
_EDIT_SERVICE = "mic2e.v1.EditService"
T = TypeVar("T")


class _ImageRefs:
    """Which images the server already holds, so a call can send only the SHA-256."""

    def __init__(self) -> None:
        self._known: set[str] = set()

    def proto(self, data: bytes) -> common_pb2.Image:
        from mic2e.codecs import sha256_hex

        digest = sha256_hex(data)
        if digest in self._known:
            return common_pb2.Image(sha256=digest)
        self._known.add(digest)
        return common_pb2.Image(data=data)

    def forget(self, data: bytes) -> bool:
        """The server lost it: forget, so the next call sends bytes. True if it was known."""
        from mic2e.codecs import sha256_hex

        digest = sha256_hex(data)
        if digest in self._known:
            self._known.discard(digest)
            return True
        return False


def _is_lost_image(exc: Mic2eError) -> bool:
    return exc.code == grpc.StatusCode.NOT_FOUND and exc.reason == "IMAGE_NOT_FOUND"


def _error(exc: grpc.RpcError) -> Mic2eError:
    return from_rpc_error(exc.code(), exc.details() or "", exc.trailing_metadata())


# -- request builders shared by both clients -------------------------------------------------
def _text_request(image: common_pb2.Image, text: str, score_threshold: float | None,
                  max_instances: int, mask_format: str) -> segmentation_pb2.SegmentByTextRequest:
    req = segmentation_pb2.SegmentByTextRequest(
        image=image, text=text, max_instances=max_instances,
        mask_format=common_pb2.MASK_FORMAT_RLE if mask_format == "rle"
        else common_pb2.MASK_FORMAT_PNG)
    if score_threshold is not None:
        req.score_threshold = score_threshold
    return req


def _prompt_request(image: common_pb2.Image, points: Iterable[Point | tuple], box: BoxT | None,
                    return_alternatives: bool) -> segmentation_pb2.SegmentByPromptRequest:
    return segmentation_pb2.SegmentByPromptRequest(
        image=image, points=cv.points_proto(points), box=cv.box_proto(box),
        return_alternatives=return_alternatives)


def _generate_request(prompt: str, width: int | None, height: int | None, steps: int | None,
                      seed: int | None, output_format: str) -> flux_pb2.GenerateRequest:
    req = flux_pb2.GenerateRequest(prompt=prompt, output_format=cv.output_format(output_format))
    for name, value in (("width", width), ("height", height), ("steps", steps), ("seed", seed)):
        if value is not None:
            setattr(req, name, value)
    return req


def _clear_options(options: dict[str, Any]) -> object_clear_pb2.ClearOptions:
    """Keyword options -> ClearOptions (None means the server default)."""
    opts = object_clear_pb2.ClearOptions(
        output_format=cv.output_format(options.pop("output_format", "png")),
        mask_dilation=options.pop("mask_dilation", 0) or 0)
    for name, value in options.items():
        if value is not None:
            setattr(opts, name, value)
    return opts


def _remove_request(image: common_pb2.Image, text: str | None, points: Sequence, box: BoxT | None,
                    masks: Sequence[cv.MaskInput], min_score: float | None, max_instances: int,
                    mask_dilation: int | None, label: str, options: dict[str, Any]
                    ) -> orchestrator_pb2.RemoveObjectsRequest:
    given = sum(x for x in (text is not None, bool(points) or box is not None, bool(masks)))
    if given != 1:
        raise ValueError("give exactly one target: text=, points=/box=, or masks=")
    req = orchestrator_pb2.RemoveObjectsRequest(image=image, label=label,
                                                clear_options=_clear_options(dict(options)))
    if text is not None:
        req.text.text = text
        req.text.max_instances = max_instances
        if min_score is not None:
            req.text.min_score = min_score
    elif masks:
        req.masks.masks.extend(cv.mask_proto(m) for m in masks)
    else:
        req.prompt.points.extend(cv.points_proto(points))
        if box is not None:
            req.prompt.box.CopyFrom(cv.box_proto(box))
    if mask_dilation is not None:
        req.mask_dilation = mask_dilation
    return req


class Client:
    """Blocking client. Use as a context manager or call `close()`.

    Args:
        address: ``host:port`` of the orchestrator (default) or of one model server.
        credentials: channel credentials for TLS / mTLS (None: plaintext).
        token: bearer token sent as ``authorization`` metadata.
        timeout: default deadline of every call, in seconds (None: no deadline).
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, *,
                 credentials: grpc.ChannelCredentials | None = None, token: str | None = None,
                 timeout: float | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = sync_channel(address, credentials=credentials)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._refs = _ImageRefs()
        self._via_orchestrator: bool | None = None
        self._edit = orchestrator_pb2_grpc.EditServiceStub(self._channel)
        self._seg = segmentation_pb2_grpc.SegmentationServiceStub(self._channel)
        self._clear = object_clear_pb2_grpc.ObjectClearServiceStub(self._channel)
        self._flux = flux_pb2_grpc.FluxServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _kw(self, timeout: float | None) -> dict[str, Any]:
        return {"timeout": timeout if timeout is not None else self.timeout,
                "metadata": self._metadata}

    # -- health ------------------------------------------------------------------------------
    def health(self, service: str = "", *, timeout: float | None = 5) -> str:
        """The server's grpc.health.v1 status name (e.g. ``SERVING``) for `service`."""
        try:
            resp = self._health.Check(health_pb2.HealthCheckRequest(service=service),
                                      **self._kw(timeout))
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def via_orchestrator(self) -> bool:
        """True when `address` is an orchestrator (found out once)."""
        if self._via_orchestrator is None:
            try:
                self.health(_EDIT_SERVICE)
                self._via_orchestrator = True
            except Mic2eError as exc:
                if exc.code != grpc.StatusCode.NOT_FOUND:
                    raise
                self._via_orchestrator = False
        return self._via_orchestrator

    # -- plumbing ------------------------------------------------------------------------------
    def _unary(self, data: bytes, call: Callable[[common_pb2.Image], T]) -> T:
        for attempt in (0, 1):
            try:
                return call(self._refs.proto(data))
            except grpc.RpcError as exc:
                err = _error(exc)
                if attempt == 0 and _is_lost_image(err) and self._refs.forget(data):
                    continue
                raise err from None
        raise AssertionError("unreachable")

    def _stream(self, data: bytes | None, call: Callable[[common_pb2.Image | None], Iterable[Any]],
                convert: Callable[[Any], T]) -> Iterator[T]:
        for attempt in (0, 1):
            image = self._refs.proto(data) if data is not None else None
            responses = call(image)
            try:
                for msg in responses:
                    yield convert(msg)
                return
            except grpc.RpcError as exc:
                err = _error(exc)
                if (attempt == 0 and data is not None and _is_lost_image(err)
                        and self._refs.forget(data)):
                    continue
                raise err from None
            finally:
                cancel = getattr(responses, "cancel", None)
                if cancel is not None:
                    cancel()  # a caller that stops iterating cancels the server's work

    # -- operations ----------------------------------------------------------------------------
    def segment_by_text(self, image: cv.ImageInput, text: str, *,
                        score_threshold: float | None = None, max_instances: int = 0,
                        mask_format: str = "png", timeout: float | None = None
                        ) -> TextSegmentation:
        """Every instance of `text` in `image`, best first."""
        stub = self._edit if self.via_orchestrator() else self._seg
        data = cv.image_bytes(image)
        resp = self._unary(data, lambda img: stub.SegmentByText(
            _text_request(img, text, score_threshold, max_instances, mask_format),
            **self._kw(timeout)))
        return cv.text_segmentation(resp)

    def segment_by_prompt(self, image: cv.ImageInput, *, points: Sequence[Point | tuple] = (),
                          box: BoxT | None = None, return_alternatives: bool = False,
                          timeout: float | None = None) -> PromptSegmentation:
        """The one object marked by clicked `points` (x, y[, positive]) and/or a `box`."""
        stub = self._edit if self.via_orchestrator() else self._seg
        data = cv.image_bytes(image)
        resp = self._unary(data, lambda img: stub.SegmentByPrompt(
            _prompt_request(img, points, box, return_alternatives), **self._kw(timeout)))
        return cv.prompt_segmentation(resp)

    def generate(self, prompt: str, *, width: int | None = None, height: int | None = None,
                 steps: int | None = None, seed: int | None = None, output_format: str = "png",
                 timeout: float | None = None) -> Iterator[Progress | GenerateResult]:
        """Text to image: `Progress` per step, then one `GenerateResult`."""
        stub = self._edit if self.via_orchestrator() else self._flux
        req = _generate_request(prompt, width, height, steps, seed, output_format)
        return self._stream(None, lambda _: stub.Generate(req, **self._kw(timeout)),
                            cv.generate_event)

    def clear(self, image: cv.ImageInput, masks: Sequence[cv.MaskInput], *, label: str = "",
              timeout: float | None = None, **options: Any) -> Iterator[Progress | ClearResult]:
        """ObjectClear directly on an object-clear server: remove what `masks` cover.

        `options`: steps, guidance_scale, short_side, seed, fusion, mask_dilation,
        output_format - unset ones take the server's defaults (the reference ObjectClear's).
        `label`: empty for the reference's prompt; a word in place of its "object" departs
        from the reference and changes the picture.
        """
        data = cv.image_bytes(image)
        mask_msgs = [cv.mask_proto(m) for m in masks]
        opts = _clear_options(dict(options))
        return self._stream(data, lambda img: self._clear.Clear(
            object_clear_pb2.ClearRequest(image=img, masks=mask_msgs, label=label, options=opts),
            **self._kw(timeout)), cv.clear_event)

    def remove_objects(self, image: cv.ImageInput, *, text: str | None = None,
                       points: Sequence[Point | tuple] = (), box: BoxT | None = None,
                       masks: Sequence[cv.MaskInput] = (), min_score: float | None = None,
                       max_instances: int = 0, mask_dilation: int | None = None,
                       label: str = "", timeout: float | None = None, **options: Any
                       ) -> Iterator[Progress | Segmented | RemoveResult]:
        """Segment (unless `masks`) and remove, through the orchestrator.

        Exactly one target: `text`, `points`/`box`, or `masks`. Yields `Progress`, one
        `Segmented` (not for masks), more `Progress`, then one `RemoveResult`.
        """
        data = cv.image_bytes(image)
        build = lambda img: _remove_request(img, text, points, box, masks, min_score,  # noqa: E731
                                            max_instances, mask_dilation, label, options)
        build(common_pb2.Image())  # validate arguments before any network traffic
        return self._stream(data, lambda img: self._edit.RemoveObjects(
            build(img), **self._kw(timeout)), cv.remove_event)


class AsyncClient:
    """The asyncio twin of `Client`: same arguments, `await` / `async for` everywhere."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *,
                 credentials: grpc.ChannelCredentials | None = None, token: str | None = None,
                 timeout: float | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = aio_channel(address, credentials=credentials)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._refs = _ImageRefs()
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

    async def _unary(self, data: bytes, call: Callable[[common_pb2.Image], Any]) -> Any:
        for attempt in (0, 1):
            try:
                return await call(self._refs.proto(data))
            except grpc.RpcError as exc:
                err = _error(exc)
                if attempt == 0 and _is_lost_image(err) and self._refs.forget(data):
                    continue
                raise err from None
        raise AssertionError("unreachable")

    async def _stream(self, data: bytes | None, call: Callable[[common_pb2.Image | None], Any],
                      convert: Callable[[Any], T]) -> AsyncIterator[T]:
        for attempt in (0, 1):
            image = self._refs.proto(data) if data is not None else None
            responses = call(image)
            try:
                async for msg in responses:
                    yield convert(msg)
                return
            except grpc.RpcError as exc:
                err = _error(exc)
                if (attempt == 0 and data is not None and _is_lost_image(err)
                        and self._refs.forget(data)):
                    continue
                raise err from None
            finally:
                responses.cancel()  # a caller that stops iterating cancels the server's work

    async def segment_by_text(self, image: cv.ImageInput, text: str, *,
                              score_threshold: float | None = None, max_instances: int = 0,
                              mask_format: str = "png", timeout: float | None = None
                              ) -> TextSegmentation:
        """Every instance of `text` in `image`, best first."""
        stub = self._edit if await self.via_orchestrator() else self._seg
        data = cv.image_bytes(image)
        resp = await self._unary(data, lambda img: stub.SegmentByText(
            _text_request(img, text, score_threshold, max_instances, mask_format),
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
            _prompt_request(img, points, box, return_alternatives), **self._kw(timeout)))
        return cv.prompt_segmentation(resp)

    async def generate(self, prompt: str, *, width: int | None = None,
                       height: int | None = None, steps: int | None = None,
                       seed: int | None = None, output_format: str = "png",
                       timeout: float | None = None
                       ) -> AsyncIterator[Progress | GenerateResult]:
        """Text to image: `Progress` per step, then one `GenerateResult`."""
        stub = self._edit if await self.via_orchestrator() else self._flux
        req = _generate_request(prompt, width, height, steps, seed, output_format)
        async for event in self._stream(None, lambda _: stub.Generate(req, **self._kw(timeout)),
                                        cv.generate_event):
            yield event

    async def clear(self, image: cv.ImageInput, masks: Sequence[cv.MaskInput], *,
                    label: str = "", timeout: float | None = None, **options: Any
                    ) -> AsyncIterator[Progress | ClearResult]:
        """ObjectClear directly on an object-clear server (see `Client.clear`)."""
        data = cv.image_bytes(image)
        mask_msgs = [cv.mask_proto(m) for m in masks]
        opts = _clear_options(dict(options))
        async for event in self._stream(data, lambda img: self._clear.Clear(
                object_clear_pb2.ClearRequest(image=img, masks=mask_msgs, label=label,
                                              options=opts), **self._kw(timeout)),
                cv.clear_event):
            yield event

    async def remove_objects(self, image: cv.ImageInput, *, text: str | None = None,
                             points: Sequence[Point | tuple] = (), box: BoxT | None = None,
                             masks: Sequence[cv.MaskInput] = (), min_score: float | None = None,
                             max_instances: int = 0, mask_dilation: int | None = None,
                             label: str = "", timeout: float | None = None, **options: Any
                             ) -> AsyncIterator[Progress | Segmented | RemoveResult]:
        """Segment (unless `masks`) and remove, through the orchestrator (see `Client`)."""
        data = cv.image_bytes(image)
        build = lambda img: _remove_request(img, text, points, box, masks, min_score,  # noqa: E731
                                            max_instances, mask_dilation, label, options)
        build(common_pb2.Image())
        async for event in self._stream(data, lambda img: self._edit.RemoveObjects(
                build(img), **self._kw(timeout)), cv.remove_event):
            yield event
