"""Checkpoint files: where a run stands, so that ``--resume`` can continue it exactly.

A checkpoint is one ``.npz`` file (read with ``allow_pickle=False``; nothing is
ever pickled) holding an `optimize.Checkpoint` of one program (one or more
items) and the run it belongs to:

- ``images``: the current iterates, (items, h, w, 3) float32, at the current scale;
- ``state/0`` ... ``state/N``: the leaves of the optimiser states, stacked along
  the item axis, in `jax.tree.leaves` order. The tree's structure is not
  stored: it is fixed by the optimiser and the image shape, so `load` rebuilds
  it from a fresh `step.init_state` and checks every leaf's shape and dtype;
- ``ema/0``, ``ema/1``: the leaves of the iterate averages' states (with
  ``ema_decay`` only), rebuilt the same way from `optax.ema`;
- ``history``: each item's loss at the start of every step so far, (items, steps done) float32;
- ``__meta__``: UTF-8 JSON: the format tag, the scale and step, and the run
  (`run_record`): the settings (`StylizeConfig` as a dict), each input file's
  name and SHA-256, the SHA-256 of the weights, and what else identifies the
  run (the output it belongs to, a sweep's grid, a batch's items).

`load` refuses a checkpoint whose settings or inputs differ from the run that
asks for it, naming what differs, since continuing someone else's
optimisation with new targets would silently give a different picture.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import zipfile
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from jaxstyle import __version__, optimize, plan, step
from jaxstyle._files import atomic_write_npz
from jaxstyle.config import StylizeConfig
from jaxstyle.errors import UsageError

FORMAT = "jaxstyle-checkpoint-2"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_record(config: StylizeConfig, inputs: Sequence[tuple[str, str | os.PathLike]],
               weights_sha256: str, **details: Any) -> dict[str, Any]:
    """What identifies a run: its settings, its input files, its weights, and what else it names.

    Args:
      config: the run's settings.
      inputs: ``(role, path)`` pairs, e.g. ``("content", "photo.jpg")``,
        ``("style 1", "painting.png")``; each file is hashed.
      weights_sha256: the ``params_sha256`` of the weights file's metadata.
      details: JSON values that must match too, e.g. ``output="out.png"``
        (the output the checkpoint belongs to) or a sweep's ``grid``.
    Returns:
      A JSON-serialisable dict: ``settings``, ``inputs`` (role to name and
      SHA-256), ``weights_sha256`` and the details.
    """
    record = {"settings": dataclasses.asdict(config),
              "inputs": {role: {"name": pathlib.Path(p).name, "sha256": file_sha256(p)} for role, p in inputs},
              "weights_sha256": weights_sha256, **details}
    return json.loads(json.dumps(record))  # tuples as lists, as JSON reads them back


def save(path: str | os.PathLike, checkpoint: optimize.Checkpoint, run: Mapping[str, Any],
         history: np.ndarray) -> None:
    """Write ``checkpoint`` of ``run`` (see `run_record`) atomically to ``path``.

    Args:
      path: the ``.npz`` file; replaced if it exists.
      checkpoint: a `Progress.checkpoint` (device or NumPy arrays).
      run: `run_record` of the run.
      history: each item's loss per step so far, (items, steps done) (kept so
        that a resumed run logs every step).
    Raises:
      OSError: the file cannot be written.
    """
    meta = {"format": FORMAT, "jaxstyle": __version__, "scale": checkpoint.scale, "step": checkpoint.step,
            "ema": checkpoint.emas is not None, "run": dict(run)}
    arrays = {"images": np.asarray(checkpoint.images), "history": np.asarray(history, np.float32)}
    for prefix, tree in (("state", checkpoint.states), ("ema", checkpoint.emas)):
        for i, leaf in enumerate(jax.tree.leaves(tree)):
            arrays[f"{prefix}/{i}"] = np.asarray(leaf)
    atomic_write_npz(path, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)


def load(path: str | os.PathLike, run: Mapping[str, Any], config: StylizeConfig,
         content_shape: Sequence[int], items: int = 1) -> tuple[optimize.Checkpoint, np.ndarray]:
    """Read a checkpoint of ``run`` and check that it fits this run.

    Args:
      path: the ``.npz`` file `save` wrote.
      run: `run_record` of the run that continues (its settings, inputs and
        details must equal the checkpoint's).
      config: the run's settings (the same as ``run["settings"]``).
      content_shape: shape of the content images, which sets the image size at each scale.
      items: how many items the checkpoint's program has.
    Returns:
      ``(checkpoint, history)``: the `optimize.Checkpoint` (NumPy leaves) for
      `optimize.run`'s ``resume``, and each item's loss per step so far.
    Raises:
      UsageError: the file is unreadable or not a checkpoint, belongs to a run
        with other settings, inputs or weights (the message says which), or its
        arrays do not fit the run.
    """
    path = pathlib.Path(path)
    name = repr(str(path))
    arrays, scale, step_done, has_ema, saved_run = _read(path, name)
    differ = differences(saved_run, run)
    if differ:
        raise UsageError(f"checkpoint {name} belongs to another run: {'; '.join(differ)}; "
                         "resume with the same settings and inputs, or delete it to start afresh")

    def bad(what: str) -> UsageError:
        return UsageError(f"checkpoint {name} is damaged: {what}; delete it to start afresh")

    sizes, steps = plan.scale_sizes(config), plan.scale_steps(config)
    if not (0 <= scale < len(sizes) and 0 <= step_done <= steps[scale]):
        raise bad(f"scale {scale} step {step_done} lies outside the run "
                  f"(scales of {','.join(map(str, steps))} steps)")
    shape = (items, *plan.output_shape(content_shape, sizes[scale]), 3)
    images = arrays.get("images")
    if images is None or images.shape != shape or images.dtype != np.float32 or not np.all(np.isfinite(images)):
        got = "no images" if images is None else f"images {images.dtype} {images.shape}"
        raise bad(f"{got}, expected finite float32 {shape}")
    template = jax.ShapeDtypeStruct(images.shape, images.dtype)
    states = _tree(arrays, "state", jax.eval_shape(
        jax.vmap(lambda x: step.init_state(config.optimizer, x, config.lr)), template), bad)
    emas = None
    if config.ema_decay:
        if not has_ema:
            raise bad("no iterate average although the run averages (ema_decay)")
        emas = _tree(arrays, "ema", jax.eval_shape(jax.vmap(lambda x: step.init_average(config.ema_decay, x)),
                                                   template), bad)
    history = arrays.get("history", np.zeros((items, 0), np.float32))
    done = plan.steps_before(config, scale) + step_done
    if history.shape != (items, done):
        raise bad(f"history of shape {history.shape} for {items} item(s) and {done} steps done")
    return optimize.Checkpoint(scale, step_done, images, states, emas), history


def saved_run(path: str | os.PathLike) -> dict[str, Any]:
    """The `run_record` a checkpoint was saved with (to find which items it holds before loading it).

    Raises:
      UsageError: the file is unreadable or not a checkpoint.
    """
    return _read(pathlib.Path(path), repr(str(path)))[4]


def _read(path: pathlib.Path, name: str) -> tuple[dict, int, int, bool, dict]:
    """The arrays and metadata of a checkpoint file: ``(arrays, scale, step, has_ema, run)``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        scale, step_done, has_ema, saved_run = int(meta["scale"]), int(meta["step"]), bool(meta["ema"]), meta["run"]
        if not isinstance(saved_run, dict):
            raise ValueError("no run record")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile, EOFError) as e:
        raise UsageError(f"cannot read checkpoint {name} ({e}); it is truncated, not a jaxstyle checkpoint, "
                         "or from another jaxstyle version: delete it to start afresh") from None
    return arrays, scale, step_done, has_ema, saved_run


def _tree(arrays: Mapping[str, np.ndarray], prefix: str, template: Any, bad) -> Any:
    """The pytree of ``template``'s structure from ``prefix/0..N``, each leaf checked against it."""
    specs, treedef = jax.tree.flatten(template)
    leaves = [arrays.get(f"{prefix}/{i}") for i in range(len(specs))]
    extra = sum(1 for k in arrays if k.startswith(f"{prefix}/")) - len(specs)
    if extra or any(leaf is None for leaf in leaves):
        raise bad(f"{len(specs) + extra} {prefix} arrays, expected {len(specs)} for this optimiser")
    for i, (leaf, spec) in enumerate(zip(leaves, specs)):
        if leaf.shape != spec.shape or leaf.dtype != spec.dtype:
            raise bad(f"{prefix}/{i} is {leaf.dtype} {leaf.shape}, expected {spec.dtype} {spec.shape}")
    return jax.tree.unflatten(treedef, leaves)


def differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between two `run_record`s (an earlier run's and this one's), as short phrases."""
    out = []
    old, new = saved.get("settings", {}), current["settings"]
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            out.append(f"`{key}` was {_show(old.get(key))}, now {_show(new.get(key))}")
    old, new = saved.get("inputs", {}), current["inputs"]
    for role in dict.fromkeys([*new, *old]):
        a, b = old.get(role), new.get(role)
        if a is None:
            out.append(f"{role} image {b['name']} was not given then")
        elif b is None:
            out.append(f"{role} image {a['name']} was given then, not now")
        elif a["sha256"] != b["sha256"]:
            then = a["name"] if a["name"] != b["name"] else "then"
            out.append(f"{role} image {b['name']} is another file (SHA-256 {b['sha256'][:12]}..., "
                       f"{then} {a['sha256'][:12]}...)")
    if saved.get("weights_sha256") != current["weights_sha256"]:
        out.append(f"the weights differ (SHA-256 {current['weights_sha256'][:12]}..., "
                   f"then {str(saved.get('weights_sha256'))[:12]}...)")
    for key in sorted((set(saved) | set(current)) - {"settings", "inputs", "weights_sha256"}):
        if saved.get(key) != current.get(key):
            out.append(f"its {key} was {_show(saved.get(key))}, now {_show(current.get(key))}")
    return out


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) if value else "(none)"
    return "(unset)" if value is None else str(value)
