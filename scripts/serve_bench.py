"""Does the live view (``--serve``) slow a run? Steps per second with and without it, in one process.

    python scripts/serve_bench.py [--size 256] [--steps 60] [--rounds 3] [--stalled 4]

Each round runs the same `optimize.stylize` (the real VGG19, the bundled cat
and Van Gogh, Adam, a report every 10 steps) through a `report.Reporter`, as
the command line does, three ways, one after the other:

- ``plain``: no live view (the peer);
- ``stalled``: the live view, with ``--stalled`` clients that open the event
  stream and never read a byte (their socket buffers fill, and the server's
  thread for each blocks in a send);
- ``watched``: the live view with one client that reads every event and
  fetches every picture it is told of, as the page does.

Speed is the steps between the first and the last report over the seconds
between them (the first chunk, which compiles, is left out). It prints each
round and the medians, and each way's ratio to ``plain``. Run it on an idle
machine: two cores are easily disturbed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import socket
import statistics
import threading
import urllib.request

from jaxstyle import images, optimize, report, weights
from jaxstyle.config import RunOptions, StylizeConfig

EXAMPLES = pathlib.Path(__file__).parents[1] / "jaxstyle" / "examples"


def stalled_clients(url: str, n: int) -> list[socket.socket]:
    """``n`` connections that ask for the event stream and never read."""
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    clients = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((host, int(port)))
        s.sendall(f"GET /events HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        clients.append(s)
    return clients


def watcher(url: str) -> threading.Thread:
    """A client that reads the event stream and fetches each new picture, until the run ends."""
    def watch():
        seen = {}
        with urllib.request.urlopen(url + "events", timeout=600) as stream:
            for line in stream:
                if not line.startswith(b"data: "):
                    continue
                state = json.loads(line[6:])
                for i, tile in enumerate(state["tiles"]):
                    if seen.get(i) != tile["version"]:
                        seen[i] = tile["version"]
                        urllib.request.urlopen(f"{url}tile/{i}.png?v={tile['version']}", timeout=60).read()
                if state["status"] in ("finished", "stopped", "failed"):
                    return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def one_run(way: str, content, style, network, config: StylizeConfig, stalled: int) -> float:
    """Steps per second of one run, ``way`` being plain, stalled or watched."""
    options = RunOptions(quiet=True, serve="" if way == "plain" else "0")
    reporter = report.Reporter(options, config.steps)
    reporter.start(report.Program(["cat"], None, None, lambda p, why: []))
    clients, thread = [], None
    if way == "stalled":
        clients = stalled_clients(reporter.live.url, stalled)
    elif way == "watched":
        thread = watcher(reporter.live.url)
    reports = []

    def callback(p):
        reports.append((p.step, p.elapsed))
        reporter(p)

    with reporter.running(config):
        optimize.stylize(content, style, network, config, callback=callback)
    if thread is not None:
        thread.join(30)
    for s in clients:
        s.close()
    (first, t0), (last, t1) = reports[0], reports[-1]
    return (last - first) / (t1 - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stalled", type=int, default=4, help="clients that never read")
    args = parser.parse_args()
    params, meta = weights.load()
    network = optimize.Network(weights.model_for(meta), params)
    content = images.load_image(EXAMPLES / "chelsea.png")
    style = images.load_image(EXAMPLES / "van_gogh_auvers.png")
    config = StylizeConfig(size=args.size, steps=args.steps)
    one_run("plain", content, style, network, config.replace(steps=20), 0)  # compile once, outside the timing
    ways = ("plain", "stalled", "watched")
    speeds: dict[str, list[float]] = {way: [] for way in ways}
    for r in range(args.rounds):
        for way in ways:
            speeds[way].append(one_run(way, content, style, network, config, args.stalled))
        print(f"round {r + 1}: " + ", ".join(f"{w} {speeds[w][-1]:.3f} steps/s" for w in ways), flush=True)
    base = statistics.median(speeds["plain"])
    print(f"\n{args.size} px, {args.steps} steps, real VGG19, {args.rounds} rounds (medians):")
    for way in ways:
        m = statistics.median(speeds[way])
        print(f"  {way:8s} {m:.3f} steps/s  ratio to plain {m / base:.3f}")


if __name__ == "__main__":
    main()
