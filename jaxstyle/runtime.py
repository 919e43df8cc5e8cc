"""The process's environment: the user cache directory, the compilation cache, XLA:CPU flags.

These are effects on the whole process, so only the edge calls them: the
command line (and the benchmark scripts), once, before the first compile.
The library itself never changes global JAX state; a program that calls
`jaxstyle.optimize.stylize` directly gets the same settings by calling
`configure()` first.

- The persistent compilation cache keeps compiled programs in
  ``cache_dir() / "xla"``, so a second run with the same
  image shapes and options loads the step program instead of compiling it
  again (measured in BENCHMARKS.md). ``$JAXSTYLE_XLA_CACHE`` names another
  directory, or ``off`` turns the cache off.
- `DEFAULT_CPU_FLAGS` are XLA:CPU flags appended to ``$XLA_FLAGS``. A flag the
  user already set in ``$XLA_FLAGS`` wins.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
import time

CACHE_ENV = "JAXSTYLE_XLA_CACHE"
# Least-recently-used entries are deleted above this size (when the filelock package is
# there). A run's programs take under 1 MB; this holds thousands of (size, options) runs.
CACHE_MAX_BYTES = 2 * 2**30

# XLA:CPU flags, measured in BENCHMARKS.md ("XLA:CPU flags"). The memory-optimised
# scheduler halves the peak memory of a step (VGG19 at 1024 px: 2.9 -> 1.9 GiB of
# temporaries) at the same speed and with bitwise the same results; XLA's default
# schedule is ordered for concurrency, keeping many activations alive at once. The other
# candidates (oneDNN, XNNPACK dots, YNNPACK dots, 512-bit vectors, Eigen instead of
# YNNPACK convolutions) were not faster.
DEFAULT_CPU_FLAGS: tuple[str, ...] = ("--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",)
# With --remat (`configure(low_memory=True)`): Eigen's convolutions instead of YNNPACK's.
# YNNPACK holds working memory outside XLA's buffers, about 0.5 GiB at 1024 px whatever
# the strip size, which would cap what --remat saves (BENCHMARKS.md, "Memory").
LOW_MEMORY_CPU_FLAGS: tuple[str, ...] = ("--xla_cpu_experimental_ynn_fusion_type=",)


def cache_dir() -> pathlib.Path:
    """The per-user cache directory of jaxstyle (weights, compiled programs)."""
    if sys.platform == "darwin":
        base = pathlib.Path.home() / "Library" / "Caches"
    elif sys.platform == "win32":
        base = pathlib.Path(os.environ.get("LOCALAPPDATA", pathlib.Path.home() / "AppData" / "Local"))
    else:
        base = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache")
    return base / "jaxstyle"


def compilation_cache_dir() -> pathlib.Path | None:
    """Where compiled programs are kept: ``$JAXSTYLE_XLA_CACHE``, else ``cache_dir() / "xla"``.

    Returns None when ``$JAXSTYLE_XLA_CACHE`` is ``off`` (or ``0``, ``none``, ``false``).
    """
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() in ("off", "0", "none", "false", "no"):
        return None
    return pathlib.Path(value).expanduser() if value else cache_dir() / "xla"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> pathlib.Path | None:
    """Turn on JAX's persistent compilation cache for this process.

    Every program is cached, however fast it compiled and however small it
    is (JAX's defaults skip programs that compile in under a second, which
    would leave a warm start recompiling the many small ones). Must run before
    the process's first compile: JAX decides once whether to use the cache.
    Before jax is imported this sets only environment variables (which jax
    reads when imported), so the command line's cheap checks stay fast.

    Args:
      path: the cache directory; `compilation_cache_dir()` when None.
    Returns:
      The directory in use, or None when the cache is off.
    """
    path = compilation_cache_dir() if path is None else pathlib.Path(path)
    if path is None:
        return None
    path.mkdir(parents=True, exist_ok=True)
    repair_compilation_cache(path)
    settings = {
        "jax_compilation_cache_dir": str(path),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": -1,  # -1: no size floor
    }
    if importlib.util.find_spec("filelock") is not None:  # JAX evicts old entries only with filelock
        settings["jax_compilation_cache_max_size"] = CACHE_MAX_BYTES
    if "jax" in sys.modules:
        import jax

        for name, value in settings.items():
            jax.config.update(name, value)
    else:
        os.environ.update({name.upper(): str(value) for name, value in settings.items()})
    return path


def add_low_memory_cpu_flags() -> None:
    """Add `LOW_MEMORY_CPU_FLAGS` to ``$XLA_FLAGS``, for a run planned strip by strip.

    Takes effect only before JAX starts its CPU backend (the first
    computation or device query); later it changes nothing.
    """
    os.environ["XLA_FLAGS"] = xla_flags(LOW_MEMORY_CPU_FLAGS)


def device_memory() -> int | None:
    """Bytes free on the first device for this process (``memory_stats``), or None where it does not say.

    GPUs and TPUs report their limit and what is in use; the CPU backend and
    some plugins report nothing. Starts JAX's backend.
    """
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def repair_compilation_cache(path: pathlib.Path) -> int:
    """Give every entry of the cache at ``path`` the access-time file JAX's size limit needs.

    JAX writes an entry's program (``KEY-cache``) and then its access time
    (``KEY-atime``). A process stopped between the two (a run ended by a
    signal while it compiles) leaves a program without one, and from then on
    JAX's eviction fails on every new entry of every run: nothing more is
    cached, and each run prints warnings. Such entries get the current time.

    Returns:
      How many entries were repaired.
    """
    stamp = time.time_ns().to_bytes(8, "little")  # JAX's format: nanoseconds, 8 bytes, little-endian
    repaired = 0
    try:
        names = {p.name for p in path.iterdir()}
        for name in names:
            key = name.removesuffix("-cache")
            if name.endswith("-cache") and f"{key}-atime" not in names:
                (path / f"{key}-atime").write_bytes(stamp)
                repaired += 1
    except OSError:
        pass  # a cache we cannot read or write: JAX reports that itself
    return repaired


def xla_flags(flags: tuple[str, ...] = DEFAULT_CPU_FLAGS, current: str | None = None) -> str:
    """``$XLA_FLAGS`` with ``flags`` appended, except those whose name is already set there.

    >>> xla_flags(("--xla_cpu_use_onednn=true",), "--xla_cpu_use_onednn=false")
    '--xla_cpu_use_onednn=false'
    """
    current = os.environ.get("XLA_FLAGS", "") if current is None else current
    given = {f.split("=")[0] for f in current.split()}
    return " ".join([*current.split(), *(f for f in flags if f.split("=")[0] not in given)])


def configure(*, cache: bool = True, low_memory: bool = False) -> pathlib.Path | None:
    """The command line's setup: XLA:CPU flags into ``$XLA_FLAGS``, then the compilation cache.

    Call before anything initialises a JAX backend (importing `jaxstyle.optimize`
    does), or the flags are ignored.

    Args:
      cache: turn on the persistent compilation cache.
      low_memory: add `LOW_MEMORY_CPU_FLAGS` (for ``remat`` runs).
    Returns:
      The compilation cache directory, or None when it is off.
    """
    os.environ["XLA_FLAGS"] = xla_flags(DEFAULT_CPU_FLAGS + LOW_MEMORY_CPU_FLAGS * low_memory)
    return enable_compilation_cache() if cache else None
