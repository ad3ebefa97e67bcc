"""The HTTP port's own layer (no RPC): the playground's static files and CORS preflight."""

from __future__ import annotations

import httpx
import pytest
from mic2e_services.runtime.http import HttpFront

pytestmark = pytest.mark.asyncio


def client(front: HttpFront) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=front),
                             base_url="http://mic2e.test")


async def test_the_page_is_served_once_built_and_nothing_outside_it(tmp_path):
    built = tmp_path / "playground"
    (tmp_path / "secret.txt").write_text("not for callers")
    front = HttpFront([], max_message_bytes=1024, static_dir=built)
    async with client(front) as http:
        missing = await http.get("/")
        assert missing.status_code == 404 and "setup-ts.sh" in missing.text
        built.mkdir()  # built after the server started: served without a restart
        (built / "index.html").write_text("<title>mic2e</title>")
        (built / "playground.js").write_text("export {};")
        page = await http.get("/")
        assert page.status_code == 200 and page.headers["content-type"] == "text/html"
        assert page.text == "<title>mic2e</title>"
        script = await http.get("/playground.js")
        assert script.headers["content-type"] in ("text/javascript", "application/javascript")
        for escape in ("/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt"):
            assert (await http.get(escape)).status_code == 404, escape
        assert (await http.post("/index.html")).status_code == 404


async def test_preflight_answers_only_the_allowed_origins():
    front = HttpFront([], max_message_bytes=1024, cors_origins=["https://app.example/"])
    async with client(front) as http:
        def preflight(origin):
            return http.options("/mic2e.v1.EditService/RemoveObjects", headers={
                "origin": origin, "access-control-request-method": "POST"})
        allowed = await preflight("https://app.example")
        assert allowed.status_code == 204
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in allowed.headers["access-control-allow-methods"]
        other = await preflight("https://other.example")
        assert "access-control-allow-origin" not in other.headers
