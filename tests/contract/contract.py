"""The contract every model server's model keeps (as diffusers' `PipelineTesterMixin`).

Subclass `ModelContract` in a `Test...` class and fill in the hooks below; the tests come
with it. They run the real model on its tiny checkpoint, behind its real gRPC server on
loopback where the contract is a status code:

- it loads its tiny checkpoint through the ordinary loading path;
- a request with bad fields gets INVALID_ARGUMENT naming all of them, and is never costed
  or queued;
- cancelling stops it within one step; a request cancelled before its batch starts gets
  no device time, and one cancelled while its batch runs gets CANCELLED while its
  batch-mate's result is what it gets alone;
- a request batched with others gets what it gets alone;
- out of memory is RESOURCE_EXHAUSTED, and the next request succeeds;
- called before `load()` it answers UNAVAILABLE;
- every result's provenance is complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
import pytest_asyncio
from google.rpc import code_pb2, error_details_pb2
from mic2e_services import errors
from mic2e_services.runtime.status import to_status

from tests.conftest import serving
from tests.fakes import Recorder
from tests.grpc_helpers import detail, rich_status


class ModelContract:
    """Hooks a model's test class provides (see the three in test_models.py)."""

    #: The server module (`Settings`, `create_server`, `build_model`).
    server_module: ClassVar[Any]
    #: The session fixture that writes the tiny checkpoint (tests/conftest.py).
    checkpoint_fixture: ClassVar[str]
    #: Settings beyond the checkpoint (e.g. a text threshold the random weights pass).
    settings: ClassVar[dict[str, Any]] = {}
    #: Steps of `query()`; 1 for a model without steps.
    steps: ClassVar[int]

    def query(self, variant: int = 0) -> Any:
        """A valid, cheap plain request; `variant` changes its content, not its batch key."""
        raise NotImplementedError

    def bad_query(self) -> tuple[Any, list[str]]:
        """A plain request with several bad fields, and their API names in order."""
        raise NotImplementedError

    async def call(self, channel: grpc.aio.Channel, bad: bool = False) -> Any:
        """One RPC of the server (a bad one with `bad`); its final message."""
        raise NotImplementedError

    def same(self, a: Any, b: Any) -> bool:
        """Whether two results of `query` agree (pictures or masks)."""
        raise NotImplementedError

    def heavy_module(self, model: Any) -> Any:
        """A torch module every request runs (where out of memory is injected)."""
        raise NotImplementedError

    def forget(self, model: Any) -> None:
        """Drop what the model keeps between calls (a cache would hide device work)."""

    # -- fixtures ----------------------------------------------------------------------

    @pytest.fixture(scope="class")
    @classmethod
    def checkpoint(cls, request: pytest.FixtureRequest) -> Path:
        return request.getfixturevalue(cls.checkpoint_fixture)

    @pytest_asyncio.fixture(scope="class", loop_scope="class")
    @classmethod
    async def served(cls, checkpoint: Path):
        settings = cls.server_module.Settings(host="127.0.0.1", port=0, device="cpu",
                                              model=str(checkpoint), **cls.settings)
        async with serving(cls.server_module.create_server(settings)) as (server, channel):
            yield server, channel

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, served: Any) -> Any:
        return served[0].worker.model

    def run(self, model: Any, queries: list[Any], contexts: list[Any] | None = None) -> list:
        results = model(queries, contexts or [Recorder() for _ in queries])
        assert len(results) == len(queries)
        return results

    # -- the contract ------------------------------------------------------------------

    def test_loads_its_tiny_checkpoint(self, model: Any, checkpoint: Path) -> None:
        # Named by its folder, never its path on the server.
        assert model.loaded and model.model_id == checkpoint.name
        assert model.revision.startswith("local-")
        assert (model.dtype_name, model.device_name) == ("float32", "cpu")
        (result,) = self.run(model, [self.query()])
        assert not isinstance(result, BaseException), result

    @pytest.mark.asyncio(loop_scope="class")
    async def test_bad_fields_are_invalid_argument_naming_all_of_them(self, served: Any
                                                                       ) -> None:
        server, channel = served
        query, fields = self.bad_query()
        with pytest.raises(errors.InvalidArgument) as info:
            server.worker.model.check(query)
        assert [v.field for v in info.value.violations] == fields
        before = server.worker.stats()
        call = self.call(channel, bad=True)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        bad = detail(await rich_status(failed.value), error_details_pb2.BadRequest)
        assert len(bad.field_violations) > 1
        # Refused before it was costed or queued: the backlog never saw it.
        after = server.worker.stats()
        assert (after.queued, after.queued_seconds, after.requests_run) == (
            0, 0.0, before.requests_run)

    def test_cancel_stops_within_one_step(self, model: Any) -> None:
        cancel_after = 1 if self.steps > 1 else 0
        context = Recorder(cancel_after=cancel_after)
        try:
            (result,) = self.run(model, [self.query()], [context])
        except errors.Cancelled:
            result = errors.Cancelled("raised")
        assert isinstance(result, errors.Cancelled), result
        assert len(context.events) <= cancel_after + 1
        assert self.steps == 1 or len(context.events) < self.steps

    def rows_run(self, model: Any, monkeypatch: pytest.MonkeyPatch, queries: list[Any],
                 contexts: list[Any]) -> tuple[list, list[int]]:
        """The results of a batch, and the batch size of each call of the heavy module
        while it ran (how much device work it spent)."""
        module = self.heavy_module(model)
        original, rows = module.forward, []

        def forward(*args: Any, **kwargs: Any) -> Any:
            tensor = next(a for a in (*args, *kwargs.values()) if hasattr(a, "shape"))
            rows.append(int(tensor.shape[0]))
            return original(*args, **kwargs)

        self.forget(model)
        with monkeypatch.context() as patch:
            patch.setattr(module, "forward", forward)
            try:
                results = self.run(model, queries, contexts)
            except errors.Cancelled as exc:
                results = [exc] * len(queries)
        return results, rows

    def test_a_request_cancelled_before_its_batch_gets_no_device_time(
            self, model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        alone, rows_alone = self.rows_run(model, monkeypatch, [self.query(0)], [Recorder()])
        results, rows = self.rows_run(model, monkeypatch, [self.query(1), self.query(0)],
                                      [Recorder(cancel_after=0), Recorder()])
        assert isinstance(results[0], errors.Cancelled), results[0]
        assert self.same(alone[0], results[1])
        # The same device work as the live request alone: the cancelled one never ran.
        assert rows == rows_alone and rows

    def test_requests_all_cancelled_before_their_batch_run_nothing(
            self, model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        queries = [self.query(0), self.query(1)]
        contexts = [Recorder(cancel_after=0), Recorder(cancel_after=0)]
        results, rows = self.rows_run(model, monkeypatch, queries, contexts)
        assert all(isinstance(r, errors.Cancelled) for r in results), results
        assert rows == [] and all(c.events == [] for c in contexts)

    def test_a_request_cancelled_during_its_batch_is_cancelled_its_mate_is_not(
            self, model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        alone, _ = self.rows_run(model, monkeypatch, [self.query(0)], [Recorder()])
        leaving, staying = Recorder(cancel_after=1), Recorder()
        results, rows = self.rows_run(model, monkeypatch, [self.query(1), self.query(0)],
                                      [leaving, staying])
        assert isinstance(results[0], errors.Cancelled), results[0]
        assert self.same(alone[0], results[1])
        # The one who left heard no more steps; the one who stayed heard every step.
        assert len(leaving.events) == 1 and len(staying.events) == self.steps

    def test_a_batched_request_gets_what_it_gets_alone(self, model: Any) -> None:
        alone, other = self.query(0), self.query(1)
        assert model.batch_key(alone) == model.batch_key(other)
        (single,) = self.run(model, [alone])
        batch = self.run(model, [other, alone])
        assert self.same(single, batch[1])
        assert not self.same(batch[0], batch[1])  # and the batch-mate is another request

    @pytest.mark.asyncio(loop_scope="class")
    async def test_out_of_memory_is_resource_exhausted_then_the_next_succeeds(
            self, served: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        import torch

        server, channel = served
        module = self.heavy_module(server.worker.model)
        original = module.forward
        failures = [torch.OutOfMemoryError("CUDA out of memory (injected by the test)")]

        def forward(*args: Any, **kwargs: Any) -> Any:
            if failures:
                raise failures.pop()
            return original(*args, **kwargs)

        monkeypatch.setattr(module, "forward", forward)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await self.call(channel)
        assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = detail(await rich_status(failed.value), error_details_pb2.ErrorInfo)
        assert info.reason == "OUT_OF_MEMORY"
        assert await self.call(channel)  # the server goes on serving

    def test_not_loaded_is_unavailable(self, checkpoint: Path) -> None:
        model = self.server_module.build_model(self.server_module.Settings(
            model=str(checkpoint), device="cpu", **self.settings))
        with pytest.raises(errors.Unavailable) as info:
            model([self.query()], [Recorder()])
        assert to_status(info.value).code == code_pb2.UNAVAILABLE

    @pytest.mark.asyncio(loop_scope="class")
    async def test_provenance_is_complete(self, served: Any, checkpoint: Path) -> None:
        server, channel = served
        provenance = (await self.call(channel)).provenance
        assert provenance.server == server.metrics.server
        assert provenance.model_id == checkpoint.name and "/" not in provenance.model_id
        assert provenance.revision.startswith("local-")
        assert (provenance.dtype, provenance.device) == ("float32", "cpu")
        stages = [t.stage for t in provenance.timings]
        # queue, the model's run, then (masked edits) the parts around the model
        assert stages[0] == "queue" and len(stages) >= 2
        assert set(stages[2:]) <= {"decode", "prepare", "composite", "encode"}, stages
        if self.steps > 1:
            assert provenance.steps == self.steps and provenance.seed == 1

