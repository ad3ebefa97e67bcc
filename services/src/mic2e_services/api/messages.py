"""The options messages in the API types' terms, for the servicers and the orchestrator
(the orchestrator checks what it forwards before any model server sees it). Model code
never imports this module: it is where the protos meet the API layer."""

from __future__ import annotations

from typing import Any

from mic2e.v1 import object_clear_pb2

from mic2e_services.api.object_clear import OPTIONS
from mic2e_services.runtime import convert

#: ClearStrategy values by the names the model takes (UNSPECIFIED: the default).
_STRATEGIES = {object_clear_pb2.CLEAR_STRATEGY_RESIZE: "resize",
               object_clear_pb2.CLEAR_STRATEGY_CROP: "crop",
               object_clear_pb2.CLEAR_STRATEGY_REFERENCE: "reference"}


def clear_options(message: object_clear_pb2.ClearOptions) -> dict[str, Any]:
    """The options the caller set, by ClearQuery attribute; the strategy by name (an
    unknown enum value stays visible, for the field check to name)."""
    given = convert.given(message, OPTIONS)
    strategy = given.pop("strategy", 0)
    if strategy != object_clear_pb2.CLEAR_STRATEGY_UNSPECIFIED:
        given["strategy"] = _STRATEGIES.get(strategy, f"#{strategy}")
    return given
