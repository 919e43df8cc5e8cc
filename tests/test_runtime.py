"""`jaxstyle.runtime`: the persistent compilation cache and the XLA:CPU flags, checked by their effects.

A second process finds the first one's compiled programs (cache hits, no new
entries), the command line turns the cache on, and the flags the user set
win over ours.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from jaxstyle import runtime, weights
from synthetic import grating as _photo


def test_cache_dir_is_in_the_user_cache_and_the_environment_overrides_it(monkeypatch, tmp_path):
    monkeypatch.delenv(runtime.CACHE_ENV, raising=False)
    assert runtime.compilation_cache_dir() == weights.cache_dir() / "xla"
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "c"))
    assert runtime.compilation_cache_dir() == tmp_path / "c"
    for off in ("off", "0", "OFF"):
        monkeypatch.setenv(runtime.CACHE_ENV, off)
        assert runtime.compilation_cache_dir() is None
        assert runtime.enable_compilation_cache() is None


def test_xla_flags_keep_the_users_settings():
    assert runtime.xla_flags(("--a=1", "--b=2"), "--b=3 --c") == "--b=3 --c --a=1"
    assert runtime.xla_flags((), "") == ""


_COMPILE_TWICE = """
import json, sys
from jaxstyle import runtime
path = runtime.enable_compilation_cache(sys.argv[1])
import jax, jax.numpy as jnp
hits, misses = [], []
def listen(event, **kwargs):
    (hits if event.endswith("cache_hits") else misses if event.endswith("cache_misses") else []).append(event)
jax.monitoring.register_event_listener(listen)
from jaxstyle import optimize, vgg, weights
model = weights.model_for({"architecture": "tiny", "preprocessing": "caffe"})
params = vgg.init_params("tiny", jax.random.key(0))
image = jnp.full((int(sys.argv[2]) if len(sys.argv) > 2 else 40, 48, 3), 0.5)
step = jax.jit(jax.grad(lambda x: sum(jnp.sum(f ** 2) for f in model.apply({"params": params}, x, ("relu3_1",)).values())))
step(image).block_until_ready()
print(json.dumps({"dir": jax.config.jax_compilation_cache_dir, "hits": len(hits), "misses": len(misses)}))
"""


def test_a_second_process_loads_the_first_ones_programs(tmp_path):
    cache = tmp_path / "xla"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop(runtime.CACHE_ENV, None)
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", _COMPILE_TWICE, str(cache)], capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        runs[-1]["entries"] = sorted(p.name for p in cache.iterdir())
    first, second = runs
    assert first["dir"] == str(cache)
    assert first["misses"] > 0 and first["hits"] == 0 and first["entries"]
    # Every program of the second run comes from the cache, and it adds nothing.
    assert second["hits"] == first["misses"] and second["misses"] == 0
    assert second["entries"] == first["entries"]


def test_a_cache_left_by_an_interrupted_write_is_repaired(tmp_path):
    """A program saved without its access-time file (a run stopped mid-write) broke every later save."""
    cache = tmp_path / "xla"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop(runtime.CACHE_ENV, None)

    def run(height: int) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-c", _COMPILE_TWICE, str(cache), str(height)], capture_output=True,
                              text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    run(40)
    # As a process stopped between writing a program and its access time leaves it (a program that
    # this test's runs never load again, so that JAX's own reads do not mend it).
    (cache / "jit_stopped-0123456789abcdef-cache").write_bytes(b"an unfinished entry")
    orphan = cache / "jit_stopped-0123456789abcdef-atime"
    before = {p.name for p in cache.iterdir()}
    done = run(56)  # other shapes: new programs to save
    after = {p.name for p in cache.iterdir()}
    assert "Error writing persistent compilation cache" not in done.stderr, done.stderr[-2000:]
    assert orphan.is_file() and len(orphan.read_bytes()) == 8
    new = after - before - {orphan.name}
    assert new and {n.removesuffix("-cache") for n in new if n.endswith("-cache")} == \
        {n.removesuffix("-atime") for n in new if n.endswith("-atime")}


def test_the_command_line_fills_the_cache(tiny_weights, tmp_path):
    cache = tmp_path / "xla"
    content = tmp_path / "c.png"
    from jaxstyle import images

    images.save_image(content, _photo(24, 32))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", runtime.CACHE_ENV: str(cache)}
    script = pathlib.Path(sys.executable).with_name("jaxstyle")  # the console script of this venv
    done = subprocess.run([str(script), "stylize", str(content), "--style", str(content),
                           "-o", str(tmp_path / "o.png"), "--size", "32", "--steps", "2", "--weights",
                           str(tiny_weights), "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list(cache.iterdir())) > 0
