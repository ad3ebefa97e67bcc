"""The `mic2e` command line's commands and options (argparse), for `cli`: each mistake in
it is one line and exit 2 (`_Parser`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from mic2e._cli_errors import USAGE
from mic2e.client import DEFAULT_ADDRESS
from mic2e.types import Point


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: the mistake is what the user reads.
        self.exit(USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


def _add_target(p: argparse.ArgumentParser, *, masks: bool) -> None:
    p.add_argument("--text", help="what to find, e.g. 'dog' (all instances)")
    p.add_argument("--point", type=_point, action="append", default=[], metavar="X,Y[,LABEL]",
                   help="a click on the object (LABEL 0 marks background); repeatable")
    p.add_argument("--box", type=_box, metavar="X0,Y0,X1,Y1", help="a box around the object")
    if masks:
        p.add_argument("--mask", type=Path, action="append", default=[], metavar="FILE",
                       help="a ready mask image (white = the object); repeatable")
    p.add_argument("--min-score", type=float, metavar="S",
                   help="with --text: lowest instance score kept, 0 to 1 (default: the "
                        "server's, 0.3); lower it when nothing is found")


def _add_connection(p: argparse.ArgumentParser, *, after_command: bool = False) -> None:
    """Options of every command. After the command they default to SUPPRESS, so one not
    typed there leaves what was typed before the command (or the default) alone."""
    d = {"default": argparse.SUPPRESS} if after_command else {}
    p.add_argument("--server", metavar="HOST:PORT",
                   help=f"the server to call (default {DEFAULT_ADDRESS}, the orchestrator)",
                   **(d or {"default": DEFAULT_ADDRESS}))
    p.add_argument("--timeout", type=_seconds, metavar="S",
                   help="deadline of the call, in seconds (default: none)", **d)
    p.add_argument("--token", help="bearer token, if the server requires one", **d)
    p.add_argument("--tls-ca", metavar="PEM", help="use TLS, trusting this CA", **d)
    p.add_argument("--tls-cert", metavar="PEM", help="client certificate (mutual TLS)", **d)
    p.add_argument("--tls-key", metavar="PEM", help="client private key (mutual TLS)", **d)
    p.add_argument("--debug", action="store_true",
                   help="print the traceback of any failure (for a bug report)",
                   **(d or {"default": False}))


def _add_pictures(p: argparse.ArgumentParser) -> None:
    """The output options of an edit."""
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output image file (.png, .jpg, .webp); overwritten if it exists")
    p.add_argument("--mask-out", type=Path, metavar="PNG",
                   help="also write the mask that was repainted, as a 1-bit PNG")
    p.add_argument("--compare", type=Path, metavar="FILE",
                   help="also write the input and the result side by side (.png, .jpg, "
                        ".webp)")


def _add_inpainting(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", required=True, help="what to paint there, e.g. 'a cat'")
    _add_pictures(p)
    p.add_argument("--strength", type=float,
                   help="how much to repaint, in (0, 1] (default 1: from scratch)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the checkpoint's)")
    p.add_argument("--seed", type=int, help="random seed (default: random)")
    p.add_argument("--dilation", type=int, help="grow the mask by N pixels (default 8)")
    p.add_argument("--feather", type=int, help="blend over N pixels (default 8)")


#: The end of every command's --help (the whole table is in `mic2e --help`).
_EXIT_CODES = ("exit codes: 0 done, 1 the call failed, 2 bad usage, 3 nothing found "
               "(--text matched no instance), 130 interrupted (Ctrl-C)")


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The `mic2e` command line; `description`: its --help text (the CLI's docstring)."""
    parser = _Parser(prog="mic2e", description=description,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_connection(parser)
    connection = _Parser(add_help=False)
    _add_connection(connection, after_command=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, *, epilog: str = _EXIT_CODES) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=summary, epilog=epilog,
                              parents=[connection])

    p = command("remove", "remove objects from an image")
    p.add_argument("image", type=Path, metavar="IMAGE", help="the photo (PNG, JPEG or WebP)")
    _add_target(p, masks=True)
    _add_pictures(p)
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

    p = command("replace", "repaint objects from a prompt ('the dog' -> 'a cat')")
    p.add_argument("image", type=Path, metavar="IMAGE", help="the photo (PNG, JPEG or WebP)")
    _add_target(p, masks=True)
    _add_inpainting(p)

    p = command("fill", "paint a prompt into a box")
    p.add_argument("image", type=Path, metavar="IMAGE", help="the photo (PNG, JPEG or WebP)")
    p.add_argument("--box", type=_box, required=True, metavar="X0,Y0,X1,Y1",
                   help="the region to fill")
    _add_inpainting(p)

    p = command("segment", "find objects: a mask PNG per instance and an overlay")
    p.add_argument("image", type=Path, metavar="IMAGE", help="the photo (PNG, JPEG or WebP)")
    _add_target(p, masks=False)
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output folder (made if missing): mask_NNN.png and overlay.jpg")

    p = command("generate", "text to image")
    p.add_argument("prompt", metavar="PROMPT", help="what to draw, e.g. 'a red bicycle'")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output image file (.png, .jpg, .webp); overwritten if it exists")
    p.add_argument("--width", type=int, help="default: the server's")
    p.add_argument("--height", type=int, help="default: the server's")
    p.add_argument("--steps", type=int, help="default: the server's")
    p.add_argument("--seed", type=int)

    command("health", "the health of the server and, through the orchestrator, of every "
                      "model server behind it: one line per service",
            epilog="exit codes: 0 every service listed is SERVING, 1 one is not (or no "
                   "server answered), 2 bad usage")
    return parser
