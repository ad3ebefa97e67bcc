"""The `mic2e` CLI without a mic2e server: its arguments, the one line it prints for each
ordinary mistake, and what it draws."""

from __future__ import annotations

import http.server
import socket
import threading

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2
from mic2e import _cli_pictures as pictures
from mic2e import cli
from mic2e._cli_errors import connection_problem, explain, wrong_server
from mic2e.errors import from_rpc_error
from mic2e.types import Instance
from PIL import Image

NOWHERE = "127.0.0.1:1"  # never called: each mistake here is found before any call


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """`mic2e argv` in this process: exit code, stdout, stderr."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own (usage, --help)
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (90, 90, 90)).save(path)
    return path


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
    assert (args.server, args.token, args.timeout, args.debug) == (
        cli.DEFAULT_ADDRESS, None, None, False)
    assert cli.build_parser().parse_args(["health", "--debug"]).debug


@pytest.mark.parametrize("command", ["remove", "segment"])
def test_an_empty_text_is_reported_as_empty(command, photo, tmp_path, capsys):
    out = str(tmp_path / ("out.png" if command == "remove" else "out"))
    code, _, err = run([command, str(photo), "--text", "  ", "-o", out, "--server", NOWHERE],
                       capsys)
    assert code == 2
    assert one_line(err) == f"mic2e {command}: --text is empty; say what to find, e.g. --text dog"


def test_help_says_what_each_exit_code_means(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    codes = out[out.index("Exit codes:"):]
    for line in ("0    done", "1    the call failed", "2    bad usage", "3    nothing found",
                 "130  interrupted (Ctrl-C)"):
        assert line in codes
    code, out, _ = run(["remove", "--help"], capsys)
    assert "130 interrupted" in out and "--mask-out" in out and "--compare" in out


@pytest.mark.parametrize("case", [
    "missing image", "folder as image", "missing mask", "mask not an image", "output folder",
    "output a file in place of its folder", "segment output a file", "no target",
    "two targets", "server without a port", "mask-out not png", "compare format",
    "missing tls file"])
def test_each_mistake_in_the_command_line_is_one_line_and_exit_2(case, photo, tmp_path,
                                                                  capsys):
    out = str(tmp_path / "out.png")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    argv, said = {
        "missing image": (["remove", "nosuch.jpg", "--text", "dog", "-o", out],
                          "mic2e remove: nosuch.jpg: no such file: give the path of an image"),
        "folder as image": (["remove", str(tmp_path), "--text", "dog", "-o", out],
                            f"mic2e remove: {tmp_path}: is a folder, not a file"),
        "missing mask": (["remove", str(photo), "--mask", "nomask.png", "-o", out],
                         "mic2e remove: --mask nomask.png: no such file: give a mask image"),
        "mask not an image": (["replace", str(photo), "--mask", str(notes), "--prompt", "a cat",
                               "-o", out], f"mic2e replace: --mask {notes}: not a PNG"),
        "output folder": (["remove", str(photo), "--text", "dog", "-o", str(tmp_path)],
                          f"mic2e remove: -o {tmp_path}: is a folder: name a file in it"),
        "output a file in place of its folder": (
            ["generate", "a cat", "-o", str(notes / "out.png")],
            f"mic2e generate: -o {notes / 'out.png'}: {notes} is a file, not a folder"),
        "segment output a file": (["segment", str(photo), "--text", "dog", "-o", str(notes)],
                                  f"mic2e segment: -o {notes}: is a file; segment writes a "
                                  f"folder"),
        "no target": (["remove", str(photo), "-o", out],
                      "mic2e remove: give exactly one of --text, --point/--box, --mask"),
        "two targets": (["segment", str(photo), "--text", "dog", "--box", "1,1,5,5", "-o",
                         str(tmp_path / "masks")],
                        "mic2e segment: give exactly one of --text, --point/--box"),
        "server without a port": (["--server", "localhost", "health"],
                                  "mic2e health: --server localhost: give HOST:PORT, e.g. "
                                  "localhost:50051"),
        "mask-out not png": (["remove", str(photo), "--text", "dog", "-o", out, "--mask-out",
                              "m.jpg"], "mic2e remove: --mask-out m.jpg: cannot write that: "
                                        "name it .png"),
        "compare format": (["fill", str(photo), "--box", "1,1,5,5", "--prompt", "a cat", "-o",
                            out, "--compare", "c.gif"],
                           "mic2e fill: --compare c.gif: cannot write a .gif file"),
        "missing tls file": (["--tls-ca", "ca.pem", "health"],
                             "mic2e health: --tls-ca: no such file: give a PEM file"),
    }[case]
    code, _, err = run([*argv, "--server", NOWHERE] if case != "server without a port"
                       else argv, capsys)
    assert code == 2
    assert one_line(err).startswith(said)


def test_argparse_mistakes_are_one_line_and_exit_2(capsys):
    code, _, err = run(["remove", "photo.png", "--text", "dog"], capsys)
    assert code == 2
    assert one_line(err) == ("mic2e remove: the following arguments are required: -o/--output "
                             "(see `mic2e remove --help`)")
    code, _, err = run(["--timeout", "0", "health"], capsys)
    assert code == 2 and "--timeout" in one_line(err)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nothing_listening_says_how_to_start_a_server(photo, tmp_path, capsys):
    address = f"127.0.0.1:{free_port()}"
    code, _, err = run(["--server", address, "remove", str(photo), "--text", "dog", "-o",
                        str(tmp_path / "out.png")], capsys)
    assert code == 1
    assert one_line(err) == (f"mic2e: no server at {address} (connection refused): start one "
                             f"with `mic2e-server up`, or pass --server HOST:PORT")
    assert not (tmp_path / "out.png").exists()


def test_debug_shows_the_traceback_then_the_line(capsys):
    address = f"127.0.0.1:{free_port()}"
    code, _, err = run(["--server", address, "health", "--debug"], capsys)
    assert code == 1
    assert "Traceback" in err
    assert err.strip().splitlines()[-1].startswith(f"mic2e: no server at {address}")


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the test reads stderr: the CLI's only
        pass


def test_an_http_port_is_named_as_not_grpc(capsys):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        code, _, err = run(["--server", address, "health"], capsys)
    finally:
        server.shutdown()
        server.server_close()
    assert code == 1
    line = one_line(err)
    assert line.startswith(f"mic2e: {address} is not a gRPC port")
    assert "the orchestrator's gRPC port is 50051" in line and "8080 is its HTTP port" in line


def _error(code: grpc.StatusCode, *details) -> Exception:
    """The client's exception for a call that failed with `code` and google.rpc `details`."""
    status = status_pb2.Status(code=code.value[0], message="m")
    for detail in details:
        status.details.add().Pack(detail)
    return from_rpc_error(code, "m", [("grpc-status-details-bin", status.SerializeToString())])


def _info(reason: str, **metadata: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, metadata=metadata)


@pytest.mark.parametrize("case", ["no instances", "no instances, min score", "stage down",
                                  "bad mask", "bad point", "busy"])
def test_a_refusal_is_said_in_the_cli_words(case):
    argv = ["--server", "o:1", "remove", "p.png", "--mask", "a.png", "--mask", "b.png", "-o",
            "x.png"]
    bad = error_details_pb2.BadRequest
    exc, code, said = {
        "no instances": (_error(grpc.StatusCode.NOT_FOUND,
            _info("NO_INSTANCES", text="dog")), 3, "no instance of 'dog' found: try a lower "
                                                    "--min-score (the default is 0.3)"),
        "no instances, min score": (_error(grpc.StatusCode.NOT_FOUND,
            _info("NO_INSTANCES", text="dog")), 3, "try a --min-score below 0.6"),
        "stage down": (_error(grpc.StatusCode.UNAVAILABLE, _info(
            "STAGE_FAILED", stage="object_clear", server="10.0.0.3:50053")), 1,
            "the orchestrator at o:1 cannot reach its object_clear server at 10.0.0.3:50053: "
            "start that server, or give the orchestrator its address (--object-clear-address)"),
        "bad mask": (_error(grpc.StatusCode.INVALID_ARGUMENT, bad(field_violations=[
            bad.FieldViolation(field="masks[1]", description="is 3x3, the image 4x4")])), 1,
            "--mask b.png: is 3x3, the image 4x4 (INVALID_ARGUMENT, field masks[1])"),
        "bad point": (_error(grpc.StatusCode.INVALID_ARGUMENT, bad(field_violations=[
            bad.FieldViolation(field="prompt.points[0]", description="outside")])), 1,
            "--point 500,7: outside (INVALID_ARGUMENT, field prompt.points[0])"),
        "busy": (_error(grpc.StatusCode.RESOURCE_EXHAUSTED, _info("QUEUE_FULL"),
                        error_details_pb2.RetryInfo(retry_delay={"seconds": 2})), 1,
            "o:1 is busy (its queue is full): try again in 2 s (RESOURCE_EXHAUSTED)"),
    }[case]
    if case == "no instances, min score":
        argv += ["--min-score", "0.6"]
    if case == "bad point":
        argv = ["--server", "o:1", "remove", "p.png", "--point", "500,7", "-o", "x.png"]
    mistake = explain(exc, cli.build_parser().parse_args(argv), lambda: None)
    assert mistake.code == code
    assert said in mistake.line


def test_the_overlay_tints_each_mask_and_leaves_the_rest_alone():
    photo = Image.new("RGB", (100, 80), (100, 100, 100))
    mask = np.zeros((80, 100), bool)
    mask[20:35, 20:40] = True
    drawn = np.asarray(pictures.overlay(photo, [Instance(mask, 0.9, (20, 20, 40, 35))]))
    assert drawn.shape == (80, 100, 3)
    assert tuple(drawn[28, 30]) == (165, 62, 88)  # half the first colour, half the grey
    assert tuple(drawn[70, 90]) == (100, 100, 100)  # far from the box and its label
    assert (drawn[:20, 20:40] != 100).any()  # the label, above the box


def test_side_by_side_puts_both_at_the_same_height():
    before = Image.new("RGB", (50, 40), (10, 20, 30))
    after = Image.new("RGB", (50, 40), (200, 100, 0))
    pair = np.asarray(pictures.side_by_side(before, after))
    assert pair.shape == (40, 104, 3)
    assert (pair[:, :50] == (10, 20, 30)).all() and (pair[:, 54:] == (200, 100, 0)).all()


@pytest.mark.parametrize("message,said", [
    # gRPC's own words, as recorded for each mistake.
    ("connections to all backends failing; last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to "
     "connect to remote host: Connection refused", "no server at h:1 (connection refused)"),
    ("errors resolving h:1: [field:hostname lookup error:address lookup failed for h:1: "
     "Domain name not found]", "cannot find the host 'h' of --server h:1"),
    ("connections to all backends failing; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Failed "
     "parsing HTTP/2 (Expected SETTINGS frame as the first frame, got frame type 79)",
     "h:1 is not a gRPC port"),
    ("connections to all backends failing; last error: UNKNOWN: ipv4:127.0.0.1:1: Tls "
     "handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:SSL routines:"
     "OPENSSL_internal:WRONG_VERSION_NUMBER: Invalid certificate verification context: OK",
     "h:1 does not speak TLS (the TLS handshake failed): drop --tls-ca"),
    ("connections to all backends failing; last error: UNKNOWN: ipv4:127.0.0.1:1: Tls "
     "handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:"
     "OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK",
     "h:1 showed a certificate that --tls-ca does not vouch for"),
    ("connections to all backends failing; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket "
     "closed", "h:1 closed the connection at once: if it serves TLS, pass --tls-ca"),
])
def test_a_connection_failure_is_said_with_what_to_do(message, said):
    assert connection_problem("h:1", message).startswith(said)


@pytest.mark.parametrize("served,said", [
    (["mic2e.v1.ObjectClearService"], "o:1 is an object-clear server (mic2e.v1.ObjectClear"
                                      "Service), which cannot do `mic2e replace`"),
    (["mic2e.v1.EditService"], "the orchestrator at o:1 has no call for `mic2e replace`: it "
                               "is older than this client"),
    (None, "o:1 serves no mic2e service"),
])
def test_a_call_the_server_lacks_names_what_the_server_is(served, said):
    assert wrong_server("o:1", "replace", served).startswith(said)
