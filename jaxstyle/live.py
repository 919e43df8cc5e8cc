"""The live view (``--serve``): a local web page that shows a run as it paints.

Two sides share one `Board`:

- the run (the `report.Reporter`, in the main thread) writes to it at every
  report: the pictures, the loss and its terms, the speed. Writing only swaps
  references under a lock that no reader holds while it talks to a browser,
  so a slow, stalled or absent browser never slows the run;
- the server's threads read it: each browser keeps one server-sent event
  stream open, and fetches the pictures it is told have changed. Pictures are
  brought to the host and encoded as PNG in those threads, on demand.

The server is Werkzeug's threaded WSGI server: one thread per connection (a
client that never reads holds only its own thread), routing that knows a
fixed list of paths (there is no file system behind it: the page's three files
ship in the package), and no dependency beyond MarkupSafe.

Safe by default: it binds to 127.0.0.1; any other address needs the random
token printed at start in every URL; a ``Host`` header that names neither
this machine nor an IP address is refused (DNS rebinding); and the stop
button needs the token from the page (another site's page cannot read it).
Stopping sends the run the SIGINT that Ctrl-C sends, so it ends the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import importlib.resources
import io
import ipaddress
import json
import math
import resource
import secrets
import signal
import socket
import sys
import threading
import urllib.parse
from typing import Any, Iterator, Sequence

import numpy as np

from jaxstyle.errors import JaxstyleError, UsageError

PREVIEW = 1024  # longest side of a picture on the page; bigger ones are shown every k-th pixel
KEEPALIVE = 15.0  # seconds between comments on an idle event stream (a closed tab is noticed then)
STREAMS = 16  # event streams at once; more are refused (each holds a thread)
SOCKET_TIMEOUT = 60.0  # a connection whose reads or writes stall this long is dropped
LOOPBACK = ("127.0.0.1", "localhost", "::1")
PAGE_FILES = {"live.js": "text/javascript", "live.css": "text/css"}
ENDED = ("finished", "stopped", "failed")  # how a run ends (`Board.end`)


def parse_address(text: str) -> tuple[str, int]:
    """``"8000"`` -> ``("127.0.0.1", 8000)``; ``"0.0.0.0:8000"``, ``"[::1]:8000"``, ``"host:0"`` (any free port).

    Raises:
      UsageError: not ``[ADDRESS:]PORT`` with a port in 0..65535.
    """
    host, _, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")  # an IPv6 address, as in a URL: [::1]:8000
    host = host[1:-1] if bracketed else host
    if not port.isdigit() or int(port) > 65535 or (":" in host and not (bracketed and _is_ip(host))):
        raise UsageError(f"`serve` must be [ADDRESS:]PORT with a port from 0 to 65535 (0: any free one), "
                         f"got {text!r}")
    return host or "127.0.0.1", int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    return host == "localhost" or (_is_ip(host) and ipaddress.ip_address(host).is_loopback)


# ----------------------------------------------------------------------------
# The board: what the page shows


@dataclasses.dataclass
class _Tile:
    """One item's picture: a row of a device array while its program runs, a host preview after."""

    name: str
    version: int
    images: Any  # the report's pictures (items, h, w, 3), or None once ``preview`` is kept
    row: int
    preview: np.ndarray | None = None  # uint8 (h', w', 3)
    png: bytes | None = None  # encoded ``preview``, for ``version``


class Board:
    """The state of a run as the page sees it; the run writes, the server's threads read.

    Args:
      command: the command's name (``stylize``, ``batch``, ...), for the page's title.
    """

    def __init__(self, command: str):
        self.changed = threading.Condition()
        self.version = 0
        self.command = command
        self.settings: dict[str, Any] = {}
        self.status, self.message = "starting", ""
        self.program = 0  # programs started so far; the plot starts afresh with each
        self.names: list[str] = []
        self.points: list[dict[str, Any]] = []
        self.stats: dict[str, Any] = {}
        self.tiles: list[_Tile] = []
        self.index: dict[str, int] = {}  # tile of each name
        self.current = 0  # the tile of the latest report's first item
        self.last: tuple[int, int, int, float] | None = None  # (program, scale, step, elapsed) of the last report

    # The run's side: each call swaps references under the lock and wakes the readers.

    def configure(self, settings: dict[str, Any]) -> None:
        with self.changed:
            self.settings, self.status = settings, "running"
            self._changed()

    def start(self, names: Sequence[str]) -> None:
        """A new program: the previous one's pictures become host previews (its device arrays are let go)."""
        kept = {i: preview(t.images, t.row) for i, t in enumerate(self.tiles) if t.images is not None}
        with self.changed:
            for i, picture in kept.items():
                self.tiles[i].preview, self.tiles[i].images = picture, None
            self.program += 1
            self.names, self.points, self.last = list(names), [], None
            self._changed()

    def report(self, p, *, seconds_left: float | None, memory: tuple[str, int] | None) -> None:
        """One `optimize.Progress` of the current program.

        Args:
          p: the report.
          seconds_left: time to the end of the program, if the reporter knows it.
          memory: ``(where, bytes)`` of the peak memory so far, or None.
        """
        first = p.step - p.losses.shape[1]
        points = [{"step": first + i, "loss": float(x)} for i, x in enumerate(np.mean(p.losses, axis=0))]
        points[-1]["terms"] = {k: float(np.mean(v)) for k, v in p.terms.items()}
        points[-1]["terms_step"] = p.step
        speed = None
        if self.last is not None and self.last[:2] == (self.program, p.scale) and p.elapsed > self.last[3]:
            speed = (p.step - self.last[2]) / (p.elapsed - self.last[3])
        self.last = (self.program, p.scale, p.step, p.elapsed)
        if seconds_left is None and speed:
            seconds_left = (p.steps - p.step) / speed
        with self.changed:
            self.points += points
            self.stats = {"step": p.step, "steps": p.steps, "scale": p.scale + 1, "scales": p.scales,
                          "elapsed": p.elapsed, "steps_per_second": speed or self.stats.get("steps_per_second"),
                          "seconds_left": seconds_left, "items": len(p.items),
                          "memory": None if memory is None else {"where": memory[0], "bytes": memory[1]}}
            self.version += 1
            for j in range(len(p.items)):
                self._tile(self.names[j], p.images, j)
            self.current = self.index[self.names[0]]
            self.changed.notify_all()

    def end(self, status: str, message: str = "") -> None:
        """The run is over: ``status`` is "finished", "stopped" or "failed"; ``message`` says more."""
        with self.changed:
            self.status, self.message = status, message
            self._changed()

    def stopping(self) -> None:
        with self.changed:
            if self.status == "running":
                self.status = "stopping"
                self._changed()

    def _changed(self) -> None:
        self.version += 1
        self.changed.notify_all()

    def _tile(self, name: str, images, row: int) -> None:
        if name in self.index:
            tile = self.tiles[self.index[name]]
            tile.version, tile.images, tile.row, tile.preview, tile.png = self.version, images, row, None, None
        else:
            self.index[name] = len(self.tiles)
            self.tiles.append(_Tile(name, self.version, images, row))

    # The server's side.

    def message_since(self, program: int, points: int) -> tuple[int, dict[str, Any]]:
        """The state to send a client that has seen ``points`` points of ``program``: (version, message)."""
        with self.changed:
            fresh = program != self.program
            return self.version, {
                "version": self.version, "command": self.command, "status": self.status, "message": self.message,
                "program": self.program, "names": self.names, "settings": self.settings, "stats": self.stats,
                "reset": fresh, "points": self.points[0 if fresh else points:],
                "tiles": [{"name": t.name, "version": t.version} for t in self.tiles], "current": self.current}

    def png(self, index: int) -> bytes | None:
        """Tile ``index``'s picture as PNG (encoded once per version), or None if there is no such tile."""
        with self.changed:
            if not 0 <= index < len(self.tiles):
                return None
            tile = self.tiles[index]
            version, images, row, kept, png = tile.version, tile.images, tile.row, tile.preview, tile.png
        if png is not None:
            return png
        png = encode_png(kept if kept is not None else preview(images, row))
        with self.changed:
            if tile.version == version:
                tile.png = png
        return png


def preview(images, row: int) -> np.ndarray:
    """Row ``row`` of a batch of pictures (RGB in [0, 1]) as uint8, every k-th pixel so that it fits `PREVIEW`."""
    h, w = images.shape[1:3]
    k = max(1, math.ceil(max(h, w) / PREVIEW))
    picture = np.asarray(images[row, ::k, ::k], dtype=np.float32)
    return np.round(np.clip(picture, 0.0, 1.0) * 255).astype(np.uint8)


def encode_png(picture: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def peak_memory() -> tuple[str, int] | None:
    """``("device", bytes)`` from the first local device's counters (GPU, TPU), else ``("process", bytes)``: the
    peak resident memory of this process (CPU)."""
    import jax

    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # a backend without counters
        stats = {}
    if "peak_bytes_in_use" in stats:
        return "device", int(stats["peak_bytes_in_use"])
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return "process", int(kib) * (1 if sys.platform == "darwin" else 1024)


# ----------------------------------------------------------------------------
# The web application


class Page:
    """The WSGI application: the page, its two files, the event stream, the pictures, and stop.

    Paths (under ``/TOKEN`` when the token is required): ``/``, ``/live.js``,
    ``/live.css``, ``/events``, ``/tile/<i>.png``, and ``POST /stop``; anything
    else is 404. No path reaches the file system.

    Args:
      board: what to show.
      hosts: the host names a ``Host`` header may carry (besides IP addresses when ``any_ip``).
      port: the server's port (a ``Host`` header with another one is refused).
      token: the secret of this server (in the page, for the stop button).
      token_in_path: whether every path must start with ``/TOKEN``.
      any_ip: whether a ``Host`` header may be any IP address (a server bound beyond this machine).
      stop: what the stop button calls.
    """

    def __init__(self, board: Board, *, hosts: Sequence[str], port: int, token: str, token_in_path: bool,
                 any_ip: bool, stop=None):
        from werkzeug.routing import Map, Rule

        self.board, self.hosts, self.port, self.token, self.any_ip = board, set(hosts), port, token, any_ip
        self.prefix = f"/{token}" if token_in_path else ""
        self.stop = stop or (lambda: signal.pthread_kill(threading.main_thread().ident, signal.SIGINT))
        self.streams = threading.BoundedSemaphore(STREAMS)
        prefix = self.prefix
        self.map = Map([Rule(f"{prefix}/", endpoint="page"),
                        *(Rule(f"{prefix}/{name}", endpoint=name) for name in PAGE_FILES),
                        Rule(f"{prefix}/events", endpoint="events"),
                        Rule(f"{prefix}/tile/<int:index>.png", endpoint="tile"),
                        Rule(f"{prefix}/stop", endpoint="stop", methods=["POST"]),
                        Rule("/favicon.ico", endpoint="favicon")],
                       strict_slashes=True, merge_slashes=False)

    def __call__(self, environ, start_response):
        from werkzeug.exceptions import HTTPException
        from werkzeug.wrappers import Request

        path = environ.get("PATH_INFO", "")
        if not self.trusted_host(environ.get("HTTP_HOST", "")):
            response = _plain(400, "this server answers to its own address only")
        elif self.prefix and path != "/favicon.ico" and not secrets.compare_digest(
                (path + "/").split("/")[1].encode(), self.token.encode()):
            response = _plain(403, "this page needs the token in the URL printed at start")
        else:
            try:
                endpoint, values = self.map.bind_to_environ(environ).match()
                response = getattr(self, f"_{endpoint.replace('.', '_')}")(Request(environ), **values)
            except HTTPException as e:
                response = _plain(404, "not found") if e.code == 404 else e.get_response(environ)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response(environ, start_response)

    def trusted_host(self, host: str) -> bool:
        """Whether a ``Host`` header names this server: one of its host names, or (bound beyond this machine) an
        IP address; with this server's port."""
        try:
            parts = urllib.parse.urlsplit(f"//{host}")
            name, port = parts.hostname, parts.port
        except ValueError:
            return False
        if not name or port != self.port:
            return False
        return name in self.hosts or (self.any_ip and _is_ip(name))

    def _page(self, request):
        html = page_file("live.html").decode().replace("{{token}}", self.token)
        return _response(html.encode(), "text/html; charset=utf-8")

    def _live_js(self, request):
        return _response(page_file("live.js"), PAGE_FILES["live.js"])

    def _live_css(self, request):
        return _response(page_file("live.css"), PAGE_FILES["live.css"])

    def _favicon(self, request):  # none: an empty answer rather than a 404 in the browser's console
        return _plain(204, "")

    def _tile(self, request, index: int):
        png = self.board.png(index)
        return _plain(404, "not found") if png is None else _response(png, "image/png")

    def _stop(self, request):
        if not secrets.compare_digest(request.headers.get("X-Jaxstyle-Token", ""), self.token):
            return _plain(403, "the stop button needs this page's token")
        if self.board.status == "running":
            self.board.stopping()
            self.stop()
        return _plain(202, "stopping")

    def _events(self, request):
        from werkzeug.wrappers import Response

        if not self.streams.acquire(blocking=False):
            return _plain(503, "too many open pages")
        return Response(self._stream(), mimetype="text/event-stream", direct_passthrough=True,
                        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    def _stream(self) -> Iterator[bytes]:
        """Server-sent events: the board's state whenever it changes (the newest only: a slow client skips
        states, it never queues them), and a comment when idle."""
        seen, program, points = -1, -1, 0
        try:
            while True:
                with self.board.changed:
                    self.board.changed.wait_for(lambda: self.board.version != seen, timeout=KEEPALIVE)
                if self.board.version == seen:
                    yield b": idle\n\n"
                    continue
                seen, message = self.board.message_since(program, points)
                program, points = message["program"], (0 if message["reset"] else points) + len(message["points"])
                yield b"data: " + json.dumps(message, default=str).encode() + b"\n\n"
                if message["status"] in ENDED:
                    return
        finally:
            self.streams.release()


SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; style-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "Cache-Control": "no-store",
}


def page_file(name: str) -> bytes:
    """One of the page's files, from the package (``jaxstyle/page/``)."""
    return importlib.resources.files("jaxstyle").joinpath("page", name).read_bytes()


def _response(body: bytes, mimetype: str):
    from werkzeug.wrappers import Response

    return Response(body, content_type=mimetype)


def _plain(status: int, text: str):
    from werkzeug.wrappers import Response

    return Response(text + "\n", status=status, content_type="text/plain; charset=utf-8")


# ----------------------------------------------------------------------------
# The server


class LiveServer:
    """The page served on its own threads while the run goes on; `start` makes one.

    Attributes:
      board: what it shows; url: where to open it.
    """

    def __init__(self, board: Board, server, url: str, sock: socket.socket):
        self.board, self.server, self.url, self.sock = board, server, url, sock
        self.sigpipe = _ignore_sigpipe()
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="jaxstyle-live", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop answering; open streams have had the final state, and their threads end on their own."""
        self.server.shutdown()
        self.server.server_close()
        self.sock.close()
        if self.sigpipe is not None:
            with contextlib.suppress(ValueError):  # closed from another thread: left ignored
                signal.signal(signal.SIGPIPE, self.sigpipe)


def _ignore_sigpipe():
    """Ignore SIGPIPE while serving; returns its handler before (None: not changed).

    The console script gives SIGPIPE its default action, so that ``jaxstyle ... | head`` ends quietly;
    with it, a write to the socket of a browser that went away would kill the whole run. Ignored, that
    write fails with EPIPE in the server's thread for that browser only.
    """
    if not hasattr(signal, "SIGPIPE"):
        return None
    try:
        return signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals are the main thread's to set
        return None


def start(address: str, command: str, *, stop=None) -> LiveServer:
    """Serve a live page for a run at ``address`` (``[ADDRESS:]PORT``, as `parse_address` reads it).

    Args:
      address: where to listen; an address other than this machine's needs the token, which the URL carries.
      command: the command's name, for the page.
      stop: what the stop button calls (default: SIGINT to the main thread, as Ctrl-C).
    Returns:
      The running `LiveServer`.
    Raises:
      JaxstyleError: Werkzeug is missing, or the address cannot be listened on.
    """
    _need_werkzeug()
    from werkzeug.serving import WSGIRequestHandler, make_server

    host, port = parse_address(address)
    sock = _listen(host, port)
    port = sock.getsockname()[1]
    local = is_loopback(host)
    token = secrets.token_urlsafe(16)
    hosts = {*LOOPBACK, host} | (set() if local else {socket.gethostname(), socket.getfqdn()})
    board = Board(command)
    page = Page(board, hosts=hosts, port=port, token=token, token_in_path=not local, any_ip=not local, stop=stop)

    class Handler(WSGIRequestHandler):
        timeout = SOCKET_TIMEOUT

        def log(self, type: str, message: str, *args) -> None:  # the run's terminal is not the server's log
            pass

    server = make_server(host, port, page, threaded=True, request_handler=Handler, fd=sock.fileno())
    server.block_on_close = False  # closing never waits for a stalled client's thread
    shown = host if local or host not in ("0.0.0.0", "::") else socket.gethostname()
    shown = f"[{shown}]" if ":" in shown else shown
    return LiveServer(board, server, f"http://{shown}:{port}/" + ("" if local else f"{token}/"), sock)


def check(address: str) -> None:
    """Refuse, before a command loads anything, an ``address`` that `start` could not listen on.

    Raises:
      UsageError: not ``[ADDRESS:]PORT``, or the port is taken or the address not this machine's.
      JaxstyleError: Werkzeug is missing.
    """
    _need_werkzeug()
    _listen(*parse_address(address)).close()


def _need_werkzeug() -> None:
    try:
        import werkzeug  # noqa: F401
    except ImportError:
        raise JaxstyleError("`serve` needs Werkzeug: pip install 'jaxstyle[live]'") from None


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket (so that a busy port is our one-line error, not Werkzeug's exit)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        infos = socket.getaddrinfo(host, port, family if _is_ip(host) else 0, socket.SOCK_STREAM)
        family, _, _, _, where = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(64)
    except OSError as e:
        hint = "pick another port with `serve`" if e.errno == errno.EADDRINUSE else "give an address of this machine"
        raise UsageError(f"cannot serve the live view on {host}:{port}: {e.strerror or e}; {hint}") from None
    return sock


def run_settings(config, options) -> dict[str, Any]:
    """The settings the page lists: every field of the run's config, and the options that differ from their
    defaults (a dataclass each)."""
    default = type(options)()
    changed = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)
               if getattr(options, f.name) != getattr(default, f.name)}
    return {**dataclasses.asdict(config), **changed}
