"""Tests for the live view's server (`jaxstyle.live`), in-process with a board fed by hand.

What a browser sees of a real run is tested in `test_live_browser.py`; here
are the rules the server keeps whatever the client: which hosts and paths it
answers, the token, the stop button, and that a client that never reads
cannot block the run.
"""

from __future__ import annotations

import dataclasses
import http.client
import io
import json
import socket
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("werkzeug")

from jaxstyle import live, report  # noqa: E402
from jaxstyle.config import RunOptions, StylizeConfig  # noqa: E402
from jaxstyle.errors import JaxstyleError, UsageError  # noqa: E402


@dataclasses.dataclass
class _Progress:
    """The fields of `optimize.Progress` that the board reads."""

    items: tuple
    step: int
    steps: int
    scale: int
    scales: int
    losses: np.ndarray
    terms: dict
    images: np.ndarray
    elapsed: float


def _progress(step: int, images: np.ndarray, *, every: int = 10, steps: int = 100) -> _Progress:
    n = len(images)
    losses = np.linspace(2.0, 1.0, every, dtype=np.float32)[None].repeat(n, 0) / step
    terms = {"content": np.full(n, 0.5 / step), "style": np.full(n, 0.4 / step), "tv": np.full(n, 0.1 / step),
             "style:relu1_1": np.full(n, 0.3 / step), "style:relu2_1": np.full(n, 0.1 / step)}
    return _Progress(tuple(range(n)), step, steps, 0, 1, losses, terms, images, elapsed=step / 100)


def _pictures(n: int = 2, h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, h, w, 3)).astype(np.float32)


@pytest.fixture
def served():
    """A server on a free port of 127.0.0.1 whose stop button counts its presses."""
    stops = []
    server = live.start("0", "batch", stop=lambda: stops.append(1))
    server.stops = stops
    yield server
    server.close()


def _get(server, path: str, *, host: str | None = None, method: str = "GET", headers: dict | None = None):
    """(status, headers, body) of one request, sent as given (no path normalisation)."""
    port = server.server.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", f"127.0.0.1:{port}" if host is None else host)
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    conn.endheaders()
    answer = conn.getresponse()
    body = answer.read()
    conn.close()
    return answer.status, dict(answer.getheaders()), body


def _first_event(server, path: str = "/events") -> dict:
    """The first state the event stream sends."""
    port = server.server.server_address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        data = b""
        while b"\ndata: " not in data or not data.split(b"\ndata: ", 1)[1].split(b"\n\n")[1:]:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    line = data.split(b"\ndata: ", 1)[1].split(b"\n\n")[0]
    return json.loads(line)


# ----------------------------------------------------------------------------
# Addresses


@pytest.mark.parametrize("text, expected", [("8000", ("127.0.0.1", 8000)), ("0", ("127.0.0.1", 0)),
                                            ("0.0.0.0:8080", ("0.0.0.0", 8080)), ("[::1]:9000", ("::1", 9000)),
                                            ("localhost:1", ("localhost", 1))])
def test_addresses(text, expected):
    assert live.parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "http", "80000", "host:", "::1:80", "1.2.3.4:-1"])
def test_bad_addresses_are_refused_with_the_form(text):
    with pytest.raises(UsageError, match=r"\[ADDRESS:\]PORT"):
        RunOptions(serve=text or ":")


def test_a_taken_port_is_one_line_naming_the_flag():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=f"cannot serve the live view on 127.0.0.1:{port}: .*another port"):
            live.start(str(port), "stylize")


def test_without_werkzeug_the_flag_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "werkzeug", None)
    with pytest.raises(JaxstyleError, match=r"needs Werkzeug: pip install 'jaxstyle\[live\]'"):
        live.check("0")


# ----------------------------------------------------------------------------
# What it serves


def test_the_page_its_files_and_a_picture(served):
    status, headers, body = _get(served, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    token = served.server.app.token
    assert f'data-token="{token}"' in body.decode() and "live.js" in body.decode()
    assert "default-src 'self'" in headers["Content-Security-Policy"] and headers["X-Content-Type-Options"] == "nosniff"
    for name in ("live.js", "live.css"):
        status, headers, body = _get(served, f"/{name}")
        assert status == 200 and body == live.page_file(name)
    pictures = _pictures()
    served.board.start(["a.png", "b.png"])
    served.board.report(_progress(10, pictures), seconds_left=5.0, memory=("process", 2**20))
    status, headers, body = _get(served, "/tile/1.png?v=1")
    assert status == 200 and headers["Content-Type"] == "image/png"
    shown = np.asarray(Image.open(io.BytesIO(body)))
    # The PNG holds the picture in 8 bits, exactly: rounding each value once.
    np.testing.assert_array_equal(shown, np.round(pictures[1] * 255).astype(np.uint8))


def test_the_event_stream_carries_the_run(served):
    served.board.configure(live.run_settings(StylizeConfig(steps=100), RunOptions(serve="0", quiet=True)))
    served.board.start(["a.png", "b.png"])
    for step in (10, 20):
        served.board.report(_progress(step, _pictures()), seconds_left=None, memory=("device", 3 * 2**30))
    state = _first_event(served)
    assert state["status"] == "running" and state["command"] == "batch"
    assert state["settings"]["steps"] == 100 and state["settings"]["serve"] == "0" and "log" not in state["settings"]
    assert [t["name"] for t in state["tiles"]] == ["a.png", "b.png"]
    assert [p["step"] for p in state["points"]] == list(range(20))  # each step's loss, since the program began
    last = state["points"][-1]
    assert last["terms_step"] == 20 and last["terms"]["style:relu1_1"] == pytest.approx(0.3 / 20)
    stats = state["stats"]
    assert stats["step"] == 20 and stats["memory"] == {"where": "device", "bytes": 3 * 2**30}
    assert stats["steps_per_second"] == pytest.approx(100.0)  # 10 steps in 0.1 s (`_progress` elapsed)
    assert stats["seconds_left"] == pytest.approx(0.8)  # 80 steps left at that speed


def test_programs_keep_their_finished_pictures_as_a_strip(served):
    """A video's frames are programs one after another: every finished frame stays, as a host preview."""
    frames = _pictures(3, seed=1)
    for i in range(3):
        served.board.start([f"frame{i + 1:05d}"])
        served.board.report(_progress(10, frames[i:i + 1]), seconds_left=None, memory=None)
    tiles = served.board.tiles
    assert [t.name for t in tiles] == ["frame00001", "frame00002", "frame00003"]
    assert tiles[0].images is None and tiles[1].images is None and tiles[2].images is not None
    for i in range(3):
        status, _, body = _get(served, f"/tile/{i}.png")
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(body))), np.round(frames[i] * 255))
    assert served.board.current == 2


def test_big_pictures_are_shown_smaller():
    big = np.zeros((1, 2500, 1200, 3), np.float32)
    assert live.preview(big, 0).shape == (834, 400, 3)  # every 3rd pixel: 2500 / 3 rounded up


# ----------------------------------------------------------------------------
# What it refuses


@pytest.mark.parametrize("host", ["evil.example:{port}", "evil.example", "127.0.0.1:1", "127.0.0.1", "",
                                  "localhost.evil.example:{port}", "10.0.0.1:{port}"])
def test_a_foreign_host_header_is_refused(served, host):
    """DNS rebinding: a page of another site that resolves its name to 127.0.0.1 sends its own Host."""
    port = served.server.server_address[1]
    status, _, body = _get(served, "/", host=host.format(port=port))
    assert status == 400 and b"own address" in body


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}"])
def test_this_machines_names_are_accepted(served, host):
    port = served.server.server_address[1]
    assert _get(served, "/", host=host.format(port=port))[0] == 200


@pytest.mark.parametrize("path", ["/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2fetc%2fpasswd",
                                  "/%252e%252e/etc/passwd", "/tile/../../../etc/passwd", "/live.py", "/page/live.js",
                                  "/jaxstyle/live.py", "/tile/7.png", "/tile/-1.png", "/tile/x.png", "/live.html",
                                  "//etc/passwd", "/events/../live.py", "/static/../live.js"])
def test_paths_outside_the_page_are_not_found(served, path):
    served.board.start(["a.png"])
    served.board.report(_progress(10, _pictures(1)), seconds_left=None, memory=None)
    status, _, body = _get(served, path)
    assert status == 404 and b"root:" not in body


def test_stop_needs_the_pages_token_and_a_post(served):
    served.board.configure({})
    assert _get(served, "/stop", method="POST")[0] == 403
    assert _get(served, "/stop", method="POST", headers={"X-Jaxstyle-Token": "guess"})[0] == 403
    assert _get(served, "/stop")[0] == 405
    assert served.stops == []
    token = served.server.app.token
    assert _get(served, "/stop", method="POST", headers={"X-Jaxstyle-Token": token})[0] == 202
    assert served.stops == [1] and served.board.status == "stopping"
    assert _get(served, "/stop", method="POST", headers={"X-Jaxstyle-Token": token})[0] == 202
    assert served.stops == [1]  # once


def test_beyond_this_machine_every_path_needs_the_token():
    server = live.start("0.0.0.0:0", "stylize", stop=lambda: None)
    try:
        port = server.server.server_address[1]
        token = server.server.app.token
        assert server.url.endswith(f":{port}/{token}/") and len(token) >= 20
        for path in ("/", "/events", "/live.js", "/tile/0.png", f"/{token[:-1]}/", f"/x{token}/"):
            status, _, body = _get(server, path)
            assert status == 403 and b"token" in body, path
        assert _get(server, f"/{token}/")[0] == 200
        assert _get(server, f"/{token}")[0] == 308  # to the page's own address, with its slash
        assert _get(server, f"/{token}/", host=f"192.0.2.7:{port}")[0] == 200  # any address of this machine
        assert _get(server, f"/{token}/", host=f"evil.example:{port}")[0] == 400
        assert _get(server, f"/{token}/../../etc/passwd")[0] == 404
    finally:
        server.close()


def test_too_many_event_streams_are_refused(served, monkeypatch):
    monkeypatch.setattr(served.server.app, "streams", threading.BoundedSemaphore(1))
    port = served.server.server_address[1]
    with socket.create_connection(("127.0.0.1", port)) as held:
        held.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        held.recv(100)  # the stream has begun
        assert _get(served, "/events")[0] == 503


# ----------------------------------------------------------------------------
# A client that never reads


def _stalled_clients(server, n: int) -> list[socket.socket]:
    """``n`` connections that ask for the event stream, then never read (their receive buffers kept small)."""
    port = server.server.server_address[1]
    clients = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        clients.append(s)
    return clients


def test_a_client_that_never_reads_does_not_block_the_run_or_the_others(served):
    """The stalled streams fill their sockets and block their own threads; the run's reports, the other
    clients and closing the server go on. A blocked report would hang here for ever: the deadline is only
    there to turn a hang into a failure."""
    stalled = _stalled_clients(served, 4)
    pictures = _pictures(4, 256, 256)
    # Every event carries the settings: 64 kB of them make 300 events 19 MB a client, more than the socket
    # buffers hold (Linux's largest TCP send buffer is 4 MB by default), so the stalled streams must block.
    served.board.configure({"notes": "x" * 65536})
    served.board.start([f"{i}.png" for i in range(4)])
    done = threading.Event()

    def run():  # 300 reports of 10 steps
        for step in range(10, 3010, 10):
            served.board.report(_progress(step, pictures, steps=3000), seconds_left=None, memory=None)
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    assert done.wait(60), "a report waited on a client that does not read"
    took = time.monotonic() - started
    # The stalled clients' streams are stuck in a send (their buffers are full), while a new client is served.
    assert len(_first_event(served)["points"]) == 3000
    assert _get(served, "/tile/3.png")[0] == 200
    closing = threading.Thread(target=served.close, daemon=True)
    closing.start()
    closing.join(30)
    assert not closing.is_alive(), "closing the server waited on a stalled client"
    served.close = lambda: None  # closed already: the fixture's close is a no-op
    for s in stalled:
        s.close()
    print(f"300 reports with 4 stalled clients: {took:.2f} s")


SIGPIPE_CHECK = """
import signal, socket, sys, time
import numpy as np
signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as the console script sets it
sys.path.insert(0, sys.argv[1])
from test_live import _progress, _pictures
from jaxstyle import live
server = live.start("0", "stylize", stop=lambda: None)
port = server.server.server_address[1]
server.board.configure({"notes": "x" * 65536})
server.board.start(["a.png"])
for _ in range(5):  # browsers that read the start of the stream, then go away
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET /events HTTP/1.1\\r\\nHost: 127.0.0.1:{port}\\r\\n\\r\\n".encode())
    s.recv(1000)
    s.close()  # as a closed tab: the server's next write draws a reset, and the one after it fails
for step in range(10, 1010, 10):
    server.board.report(_progress(step, _pictures(1), steps=1000), seconds_left=None, memory=None)
    time.sleep(0.002)
server.close()
print("alive", signal.getsignal(signal.SIGPIPE) == signal.SIG_DFL)
"""


def test_a_browser_that_goes_away_does_not_end_the_run():
    """With SIGPIPE's default action (the console script's), writing to a closed browser's socket would
    kill the process; the live view ignores SIGPIPE while it serves, and restores it after."""
    import os
    import pathlib
    import subprocess

    here = pathlib.Path(__file__).parent
    run = subprocess.run([sys.executable, "-c", SIGPIPE_CHECK, str(here)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 0 and run.stdout.split() == ["alive", "True"], (run.returncode, run.stderr[-2000:])


# ----------------------------------------------------------------------------
# The reporter feeds it


def test_the_reporter_serves_and_ends_the_board(tmp_path, capsys):
    options = RunOptions(serve="0", quiet=True)
    reporter = report.Reporter(options, 20, command="sweep")
    url = reporter.live.url
    assert url.startswith("http://127.0.0.1:") and url in capsys.readouterr().err
    reporter.start(report.Program(["a", "b"], None, None, lambda p, why: []))
    with reporter.running(StylizeConfig(steps=10)):
        reporter(_progress(10, _pictures(), steps=10))
        assert reporter.live.board.status == "running"
    assert reporter.live.board.status == "finished"
    # Closed: the serving thread ended and the listening socket is closed (connecting to the freed port is
    # no test: the kernel may hand that port to the connecting socket itself, which then connects to itself).
    reporter.live.thread.join(5)
    assert not reporter.live.thread.is_alive() and reporter.live.sock.fileno() == -1


def test_an_interrupted_run_says_so_on_the_page(tmp_path):
    saved = tmp_path / "out.png.interrupted.png"
    reporter = report.Reporter(RunOptions(serve="0", quiet=True), 20)
    reporter.start(report.Program(["a"], None, None, lambda p, why: [saved]))
    with pytest.raises(Exception) as error:
        with reporter.running(StylizeConfig(steps=20)):
            reporter(_progress(10, _pictures(1), steps=20))
            raise report.Interrupted(2)
    assert error.value.exit_code == 130
    assert reporter.live.board.status == "stopped" and str(saved) in reporter.live.board.message


# ----------------------------------------------------------------------------
# The command line


@pytest.fixture
def photo_and_painting(tmp_path):
    rng = np.random.default_rng(0)
    paths = tmp_path / "photo.png", tmp_path / "painting.png"
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
    return paths


@pytest.mark.parametrize("serve, message", [("80000", r"--serve must be \[ADDRESS:\]PORT"),
                                            ("taken", "cannot serve the live view on 127.0.0.1:")])
def test_the_command_refuses_a_bad_or_taken_address_in_one_line(photo_and_painting, tiny_weights, tmp_path,
                                                                 capsys, serve, message):
    from jaxstyle import cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        if serve == "taken":
            serve = str(taken.getsockname()[1])
        code = cli.main(["stylize", str(photo_and_painting[0]), "--style", str(photo_and_painting[1]), "-o",
                         str(tmp_path / "out.png"), "--weights", str(tiny_weights), "--size", "32", "--steps", "2",
                         "--serve", serve])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert __import__("re").search(message, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["painting.png", "photo.png"]
