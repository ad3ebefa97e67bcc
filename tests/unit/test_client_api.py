"""The blocking `Client` offers every call of `AsyncClient`, declared in its class body
with the same parameters and documentation (what an editor or `help()` shows), and
blocks or iterates as the call returns one answer or a stream."""

from __future__ import annotations

import inspect

from mic2e import AsyncClient, Client

#: AsyncClient's own methods that are not calls to a server.
NOT_CALLS = {"close"}


def calls() -> list[str]:
    return [name for name, member in vars(AsyncClient).items()
            if not name.startswith("_") and name not in NOT_CALLS and inspect.isfunction(member)]


def test_every_call_of_the_async_client_is_declared_on_the_blocking_one():
    assert len(calls()) >= 10
    for name in calls():
        assert name in vars(Client), f"Client lacks {name}"
        sync, async_ = getattr(Client, name), getattr(AsyncClient, name)
        assert inspect.signature(sync).parameters == inspect.signature(async_).parameters
        assert sync.__doc__ == async_.__doc__ and sync.__doc__


def test_streams_iterate_and_single_answers_block():
    for name in calls():
        streams = inspect.isasyncgenfunction(getattr(AsyncClient, name))
        source = inspect.getsource(Client)
        declared = f"{name} = {'_streaming' if streams else '_blocking'}(AsyncClient.{name})"
        assert declared in source, declared
