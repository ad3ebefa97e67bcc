"""The `mic2e` CLI's one line per failed call: what went wrong, named by the flag, file or
address the user typed, and what to do about it (internal to `mic2e.cli`).

A server's refusal already says what is wrong; the line says it in the CLI's words (a
bad field becomes the flag that set it). A failure of the connection itself comes from
gRPC's own transport (UNAVAILABLE without the ErrorInfo every mic2e server attaches), in
its words, which a newcomer cannot act on: those are recognised by their text.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence

import grpc

from mic2e.client import DEFAULT_ADDRESS
from mic2e.errors import Mic2eError

#: Exit codes (the CLI's --help lists them).
FAILED, USAGE, NOTHING_FOUND, INTERRUPTED = 1, 2, 3, 130

#: Service name -> what it is and the command that calls it directly.
SERVICES = {
    "mic2e.v1.EditService": ("the orchestrator", "every command"),
    "mic2e.v1.SegmentationService": ("a segmentation server", "`mic2e segment`"),
    "mic2e.v1.ObjectClearService": ("an object-clear server", "`mic2e remove IMAGE --mask FILE`"),
    "mic2e.v1.FluxService": ("a flux server", "`mic2e generate`"),
}

#: The last part of a refused field's path -> the flag that sets it.
_FLAGS = {"steps": "--steps", "seed": "--seed", "strength": "--strength",
          "mask_dilation": "--dilation", "feather": "--feather", "width": "--width",
          "height": "--height", "min_score": "--min-score", "score_threshold": "--min-score",
          "label": "--label", "text": "--text", "replacement": "--prompt",
          "strategy": "--strategy", "box": "--box"}

#: A failed orchestrator stage -> the orchestrator's flag naming that server's address.
_STAGE_ADDRESS_FLAGS = {"segmentation": "--segmentation-address",
                        "object_clear": "--object-clear-address",
                        "generation": "--flux-address", "inpainting": "--inpaint-address"}


class Mistake(Exception):
    """An ordinary mistake: `line` for stderr, after `prog: `; `code` to exit with."""

    def __init__(self, line: str, code: int = FAILED, *, prog: str = "mic2e") -> None:
        super().__init__(line)
        self.line = line
        self.code = code
        self.prog = prog


def explain(exc: Mic2eError, args: argparse.Namespace,
            served: Callable[[], list[str] | None]) -> Mistake:
    """The one line for a failed call. `served`: the mic2e services the address serves
    (None: it has no health service), asked only when the call was not there."""
    address, code = args.server, exc.code
    if code == grpc.StatusCode.UNAVAILABLE and not exc.reason:
        return Mistake(connection_problem(address, exc.message))
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return Mistake(wrong_server(address, args.command, served()))
    if code == grpc.StatusCode.NOT_FOUND and exc.reason == "NO_INSTANCES":
        return nothing_found(exc.metadata.get("text", getattr(args, "text", "")),
                             getattr(args, "min_score", None))
    if code == grpc.StatusCode.INVALID_ARGUMENT and exc.field_violations:
        parts = [f"{_flag(field, args)}: {why}" for field, why in exc.field_violations]
        fields = ", ".join(field for field, _ in exc.field_violations)
        return Mistake(f"{'; '.join(parts)} (INVALID_ARGUMENT, field {fields})")
    if exc.reason == "STAGE_FAILED" and code == grpc.StatusCode.UNAVAILABLE:
        stage = exc.metadata.get("stage", "")
        flag = _STAGE_ADDRESS_FLAGS.get(stage, "--*-address")
        return Mistake(f"the orchestrator at {address} cannot reach its {stage} server at "
                       f"{exc.metadata.get('server', '?')}: start that server, or give the "
                       f"orchestrator its address ({flag}) (UNAVAILABLE)")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and exc.reason in ("QUEUE_FULL",
                                                                    "DEADLINE_TOO_SHORT"):
        wait = f" in {exc.retry_after_s:.0f} s" if exc.retry_after_s else " later"
        if exc.reason == "QUEUE_FULL":
            return Mistake(f"{address} is busy (its queue is full): try again{wait} "
                           f"(RESOURCE_EXHAUSTED)")
        deadline = f"--timeout {args.timeout:g} s" if args.timeout else "the call's deadline"
        return Mistake(f"the work queued at {address} outlasts {deadline}: give a longer "
                       f"--timeout, or try again{wait} (RESOURCE_EXHAUSTED)")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and args.timeout is not None:
        # gRPC's own words say nothing more; a server's say how long the work needs.
        said = "" if exc.message == "Deadline Exceeded" else f": {_first_line(exc.message)}"
        return Mistake(f"no result within --timeout {args.timeout:g} s: give a longer "
                       f"--timeout{said} (DEADLINE_EXCEEDED)")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        what = "refused the token given with --token" if args.token else "wants a token"
        return Mistake(f"{address} {what}: pass the right one with --token TOKEN "
                       f"(UNAUTHENTICATED)")
    if code == grpc.StatusCode.INTERNAL:
        return Mistake(f"{address} failed on a bug of its own; its log has the traceback "
                       f"(INTERNAL)")
    stage = f", {exc.metadata['stage']} stage" if "stage" in exc.metadata else ""
    return Mistake(f"{_first_line(exc.message)} ({code.name}{stage})")


def connection_problem(address: str, message: str) -> str:
    """The line for a call that never reached a mic2e server at `address`."""
    last = _first_line(message.split("last error: ")[-1])
    if "Connection refused" in message:
        return (f"no server at {address} (connection refused): start one with "
                f"`mic2e-server up`, or pass --server HOST:PORT")
    if "Failed parsing HTTP/2" in message or "frame type" in message:
        port = DEFAULT_ADDRESS.rsplit(":", 1)[1]
        return (f"{address} is not a gRPC port (it answers HTTP/1, like a /metrics port, "
                f"9090-9093 under `mic2e-server up`): the orchestrator's gRPC port is {port} "
                f"(8080 is its HTTP port under `up`); pass it with --server HOST:PORT")
    if re.search(r"resolv|DNS|Domain name not found|hostname", message):
        host = address.rsplit(":", 1)[0]
        return f"cannot find the host {host!r} of --server {address}: check its spelling"
    if "WRONG_VERSION_NUMBER" in message:
        return (f"{address} does not speak TLS (the TLS handshake failed): drop --tls-ca, "
                f"--tls-cert and --tls-key")
    if "CERTIFICATE_VERIFY_FAILED" in message:
        return (f"{address} showed a certificate that --tls-ca does not vouch for: pass the "
                f"CA that signed it with --tls-ca")
    if re.search(r"ssl|tls|handshake", message, re.IGNORECASE):
        return (f"the TLS handshake with {address} failed: check --tls-ca, --tls-cert and "
                f"--tls-key ({last})")
    if "Socket closed" in message or "Connection reset" in message:
        return (f"{address} closed the connection at once: if it serves TLS, pass --tls-ca "
                f"PEM; else check that it is a mic2e server")
    return f"cannot reach {address}: {last} (UNAVAILABLE)"


def wrong_server(address: str, command: str, served: Sequence[str] | None) -> str:
    """The line for a call the server at `address` does not have."""
    known = [name for name in SERVICES if served and name in served]
    if not known:
        return (f"{address} serves no mic2e service (is it another program's port?): pass "
                f"the orchestrator's address with --server (default {DEFAULT_ADDRESS})")
    if known[0] == "mic2e.v1.EditService":
        return (f"the orchestrator at {address} has no call for `mic2e {command}`: it is "
                f"older than this client; update it (UNIMPLEMENTED)")
    what, fits = SERVICES[known[0]]
    return (f"{address} is {what} ({known[0]}), which cannot do `mic2e {command}`: "
            f"pass the orchestrator's address with --server (default {DEFAULT_ADDRESS}), "
            f"or use {fits} here")


def nothing_found(text: str, min_score: float | None) -> Mistake:
    """The line (and exit code) for a --text that matched no instance."""
    if min_score is None:
        hint = "try a lower --min-score (the default is 0.3), e.g. --min-score 0.1"
    elif min_score > 0:
        hint = f"try a --min-score below {min_score:g}, or another word"
    else:
        hint = "try another word, or mark the object with --point or --box"
    return Mistake(f"no instance of {text!r} found: {hint}", NOTHING_FOUND)


def _flag(field: str, args: argparse.Namespace) -> str:
    """The flag (or file) the user typed for a refused field's path."""
    if m := re.search(r"points\[(\d+)\]", field):
        points = getattr(args, "point", [])
        i = int(m.group(1))
        return f"--point {points[i].x:g},{points[i].y:g}" if i < len(points) else "--point"
    if m := re.fullmatch(r"(?:masks\.)?masks\[(\d+)\]", field):
        masks = getattr(args, "mask", [])
        i = int(m.group(1))
        return f"--mask {masks[i]}" if i < len(masks) else "--mask"
    if field.split(".")[0] == "image" and getattr(args, "image", None) is not None:
        return str(args.image)
    if field == "prompt":
        return "PROMPT" if args.command == "generate" else "--prompt"
    last = re.sub(r"\[\d+\]$", "", field.split(".")[-1])
    return _FLAGS.get(last, field)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "no message"
