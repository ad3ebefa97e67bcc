"""`mic2e`: edit images from the shell through mic2e-inference.

    mic2e remove IMAGE (--text T | --point X,Y[,LABEL]... | --box X0,Y0,X1,Y1
                        | --mask FILE...) -o OUT
    mic2e replace IMAGE (--text T | --point X,Y[,LABEL]... | --box X0,Y0,X1,Y1
                         | --mask FILE...) --prompt P -o OUT
    mic2e fill IMAGE --box X0,Y0,X1,Y1 --prompt P -o OUT
    mic2e segment IMAGE (--text T | --point X,Y[,LABEL]... | --box X0,Y0,X1,Y1) -o DIR
    mic2e generate PROMPT -o OUT
    mic2e health

`-o OUT` is written in the format its extension names (.png, .jpg/.jpeg, .webp), with
the input's colour profile. `--server HOST:PORT` picks the server (default: the
orchestrator, localhost:50051); a model server may be called directly (segment ->
segmentation, remove --mask -> object-clear, generate -> flux). A point's LABEL is 1
(object, default) or 0 (background).
Exit codes: 0 ok, 1 the call failed (the status and bad field are printed), 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mic2e import codecs
from mic2e.channel import tls_credentials
from mic2e.client import DEFAULT_ADDRESS, Client
from mic2e.errors import Mic2eError
from mic2e.types import Point, Progress, Segmented

_SERVICES = ["", "mic2e.v1.EditService", "mic2e.v1.SegmentationService",
             "mic2e.v1.ObjectClearService", "mic2e.v1.FluxService"]


def _point(text: str) -> Point:
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"expected X,Y[,LABEL], got {text!r}")
    try:
        x, y = float(parts[0]), float(parts[1])
        positive = parts[2].strip() not in ("0", "neg", "negative") if len(parts) == 3 else True
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers in {text!r}") from None
    return Point(x, y, positive)


def _box(text: str) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X0,Y0,X1,Y1, got {text!r}") from None
    return (x0, y0, x1, y1)


def _add_target(p: argparse.ArgumentParser, *, masks: bool) -> None:
    p.add_argument("--text", help="what to find, e.g. 'dog' (all instances)")
    p.add_argument("--point", type=_point, action="append", default=[], metavar="X,Y[,LABEL]",
                   help="a click on the object (LABEL 0 marks background); repeatable")
    p.add_argument("--box", type=_box, metavar="X0,Y0,X1,Y1", help="a box around the object")
    if masks:
        p.add_argument("--mask", type=Path, action="append", default=[], metavar="FILE",
                       help="a ready mask image (white = remove); repeatable")
    p.add_argument("--min-score", type=float, help="with --text: lowest instance score kept")


def _add_connection(p: argparse.ArgumentParser, *, after_command: bool = False) -> None:
    """Options of every command. After the command they default to SUPPRESS, so one not
    typed there leaves what was typed before the command (or the default) alone."""
    d = {"default": argparse.SUPPRESS} if after_command else {}
    p.add_argument("--server", help=f"HOST:PORT to call (default {DEFAULT_ADDRESS})",
                   **(d or {"default": DEFAULT_ADDRESS}))
    p.add_argument("--timeout", type=float, help="deadline of the call, in seconds", **d)
    p.add_argument("--token", help="bearer token, if the server requires one", **d)
    p.add_argument("--tls-ca", metavar="PEM", help="use TLS, trusting this CA", **d)
    p.add_argument("--tls-cert", metavar="PEM", help="client certificate (mutual TLS)", **d)
    p.add_argument("--tls-key", metavar="PEM", help="client private key (mutual TLS)", **d)


def _add_inpainting(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", required=True, help="what to paint there, e.g. 'a cat'")
    p.add_argument("-o", "--output", type=Path, required=True, help="output image file")
    p.add_argument("--strength", type=float,
                   help="how much to repaint, in (0, 1] (default 1: from scratch)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the checkpoint's)")
    p.add_argument("--seed", type=int, help="random seed (default: random)")
    p.add_argument("--dilation", type=int, help="grow the mask by N pixels (default 8)")
    p.add_argument("--feather", type=int, help="blend over N pixels (default 8)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mic2e", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_connection(parser)
    connection = argparse.ArgumentParser(add_help=False)
    _add_connection(connection, after_command=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("remove", help="remove objects from an image", parents=[connection])
    p.add_argument("image", type=Path)
    _add_target(p, masks=True)
    p.add_argument("-o", "--output", type=Path, required=True, help="output image file")
    p.add_argument("--dilation", type=int, help="grow the mask by N pixels (default: none)")
    p.add_argument("--label", default="",
                   help="a word for the object in the removal prompt (default: the "
                        "reference ObjectClear's 'object'; another word changes the picture)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the server's)")
    p.add_argument("--seed", type=int, help="random seed (default: random)")
    p.add_argument("--strategy", choices=("resize", "crop", "reference"),
                   help="how the result is made at the photo's size: resize (default: the "
                        "photo's own pixels outside the repainted region), crop (the model "
                        "on a crop around the object, at its full resolution), reference "
                        "(the reference ObjectClear's picture: all of it resampled)")

    p = sub.add_parser("replace", help="repaint objects from a prompt ('the dog' -> 'a cat')",
                       parents=[connection])
    p.add_argument("image", type=Path)
    _add_target(p, masks=True)
    _add_inpainting(p)

    p = sub.add_parser("fill", help="paint a prompt into a box", parents=[connection])
    p.add_argument("image", type=Path)
    p.add_argument("--box", type=_box, required=True, metavar="X0,Y0,X1,Y1",
                   help="the region to fill")
    _add_inpainting(p)

    p = sub.add_parser("segment", help="find objects; one mask PNG per instance",
                       parents=[connection])
    p.add_argument("image", type=Path)
    _add_target(p, masks=False)
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")

    p = sub.add_parser("generate", help="text to image", parents=[connection])
    p.add_argument("prompt")
    p.add_argument("-o", "--output", type=Path, required=True, help="output image file")
    p.add_argument("--width", type=int, help="default: the server's")
    p.add_argument("--height", type=int, help="default: the server's")
    p.add_argument("--steps", type=int, help="default: the server's")
    p.add_argument("--seed", type=int)

    sub.add_parser("health", help="show the server's health per service", parents=[connection])
    return parser


class _Bar:
    """A rich progress bar fed with `Progress` events (one task per stage)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self._progress = RichProgress(TextColumn("{task.description:>13}"), BarColumn(),
                                      TextColumn("{task.completed}/{task.total}"),
                                      TimeElapsedColumn(), transient=False)
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> _Bar:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)

    def update(self, event: Progress) -> None:
        if event.stage not in self._tasks:
            self._tasks[event.stage] = self._progress.add_task(event.stage,
                                                               total=event.total_steps or 1)
        total = event.total_steps or 1
        done = event.step if event.total_steps else 1
        self._progress.update(self._tasks[event.stage], completed=done, total=total)


def _print_instances(instances) -> None:
    for i, inst in enumerate(instances):
        box = ", ".join(f"{v:.0f}" for v in inst.box)
        print(f"  #{i}: score {inst.score:.3f}  box ({box})  {int(inst.mask.sum())} px")


def _print_timings(timings: dict[str, float]) -> None:
    print("timings: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items()))


def _check_text(command: str, args: argparse.Namespace) -> None:
    if args.text is not None and not args.text.strip():
        raise SystemExit(f"mic2e {command}: --text is empty; say what to find, e.g. --text dog")


def _remove(client: Client, args: argparse.Namespace) -> None:
    options = {"steps": args.steps, "seed": args.seed, "strategy": args.strategy,
               "output_format": codecs.format_of(str(args.output))}
    _check_text("remove", args)
    targets = sum(bool(x) for x in (args.text is not None, args.point or args.box, args.mask))
    if targets != 1:
        raise SystemExit("mic2e remove: give exactly one of --text, --point/--box, --mask")
    if args.mask and not client.via_orchestrator():
        events = client.clear(args.image, args.mask, label=args.label,
                              mask_dilation=args.dilation or 0, **options)
    else:
        events = client.remove_objects(
            args.image, text=args.text, points=args.point, box=args.box, masks=args.mask,
            min_score=args.min_score, mask_dilation=args.dilation, label=args.label, **options)
    result = _follow(events)
    result.save(args.output)
    x0, y0, x1, y1 = result.repainted_box
    print(f"wrote {args.output} ({result.image.width}x{result.image.height}; repainted "
          f"{x1 - x0}x{y1 - y0} at ({x0}, {y0}), every other pixel the input's own)"
          if args.strategy != "reference" else
          f"wrote {args.output} ({result.image.width}x{result.image.height})")
    _print_timings(getattr(result, "timings", None) or result.provenance.timings)


def _follow(events: Iterator[Any]) -> Any:
    """A streamed edit's events shown as they come (a progress bar, the instances found);
    its result."""
    result = None
    with _Bar() as bar:
        for event in events:
            if isinstance(event, Progress):
                bar.update(event)
            elif isinstance(event, Segmented):
                print(f"segmented {len(event.instances)} instance(s)")
                _print_instances(event.instances)
            else:
                result = event
    assert result is not None, "the stream ended without a result"
    return result


def _replace(client: Client, args: argparse.Namespace) -> None:
    options = {"strength": args.strength, "steps": args.steps, "seed": args.seed,
               "mask_dilation": args.dilation, "feather": args.feather,
               "output_format": codecs.format_of(str(args.output))}
    if args.command == "fill":
        events = client.fill(args.image, args.box, args.prompt, **options)
    else:
        _check_text("replace", args)
        targets = sum(bool(x) for x in (args.text is not None, args.point or args.box,
                                        args.mask))
        if targets != 1:
            raise SystemExit("mic2e replace: give exactly one of --text, --point/--box, --mask")
        events = client.replace_objects(
            args.image, args.prompt, text=args.text, points=args.point, box=args.box,
            masks=args.mask, min_score=args.min_score, **options)
    result = _follow(events)
    result.save(args.output)
    note = f" (prompt cut to: {result.truncated_prompt!r})" if result.prompt_truncated else ""
    print(f"wrote {args.output} ({result.image.width}x{result.image.height}, "
          f"{int(result.mask.sum())} px repainted){note}")
    _print_timings(result.timings)


def _segment(client: Client, args: argparse.Namespace) -> None:
    _check_text("segment", args)
    if args.text:
        result = client.segment_by_text(args.image, args.text, score_threshold=args.min_score)
        instances = result.instances
    elif args.point or args.box:
        result = client.segment_by_prompt(args.image, points=args.point, box=args.box,
                                          return_alternatives=False)
        instances = [result.best]
    else:
        raise SystemExit("mic2e segment: give --text, --point or --box")
    args.output.mkdir(parents=True, exist_ok=True)
    print(f"{len(instances)} instance(s) in {result.width}x{result.height}")
    _print_instances(instances)
    for i, inst in enumerate(instances):
        (args.output / f"mask_{i:03d}.png").write_bytes(codecs.encode_mask_png(inst.mask))
    print(f"wrote {len(instances)} mask(s) to {args.output}")
    _print_timings(result.provenance.timings)


def _generate(client: Client, args: argparse.Namespace) -> None:
    result = None
    fmt = codecs.format_of(str(args.output))
    with _Bar() as bar:
        for event in client.generate(args.prompt, width=args.width, height=args.height,
                                     steps=args.steps, seed=args.seed, output_format=fmt):
            if isinstance(event, Progress):
                bar.update(event)
            else:
                result = event
    assert result is not None
    result.save(args.output)
    note = f" (prompt cut to: {result.truncated_prompt!r})" if result.prompt_truncated else ""
    print(f"wrote {args.output} ({result.image.width}x{result.image.height}, "
          f"seed {result.provenance.seed}){note}")
    _print_timings(result.provenance.timings)


def _health(client: Client, args: argparse.Namespace) -> int:
    worst = 0
    for service in _SERVICES:
        try:
            status = client.health(service)
        except Mic2eError as exc:
            if exc.code.name == "NOT_FOUND":
                continue
            status, worst = exc.code.name, 1
        worst = worst or int(status != "SERVING")
        print(f"{service or '(server)':<30} {status}")
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    output = getattr(args, "output", None)
    if output is not None and args.command != "segment":
        try:  # before any call: a format we cannot write is a usage error
            codecs.format_of(str(output))
        except codecs.CodecError as exc:
            parser.error(f"-o {output}: {exc}")
    try:
        credentials = None
        if args.tls_ca or args.tls_cert:
            credentials = tls_credentials(args.tls_ca, args.tls_cert, args.tls_key)
        with Client(args.server, timeout=args.timeout, token=args.token,
                    credentials=credentials) as client:
            if args.command == "health":
                return _health(client, args)
            {"remove": _remove, "replace": _replace, "fill": _replace, "segment": _segment,
             "generate": _generate}[args.command](client, args)
    except Mic2eError as exc:
        print(f"error: {exc.code.name}: {exc.message}", file=sys.stderr)
        for field, why in exc.field_violations:
            print(f"  field {field}: {why}", file=sys.stderr)
        if exc.metadata:
            print(f"  {exc.reason}: {exc.metadata}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
