"""The edge of every run: what the user sees, and what is kept whatever happens.

One `Reporter` serves every command that optimises (``stylize``, ``demo``,
``batch``, ``sweep``). The library calls it with a `optimize.Progress` record
between chunks of steps; it

- draws one progress bar over the whole command (every program, every
  scale), with the loss and the style and content terms;
- keeps each item's loss per step, and writes the loss log (``--log``);
- writes snapshots (``--save-every``) and checkpoints (``--checkpoint-every``)
  through the command's `Program`; a checkpoint that cannot be written is a
  warning, once, not the end of the run;
- ends a run the same way for every command when a signal comes
  (`signals_end_runs`: Ctrl-C, SIGTERM, SIGHUP): the pictures of the last
  report and a checkpoint are saved, one line says where, and the exit code is
  128 plus the signal's number (130, 143, 129); a signal whose exception
  Python loses (in a finaliser) ends the run at the next report;
- with ``--serve``, feeds the live view (`jaxstyle.live`) at every report; its
  stop button sends the SIGINT that Ctrl-C sends.

Only this module and the command line print.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import pathlib
import signal
import sys
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from jaxstyle._files import atomic_write_bytes
from jaxstyle.config import RunOptions
from jaxstyle.errors import JaxstyleError, Stopped

# The signals that end a run, saving it first. SIGHUP does not exist on Windows.
ENDING_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s)


class Interrupted(BaseException):
    """A signal that ends the run, raised where the run stands (a `BaseException`, like KeyboardInterrupt).

    Attributes:
      signum: the signal's number; exit_code: ``128 + signum``, as shells report a signal's end.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


class Signals:
    """The signal that came within `signals_end_runs`, if one did."""

    def __init__(self):
        self.signum: int | None = None

    def check(self) -> None:
        """Raise the signal's `Interrupted` again if one came. Its first raise can be lost: a signal that lands
        in a garbage-collection callback or a finaliser raises there, and Python goes on. The runs' callbacks
        call this at each report, so such a run still ends, one report later."""
        if self.signum is not None:
            raise Interrupted(self.signum)


@contextlib.contextmanager
def signals_end_runs() -> Iterator[Signals]:
    """Within the block, SIGINT, SIGTERM and SIGHUP raise `Interrupted` (the first one; later ones are
    ignored, so that saving the run is not interrupted in turn). Outside the main thread, a no-op.

    Yields the `Signals` whose ``check`` the run calls at each report. An `Interrupted` lost in a finaliser
    is not printed (it is raised again there)."""
    came = Signals()

    def handler(signum, frame):
        if came.signum is None:
            came.signum = signum
            raise Interrupted(signum)

    def unraisable(info):
        if not isinstance(info.exc_value, Interrupted):
            previous_hook(info)

    try:
        previous = {s: signal.signal(s, handler) for s in ENDING_SIGNALS}
    except ValueError:  # not the main thread: signals go to it, not here
        previous = {}
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield came
    finally:
        sys.unraisablehook = previous_hook
        for s, h in previous.items():
            signal.signal(s, h)


@dataclasses.dataclass
class Program:
    """What the reporter keeps of one program (one compiled batch of items) and how.

    Attributes:
      names: one name per item, for the loss log.
      checkpoint: where its checkpoint goes (None: no checkpoints).
      record: `checkpoint.run_record` of the run, saved in the checkpoint.
      save_pictures: ``(progress, why)`` -> the files written: the pictures of
        a report as snapshots (why = "step") or when interrupted (why = "interrupted").
      leftovers: files of an earlier, interrupted run of this program, removed when it finishes.
      history: each item's losses of earlier steps (from a resumed checkpoint), (items, steps).
      work: ``(steps, FLOPs per step)`` of each scale, for one item (`plan.scale_work`): the
        progress bar's time left over every scale.
      speed_key: what the measured speed is remembered under (`speed_key`); "": not remembered.
    """

    names: Sequence[str]
    checkpoint: pathlib.Path | None
    record: dict | None
    save_pictures: Callable[[Any, str], list[pathlib.Path]]
    leftovers: Sequence[pathlib.Path] = ()
    history: np.ndarray | None = None
    work: Sequence[tuple[int, int]] = ()
    speed_key: str = ""


class Speed:
    """FLOP/s of a program, measured between reports within one scale (the first chunk of a scale compiles).

    ``update`` takes each report; ``rate`` is the FLOPs over the seconds of
    the intervals measured so far, None before the first.
    """

    def __init__(self, work: Sequence[tuple[int, int]], items: int):
        self.work, self.items = work, items
        self.last: tuple[int, int, float] | None = None  # (scale, step, elapsed) of the previous report
        self.flops = self.seconds = 0.0

    def done(self, step: int) -> float:
        """FLOPs of the program's first ``step`` steps."""
        total, left = 0.0, step
        for steps, flops in self.work:
            n = min(left, steps)
            total, left = total + n * flops * self.items, left - n
        return total

    def update(self, scale: int, step: int, elapsed: float) -> None:
        if self.last is not None and self.last[0] == scale and elapsed > self.last[2]:
            self.flops += self.done(step) - self.done(self.last[1])
            self.seconds += elapsed - self.last[2]
        self.last = (scale, step, elapsed)

    @property
    def rate(self) -> float | None:
        return self.flops / self.seconds if self.seconds > 0 and self.flops > 0 else None

    def seconds_left(self, step: int, rate: float | None = None) -> float | None:
        """Seconds to the end of the program at ``rate`` (default: the measured one)."""
        rate = rate or self.rate
        return None if rate is None else (self.done(sum(n for n, _ in self.work)) - self.done(step)) / rate


def speed_key(config, architecture: str = "vgg19") -> str:
    """What a measured speed is remembered under: the device, the network (a small one runs its FLOPs far
    slower), and the settings that change a FLOP's cost."""
    import jax

    device = jax.local_devices()[0]
    return f"{device.platform}:{device.device_kind}:{architecture}:{'strips' if config.remat else 'whole'}:" \
           f"{config.optimizer}:{config.dtype}"


def speeds_path() -> pathlib.Path | None:
    """Where measured speeds are kept: beside the compiled programs (None when that cache is off)."""
    from jaxstyle import runtime

    cache = runtime.compilation_cache_dir()
    return None if cache is None else cache / SPEEDS_FILE


def remembered_speed(key: str) -> float | None:
    """FLOP/s of the last finished program under ``key`` on this machine, or None (none, or the cache is off)."""
    try:
        return float(_speeds()[key])
    except (KeyError, TypeError, ValueError):
        return None


def remember_speed(key: str, rate: float) -> None:
    """Keep ``rate`` under ``key``; a failure to write is not worth a word."""
    path = speeds_path()
    if path is None or not key:
        return
    try:
        atomic_write_bytes(path, json.dumps({**_speeds(), key: rate}, indent=1).encode())
    except OSError:
        pass


def _speeds() -> dict:
    """The remembered speeds: empty when there are none, the file is unreadable, or the cache is off."""
    path = speeds_path()
    try:
        speeds = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return {}
    return speeds if isinstance(speeds, dict) else {}


SPEEDS_FILE = "speeds.json"


def duration(seconds: float) -> str:
    """``75`` -> ``"about 1 min"``, ``5400`` -> ``"about 1 h 30 min"``, ``20`` -> ``"under a minute"``."""
    minutes = round(seconds / 60)
    if minutes < 1:
        return "under a minute"
    return f"about {minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"about {minutes} min"


class Reporter:
    """The callback of every run of a command (see the module docs).

    Args:
      options: the run options (``quiet``, ``save_every``, ``checkpoint_every``, ``log``, ``serve``).
      total: item-steps of the whole command (the progress bar's length).
      done: item-steps already done before this process (a resumed run).
      command: the command's name, for the live view.
    Raises:
      JaxstyleError: the live view cannot listen where ``options.serve`` says.
    """

    def __init__(self, options: RunOptions, total: int, done: int = 0, *, command: str = "stylize"):
        self.options = options
        self.live = None
        if options.serve:  # first: a port that is taken ends the command before anything is shown
            from jaxstyle import live

            self.live = live.start(options.serve, command)
        self.bar = None if options.quiet or not total else progress_bar(total, done)
        if self.live is not None:
            self.note(f"watch the run at {self.live.url}")
        self.log_rows: list[dict[str, Any]] = []
        self.program: Program | None = None
        self.latest = None  # the last Progress
        self.warned = False
        self.signals = Signals()  # `running`'s

    def start(self, program: Program) -> None:
        """A new program begins (its checkpoint, if any, already loaded into ``program.history``)."""
        self.program, self.latest = program, None
        items = len(program.names)
        if self.live is not None:
            self.live.board.start(program.names)
        self.speed = Speed(program.work, items)
        if self.bar is not None and program.work:  # the time left is ours, over the scales' FLOPs
            self.bar.bar_format = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"
        self.history = np.zeros((items, 0), np.float32) if program.history is None else program.history
        self.saved = self.counted = self.history.shape[1]  # steps of the last checkpoint, and of the bar

    def __call__(self, p) -> None:
        """The library's callback: one `optimize.Progress`."""
        self.history = np.concatenate([self.history, p.losses], axis=1)
        self.latest = p
        self.signals.check()  # after the record: a signal whose first raise was lost saves this report
        every, save = self.options.checkpoint_every, self.options.save_every
        if every and p.step // every > self.saved // every and p.step < p.steps:
            self._checkpoint()
        if save and p.step % save == 0 and p.step < p.steps:
            self.program.save_pictures(p, "step")
        self.speed.update(p.scale, p.step, p.elapsed)
        if self.live is not None:
            from jaxstyle import live

            self.live.board.report(p, seconds_left=self.speed.seconds_left(p.step) if self.program.work else None,
                                   memory=live.peak_memory())
        if self.bar is not None:  # the postfix first: the update draws the bar with it
            left = self.speed.seconds_left(p.step)
            where = {"scale": f"{p.scale + 1}/{p.scales}"} if p.scales > 1 else {}
            where |= {"left": _clock(left)} if left is not None and self.program.work else {}
            self.bar.set_postfix(**where, loss=f"{np.mean(p.losses[:, -1]):.4g}",
                                 style=f"{np.mean(p.terms['style']):.3g}", content=f"{np.mean(p.terms['content']):.3g}",
                                 refresh=False)
            self.bar.update((p.step - self.counted) * len(p.items))
        self.counted = p.step

    def _checkpoint(self) -> bool:
        """Save the latest checkpoint; a failure is a warning (once), and the run goes on."""
        if self.program.checkpoint is None or self.latest is None:
            return False
        from jaxstyle import checkpoint  # JAX is running by now

        try:
            checkpoint.save(self.program.checkpoint, self.latest.checkpoint, self.program.record, self.history)
        except OSError as e:
            if not self.warned:
                self.note(f"warning: cannot write the checkpoint ({e.strerror or e}); the run goes on "
                          "without checkpoints until one can be written")
                self.warned = True
            return False
        self.saved = self.latest.step
        return True

    @contextlib.contextmanager
    def running(self, config, done: Callable[[], str] = lambda: "", *, more: dict | None = None) -> Iterator[None]:
        """Around a command's runs: a signal saves the run and ends it (`Stopped`), and a device's
        out-of-memory error becomes one line. ``done()`` adds what the command finished, to the message.
        The live view, if any, shows ``config``, ``more`` settings and the options, and how the runs ended."""
        if self.live is not None:
            from jaxstyle import live

            self.live.board.configure({**live.run_settings(config, self.options), **(more or {})})
        ending = ("failed", "")
        with signals_end_runs() as self.signals:
            try:
                yield
                ending = ("finished", "")
            except Interrupted as e:
                stopped = self.interrupted(e, done())
                ending = ("stopped", str(stopped))
                raise stopped from None
            except Exception as e:
                error = e
                if type(e).__name__ == "JaxRuntimeError" and "RESOURCE_EXHAUSTED" in str(e):
                    import jax

                    hint = "lower `size`" if config.remat else "lower `size` or use `remat`"
                    error = JaxstyleError(f"out of memory on the {jax.default_backend()} at `size` {config.size} "
                                          f"({str(e).splitlines()[0][:160]}); {hint}")
                ending = ("failed", (str(error).splitlines() or [type(error).__name__])[0])
                if error is e:
                    raise
                raise error from e
            finally:
                self.close()
                if self.live is not None:
                    self.live.board.end(*ending)
                    self.live.close()

    def keep_or_write(self, path: pathlib.Path, image: np.ndarray, metadata: dict[str, str], *,
                      overwrite: bool, alpha: np.ndarray | None = None) -> None:
        """Write a finished output (with ``alpha``, its transparency, if any); if that fails, keep the
        finished run in its checkpoint, then fail."""
        from jaxstyle import images

        try:
            images.save_image(path, image, metadata=metadata, overwrite=overwrite, alpha=alpha,
                              png_bits=self.options.png_bits)
        except JaxstyleError as e:
            kept = self._checkpoint()
            raise JaxstyleError(f"{e}" + (f"; the finished run is kept in {self.program.checkpoint}: fix that and "
                                          "run the command again with `resume`" if kept else "")) from e

    def finish(self) -> None:
        """The program's outputs are written: its checkpoint and leftovers go, its losses go to the log, and its
        measured speed is remembered for the next run's plan."""
        if self.program.speed_key and self.speed.rate:
            remember_speed(self.program.speed_key, self.speed.rate)
        for path in (self.program.checkpoint, *self.program.leftovers):
            if path is not None:
                remove(path)
        for name, losses in zip(self.program.names, self.history):
            self.log_rows += [{"item": name, "step": i, "loss": float(x)} for i, x in enumerate(losses)]

    def interrupted(self, signal_: Interrupted, done: str = "") -> Stopped:
        """Save the run at its last report (checkpoint first, then pictures); the `Stopped` error to raise."""
        self.close()
        if self.latest is None:
            return Stopped(f"interrupted ({signal_}) before the first steps finished; nothing to save{done}",
                           signal_.exit_code)
        files = [self.program.checkpoint] if self._checkpoint() else []
        try:
            files = self.program.save_pictures(self.latest, "interrupted") + files
        except JaxstyleError as e:
            self.note(f"warning: {e}")
        saved = " and ".join(map(str, files)) or "nothing"
        return Stopped(f"interrupted ({signal_}) at step {self.latest.step}; saved {saved}{done} "
                       "(continue with --resume)", signal_.exit_code)

    def write_log(self, single: bool) -> None:
        """Write the loss log (``--log``), one row per item and step; ``single``: no item column."""
        if not self.options.log:
            return
        rows = [{k: v for k, v in r.items() if not (single and k == "item")} for r in self.log_rows]
        path = pathlib.Path(self.options.log)
        if path.suffix.lower() == ".json":
            data = json.dumps(rows).encode()
        else:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=["step", "loss"] if single else ["item", "step", "loss"])
            writer.writeheader()
            writer.writerows(rows)
            data = buf.getvalue().encode()
        try:
            atomic_write_bytes(path, data)
        except OSError as e:
            raise JaxstyleError(f"cannot write the log {str(path)!r}: {e.strerror or e}") from e

    def note(self, message: str) -> None:
        """One line on stderr, above the progress bar."""
        if self.bar is not None:
            self.bar.write(f"jaxstyle: {message}", file=sys.stderr)
        else:
            print(f"jaxstyle: {message}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def remove(path: pathlib.Path) -> None:
    """Delete a file of ours if it is there; a failure to delete is not worth failing the run."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _clock(seconds: float) -> str:
    """``3725`` -> ``"1:02:05"``, ``125`` -> ``"2:05"`` (as tqdm writes times)."""
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def progress_bar(total: int, done: int = 0):
    """The command line's progress bar (tqdm, on stderr) over ``total`` steps, ``done`` of them already."""
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="step", dynamic_ncols=True, file=sys.stderr)
