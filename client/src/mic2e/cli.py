"""`mic2e`: edit images from the shell through mic2e-inference.

    mic2e remove IMAGE (--text T | --point X,Y[,LABEL]... | --box X0,Y0,X1,Y1
                        | --mask FILE...) -o OUT [--mask-out PNG] [--compare FILE]
    mic2e replace IMAGE (--text T | --point X,Y[,LABEL]... | --box X0,Y0,X1,Y1
                         | --mask FILE...) --prompt P -o OUT [--mask-out PNG] [--compare FILE]
    mic2e fill IMAGE --box X0,Y0,X1,Y1 --prompt P -o OUT [--mask-out PNG] [--compare FILE]
    mic2e segment IMAGE (--text T | --point X,Y[,LABEL]... | --box X0,Y0,X1,Y1) -o DIR
    mic2e generate PROMPT -o OUT
    mic2e health

Output: `-o OUT` is written in the format its extension names (.png, .jpg/.jpeg, .webp),
with the input's colour profile; an existing file is overwritten. `--mask-out` keeps the
mask that was repainted (a 1-bit PNG), `--compare` the input and the result side by side.
`segment -o DIR` writes one mask_NNN.png per instance (replacing those of an earlier run)
and overlay.jpg: the masks coloured over the photo, with their boxes and scores.
Progress goes to stdout as a bar, the slow steps after it ("writing out.jpg ...") to
stderr, the results to stdout.

Server: `--server HOST:PORT` picks it (default: the orchestrator, localhost:50051); a
model server may be called directly (segment -> segmentation, remove --mask ->
object-clear, generate -> flux). `health` lists every service behind the address. A
point's LABEL is 1 (object, default) or 0 (background). The connection options and
--debug go before or after the command.

Exit codes:
  0    done
  1    the call failed: the server refused it, no server answered, or the result could
       not be written (one line on stderr says why and what to do)
  2    bad usage: an option, or a file named that cannot be read or written
  3    nothing found: --text matched no instance (try a lower --min-score)
  130  interrupted (Ctrl-C): the call is cancelled, and so is the server's work
A traceback means a bug in mic2e (or --debug): please report it.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mic2e import (
    _cli_grpc_logs,  # noqa: F401  (first: it configures gRPC before it loads)
    _cli_parser,
    codecs,
)
from mic2e import _cli_pictures as pictures
from mic2e._cli_errors import (
    FAILED,
    INTERRUPTED,
    SERVICES,
    USAGE,
    Mistake,
    explain,
    nothing_found,
)
from mic2e.channel import tls_credentials
from mic2e.client import DEFAULT_ADDRESS, Client
from mic2e.errors import Mic2eError
from mic2e.types import Progress, Segmented

_SERVER = ""  # the health service name of the server as a whole
#: Stages whose last step leaves the slow part of an edit: decoding, the patch.
_DENOISING = ("object_clear", "inpainting", "generation")


def build_parser() -> argparse.ArgumentParser:
    """The `mic2e` command line (its commands and options: `_cli_parser`)."""
    return _cli_parser.build_parser(__doc__)


# -- what the command line names, checked before any call ------------------------------------
@dataclass
class _Inputs:
    """The files a command reads, read once before any call."""

    image: bytes | None = None
    masks: list[np.ndarray] = field(default_factory=list)


def _usage(args: argparse.Namespace, message: str) -> Mistake:
    return Mistake(message, USAGE, prog=f"mic2e {args.command}")


def _read(args: argparse.Namespace, name: str, path: Path, what: str) -> bytes:
    """`path`'s bytes; a usage mistake naming `name` (the flag, or the path) if it cannot
    be read, saying what to give instead (`what`)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        why = "no such file"
    except IsADirectoryError:
        why = "is a folder, not a file"
    except PermissionError:
        why = "not allowed to read it"
    except OSError as exc:
        why = f"cannot read it ({exc.strerror or exc})"
    raise _usage(args, f"{name}: {why}: give {what}")


def _check_output(args: argparse.Namespace, flag: str, path: Path | None, *,
                  png: bool = False) -> None:
    """Refuse, before any call, an output that cannot be written: a folder, a file in
    place of its folder, an extension that names no format we write (`png`: PNG only)."""
    if path is None:
        return
    if path.is_dir():
        raise _usage(args, f"{flag} {path}: is a folder: name a file in it, e.g. "
                           f"{path / 'out.png'}")
    if png and path.suffix.lower() != ".png":
        raise _usage(args, f"{flag} {path}: cannot write that: name it .png")
    try:
        codecs.format_of(str(path))
    except codecs.CodecError as exc:
        raise _usage(args, f"{flag} {path}: {exc}") from None
    parent = next(p for p in path.absolute().parents if p.exists())
    if not parent.is_dir():
        raise _usage(args, f"{flag} {path}: {parent} is a file, not a folder")


def _check(args: argparse.Namespace) -> _Inputs:
    """Everything the command line names, before any connection: a usage mistake per
    problem, one line each."""
    server = args.server
    scheme = "://" in server or server.startswith(("dns:", "unix:", "ipv4:", "ipv6:"))
    if not scheme and not re.fullmatch(r"(\[[^\]]+\]|[^:\[\]]+):\d+", server):
        raise _usage(args, f"--server {server}: give HOST:PORT, e.g. {DEFAULT_ADDRESS}")
    for flag in ("tls_ca", "tls_cert", "tls_key"):
        if getattr(args, flag):
            _read(args, f"--{flag.replace('_', '-')}", Path(getattr(args, flag)),
                  "a PEM file")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise _usage(args, "a client certificate needs both --tls-cert and --tls-key")
    text = getattr(args, "text", None)
    if text is not None and not text.strip():
        raise _usage(args, "--text is empty; say what to find, e.g. --text dog")
    if args.command in ("remove", "replace", "segment"):
        kinds = ["--text", "--point/--box"] + (["--mask"] if args.command != "segment" else [])
        given = sum(bool(x) for x in (args.text is not None, args.point or args.box,
                                      getattr(args, "mask", None)))
        if given != 1:
            raise _usage(args, f"give exactly one of {', '.join(kinds)}")
    inputs = _Inputs()
    if args.command == "segment":
        if args.output.exists() and not args.output.is_dir():
            raise _usage(args, f"-o {args.output}: is a file; segment writes a folder of "
                               f"masks: name a folder (made if missing)")
    elif args.command != "health":
        _check_output(args, "-o", args.output)
        _check_output(args, "--mask-out", getattr(args, "mask_out", None), png=True)
        _check_output(args, "--compare", getattr(args, "compare", None))
    if "image" in args:
        inputs.image = _read(args, str(args.image), args.image,
                             "the path of an image file (PNG, JPEG or WebP)")
    for path in getattr(args, "mask", []):
        data = _read(args, f"--mask {path}", path, "a mask image (white = the object)")
        try:
            inputs.masks.append(codecs.decode_mask_png(data))
        except codecs.CodecError as exc:
            raise _usage(args, f"--mask {path}: {exc}: give a mask image "
                               f"(white = the object)") from None
    return inputs


# -- showing a call's progress -----------------------------------------------------------------
class _Bar:
    """A rich progress bar fed with `Progress` events (one task per stage), shown from
    the first event on (so a call that fails at once leaves no empty bar behind)."""

    def __init__(self) -> None:
        self._progress: Any = None
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def update(self, event: Progress) -> None:
        if self._progress is None:
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._progress = RichProgress(TextColumn("{task.description:>13}"), BarColumn(),
                                          TextColumn("{task.completed}/{task.total}"),
                                          TimeElapsedColumn(), transient=False)
            self._progress.__enter__()
        if event.stage not in self._tasks:
            self._tasks[event.stage] = self._progress.add_task(event.stage,
                                                               total=event.total_steps or 1)
        total = event.total_steps or 1
        done = event.step if event.total_steps else 1
        self._progress.update(self._tasks[event.stage], completed=done, total=total)


def _say(line: str) -> None:
    """A slow step after the progress bar, on stderr (stdout is for results)."""
    print(line, file=sys.stderr, flush=True)


def _print_instances(instances) -> None:
    for i, inst in enumerate(instances):
        box = ", ".join(f"{v:.0f}" for v in inst.box)
        print(f"  #{i}: score {inst.score:.3f}  box ({box})  {int(inst.mask.sum())} px")


def _print_timings(timings: dict[str, float]) -> None:
    print("timings: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items()))


def _follow(events: Iterator[Any]) -> Any:
    """A streamed edit's events shown as they come (a progress bar, the instances found);
    its result."""
    result = None
    with _Bar() as bar:
        for event in events:
            if isinstance(event, Progress):
                bar.update(event)
                if event.stage in _DENOISING and event.step == event.total_steps:
                    # The server now decodes the picture, then the client applies it to
                    # the photo: seconds for a 12 MP photo, after a bar that says done.
                    _say("finishing the picture ...")
            elif isinstance(event, Segmented):
                print(f"segmented {len(event.instances)} instance(s)")
                _print_instances(event.instances)
            else:
                result = event
    assert result is not None, "the stream ended without a result"
    return result


# -- writing ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A failure to write `path` (the disk, permissions, a picture too large for its
    format) as one line."""
    try:
        yield
    except OSError as exc:
        raise Mistake(f"cannot write {path}: {exc.strerror or exc}") from None


def _write(path: Path, data: bytes) -> None:
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _save(path: Path, result: Any) -> None:
    """Write a result's picture to `path` (`-o`)."""
    _say(f"writing {path} ...")
    with _writing(path):
        result.save(path)


def _save_edit(args: argparse.Namespace, inputs: _Inputs, result: Any) -> list[str]:
    """Write an edit's result and the pictures asked for; what was written, as notes."""
    _save(args.output, result)
    notes = []
    if args.mask_out is not None:
        _write(args.mask_out, codecs.encode_mask_png(result.mask))
        notes.append(f"wrote the mask to {args.mask_out}")
    if args.compare is not None:
        _say(f"writing {args.compare} ...")
        before = codecs.decode_image(inputs.image)
        pair = pictures.side_by_side(before, result.image)
        _write(args.compare, codecs.encode_image(pair, codecs.format_of(str(args.compare))))
        notes.append(f"wrote {args.compare} (before | after)")
    return notes


# -- commands -----------------------------------------------------------------------------------
def _remove(client: Client, args: argparse.Namespace, inputs: _Inputs) -> int:
    options = {"steps": args.steps, "seed": args.seed, "strategy": args.strategy,
               "output_format": codecs.format_of(str(args.output))}
    if inputs.masks and not client.via_orchestrator():
        events = client.clear(inputs.image, inputs.masks, label=args.label,
                              mask_dilation=args.dilation or 0, **options)
    else:
        events = client.remove_objects(
            inputs.image, text=args.text, points=args.point, box=args.box,
            masks=inputs.masks, min_score=args.min_score, mask_dilation=args.dilation,
            label=args.label, **options)
    result = _follow(events)
    notes = _save_edit(args, inputs, result)
    x0, y0, x1, y1 = result.repainted_box
    print(f"wrote {args.output} ({result.image.width}x{result.image.height}; repainted "
          f"{x1 - x0}x{y1 - y0} at ({x0}, {y0}), every other pixel the input's own)"
          if args.strategy != "reference" else
          f"wrote {args.output} ({result.image.width}x{result.image.height})")
    for note in notes:
        print(note)
    _print_timings(getattr(result, "timings", None) or result.provenance.timings)
    return 0


def _replace(client: Client, args: argparse.Namespace, inputs: _Inputs) -> int:
    options = {"strength": args.strength, "steps": args.steps, "seed": args.seed,
               "mask_dilation": args.dilation, "feather": args.feather,
               "output_format": codecs.format_of(str(args.output))}
    if args.command == "fill":
        events = client.fill(inputs.image, args.box, args.prompt, **options)
    else:
        events = client.replace_objects(
            inputs.image, args.prompt, text=args.text, points=args.point, box=args.box,
            masks=inputs.masks, min_score=args.min_score, **options)
    result = _follow(events)
    notes = _save_edit(args, inputs, result)
    note = f" (prompt cut to: {result.truncated_prompt!r})" if result.prompt_truncated else ""
    print(f"wrote {args.output} ({result.image.width}x{result.image.height}, "
          f"{int(result.mask.sum())} px repainted){note}")
    for line in notes:
        print(line)
    _print_timings(result.timings)
    return 0


def _segment(client: Client, args: argparse.Namespace, inputs: _Inputs) -> int:
    if args.text:
        result = client.segment_by_text(inputs.image, args.text,
                                         score_threshold=args.min_score)
        instances = result.instances
        if not instances:
            raise nothing_found(args.text, args.min_score)
    else:
        result = client.segment_by_prompt(inputs.image, points=args.point, box=args.box,
                                          return_alternatives=False)
        instances = [result.best]
    print(f"{len(instances)} instance(s) in {result.width}x{result.height}")
    _print_instances(instances)
    folder: Path = args.output
    _say(f"writing {len(instances)} mask(s) and the overlay to {folder} ...")
    for stale in folder.glob("mask_[0-9][0-9][0-9].png"):  # an earlier run's, one file each
        if int(stale.stem[5:]) >= len(instances):
            stale.unlink()
    for i, inst in enumerate(instances):
        _write(folder / f"mask_{i:03d}.png", codecs.encode_mask_png(inst.mask))
    drawn = pictures.overlay(codecs.decode_image(inputs.image), instances)
    _write(folder / "overlay.jpg", codecs.encode_image(drawn, "jpeg"))
    print(f"wrote {len(instances)} mask(s) to {folder}; see them over the photo in "
          f"{folder / 'overlay.jpg'}")
    _print_timings(result.provenance.timings)
    return 0


def _generate(client: Client, args: argparse.Namespace, inputs: _Inputs) -> int:
    fmt = codecs.format_of(str(args.output))
    result = _follow(client.generate(args.prompt, width=args.width, height=args.height,
                                     steps=args.steps, seed=args.seed, output_format=fmt))
    _save(args.output, result)
    note = f" (prompt cut to: {result.truncated_prompt!r})" if result.prompt_truncated else ""
    print(f"wrote {args.output} ({result.image.width}x{result.image.height}, "
          f"seed {result.provenance.seed}){note}")
    _print_timings(result.provenance.timings)
    return 0


def _status(client: Client, service: str) -> str | None:
    """`service`'s health status at the address; None when it does not report it."""
    try:
        return client.health(service)
    except Mic2eError as exc:
        if exc.code.name == "NOT_FOUND":
            return None
        raise


def _health(client: Client, args: argparse.Namespace, inputs: _Inputs) -> int:
    statuses = {name: _status(client, name) for name in [_SERVER, *SERVICES]}
    orchestrator = statuses["mic2e.v1.EditService"] is not None
    worst = 0
    for name, status in statuses.items():
        if status is None and not orchestrator:
            continue  # a model server serves its own service only
        shown = status or "unknown (this orchestrator does not report it)"
        print(f"{name or '(server)':<30} {shown}")
        worst = worst or int(status != "SERVING")
    return worst


def _served(client: Client) -> list[str] | None:
    """The mic2e services the address reports (None: it has no health service)."""
    try:
        return [name for name in SERVICES if _status(client, name) is not None]
    except Mic2eError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        inputs = _check(args)
        credentials = None
        if args.tls_ca or args.tls_cert:
            credentials = tls_credentials(args.tls_ca, args.tls_cert, args.tls_key)
        with Client(args.server, timeout=args.timeout, token=args.token,
                    credentials=credentials) as client:
            try:
                return {"remove": _remove, "replace": _replace, "fill": _replace,
                        "segment": _segment, "generate": _generate,
                        "health": _health}[args.command](client, args, inputs)
            except Mic2eError as exc:
                if args.debug:
                    traceback.print_exc()
                raise explain(exc, args, lambda: _served(client)) from None
    except Mistake as mistake:
        if args.debug:
            traceback.print_exc()
        print(f"{mistake.prog}: {mistake.line}", file=sys.stderr)
        return mistake.code
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print("mic2e: cancelled", file=sys.stderr)
        return INTERRUPTED
    except Exception:
        traceback.print_exc()
        print("mic2e: this is a bug in mic2e; please report it with the traceback above",
              file=sys.stderr)
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
