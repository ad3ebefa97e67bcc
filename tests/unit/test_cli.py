"""The `mic2e` CLI's own argument handling (no server needed)."""

from __future__ import annotations

import pytest
from mic2e import cli


@pytest.mark.parametrize("argv", [
    ["--server", "h:1", "--token", "t", "generate", "a cat", "-o", "a.png"],
    ["generate", "a cat", "-o", "a.png", "--server", "h:1", "--token", "t"],
    ["--server", "other:9", "generate", "a cat", "-o", "a.png", "--server", "h:1",
     "--token", "t"],
])
def test_connection_options_go_before_or_after_the_command(argv):
    args = cli.build_parser().parse_args(argv)
    assert (args.command, args.server, args.token) == ("generate", "h:1", "t")


def test_connection_options_have_their_defaults():
    args = cli.build_parser().parse_args(["health"])
    assert (args.server, args.token, args.timeout) == (cli.DEFAULT_ADDRESS, None, None)


@pytest.mark.parametrize("command", ["remove", "segment"])
def test_an_empty_text_is_reported_as_empty(command, capsys):
    out = "out.png" if command == "remove" else "out"  # remove writes the format it names
    argv = [command, "photo.png", "--text", "  ", "-o", out, "--server", "127.0.0.1:1"]
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert "--text is empty" in str(info.value.code)
