"""The fields' one declaration (`mic2e_services.schema`, in the API layer
`mic2e_services.api`): its checks, and the API documentation held to it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mic2e_services.api import flux as flux
from mic2e_services.api import object_clear as oc
from mic2e_services.api import segmentation as seg
from mic2e_services.schema import MASKS, Field, Request

PROTOS = Path(__file__).resolve().parents[2] / "protos" / "mic2e" / "v1"
REQUESTS = [oc.CLEAR, flux.GENERATE, flux.INPAINT, seg.SEGMENT_BY_TEXT,
            seg.SEGMENT_BY_PROMPT,
            # checked on the message before its masks are decoded, not on the query
            Request("ClearRequest", {"masks": MASKS}),
            Request("InpaintRequest", {"masks": MASKS})]


def proto_fields() -> dict[str, dict[str, tuple[str, str]]]:
    """message -> field -> (type, the comment above it), from the .proto sources."""
    messages: dict[str, dict[str, tuple[str, str]]] = {}
    for path in sorted(PROTOS.glob("*.proto")):
        current, comment = None, []
        for line in path.read_text().splitlines():
            line = line.strip()
            if match := re.match(r"message (\w+) \{", line):
                current, comment = messages.setdefault(match[1], {}), []
            elif line.startswith("//"):
                comment.append(line[2:].strip())
            elif current is not None and (match := re.match(
                    r"(?:optional |repeated )?([\w.]+) (\w+) = \d+;", line)):
                current[match[2]] = (match[1], " ".join(comment))
                comment = []
            else:
                comment = []
    return messages


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: r.message)
def test_the_proto_comments_state_each_fields_range_and_default(request_):
    messages = proto_fields()
    for field in request_.fields.values():
        message, *parts = [request_.message, *field.path.split(".")]
        for part in parts[:-1]:
            message = messages[message][part][0]
        _, comment = messages[message][parts[-1]]
        for said in field.documented():
            assert said.lower() in comment.lower(), (field.path, said, comment)


def test_every_bad_value_is_named():
    steps, label = oc.STEPS, oc.LABEL
    assert steps.problem(20) is None and steps.problem(None) is None
    assert steps.problem(0) == "must be 1 to 100, got 0"
    assert steps.problem(2.5) == "must be an integer, got 2.5"
    assert steps.problem(True) == "must be an integer, got True"
    assert oc.GUIDANCE_SCALE.problem(float("nan")) == "must be a finite number, got nan"
    assert label.problem("x" * 101) == "at most 100 characters, got 101"
    assert flux.PROMPT.problem("  ") == "must not be empty"
    assert flux.WIDTH.problem(1000) == "must be a multiple of 16, got 1000"
    assert oc.FUSION.problem(1) == "must be true or false"
    assert Field("x", int, lo=0, hi=2**64 - 1).range() == "0 to 2^64-1"
    assert MASKS.problem([]) == "at least one is required"
    assert MASKS.problem([b""] * 33) == "at most 32 items, got 33"
    assert seg.POINTS.problem(range(20_000)) == "at most 64 items, got 20000"
    assert seg.POINTS.problem(()) is None and MASKS.problem(7) == "must be a list, got int"
    assert flux.STRENGTH.problem(0.0) == "must be above 0 and at most 1, got 0.0"
    assert flux.STRENGTH.problem(1e-6) is None and flux.STRENGTH.problem(1.0) is None
