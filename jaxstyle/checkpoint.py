"""Checkpoint files: where a run stands, so that ``--resume`` can continue it exactly.

A checkpoint is one ``.npz`` file (read with ``allow_pickle=False``; nothing is
ever pickled) holding an `optimize.Checkpoint` and the run it belongs to:

- ``image``: the current iterate, (h, w, 3) float32, at the current scale;
- ``state/0`` ... ``state/N``: the leaves of the optimiser state, in
  `jax.tree.leaves` order. The tree's structure is not stored: it is fixed by
  the optimiser and the image shape, so `load` rebuilds it from a fresh
  `optimize.init_state` and checks every leaf's shape and dtype against it;
- ``ema/0``, ``ema/1``: the leaves of the iterate average's state (with
  ``ema_decay`` only), rebuilt the same way from `optax.ema`;
- ``history``: the loss at the start of every step so far, (steps done,) float32;
- ``__meta__``: UTF-8 JSON: the format tag, the scale and step, and the run
  (`run_record`): the settings (`StylizeConfig` as a dict), each input file's
  name and SHA-256, and the SHA-256 of the weights.

`load` refuses a checkpoint whose settings or inputs differ from the run that
asks for it, naming what differs, since continuing someone else's
optimisation with new targets would silently give a different picture.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
import zipfile
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import optax

from jaxstyle import __version__, optimize
from jaxstyle._files import atomic_write_bytes
from jaxstyle.config import StylizeConfig
from jaxstyle.errors import UsageError

FORMAT = "jaxstyle-checkpoint-1"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_record(config: StylizeConfig, inputs: Sequence[tuple[str, str | os.PathLike]],
               weights_sha256: str) -> dict[str, Any]:
    """What identifies a run: its settings, its input files and its weights.

    Args:
      config: the run's settings.
      inputs: ``(role, path)`` pairs, e.g. ``("content", "photo.jpg")``,
        ``("style 1", "painting.png")``; each file is hashed.
      weights_sha256: the ``params_sha256`` of the weights file's metadata.
    Returns:
      A JSON-serialisable dict: ``settings``, ``inputs`` (role to name and
      SHA-256) and ``weights_sha256``.
    """
    settings = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples as lists, as JSON reads back
    return {"settings": settings,
            "inputs": {role: {"name": pathlib.Path(p).name, "sha256": file_sha256(p)} for role, p in inputs},
            "weights_sha256": weights_sha256}


def save(path: str | os.PathLike, checkpoint: optimize.Checkpoint, run: Mapping[str, Any],
         history: Sequence[float] | np.ndarray = ()) -> None:
    """Write ``checkpoint`` of ``run`` (see `run_record`) atomically to ``path``.

    Args:
      path: the ``.npz`` file; replaced if it exists.
      checkpoint: a `Progress.checkpoint` (device or NumPy arrays).
      run: `run_record` of the run.
      history: the loss per step so far (kept so that a resumed run logs every step).
    Raises:
      OSError: the file cannot be written.
    """
    meta = {"format": FORMAT, "jaxstyle": __version__, "scale": checkpoint.scale, "step": checkpoint.step,
            "ema": checkpoint.ema is not None, "run": dict(run)}
    arrays = {"image": np.asarray(checkpoint.image), "history": np.asarray(history, np.float32).reshape(-1)}
    for prefix, tree in (("state", checkpoint.state), ("ema", checkpoint.ema)):
        for i, leaf in enumerate(jax.tree.leaves(tree)):
            arrays[f"{prefix}/{i}"] = np.asarray(leaf)
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load(path: str | os.PathLike, run: Mapping[str, Any], config: StylizeConfig,
         content_shape: Sequence[int]) -> tuple[optimize.Checkpoint, np.ndarray]:
    """Read a checkpoint of ``run`` and check that it fits this run.

    Args:
      path: the ``.npz`` file `save` wrote.
      run: `run_record` of the run that continues (its settings and inputs
        must equal the checkpoint's).
      config: the run's settings (the same as ``run["settings"]``).
      content_shape: shape of the content image, which sets the image size at each scale.
    Returns:
      ``(checkpoint, history)``: the `optimize.Checkpoint` (NumPy leaves) for
      `optimize.stylize`'s ``resume``, and the loss per step so far.
    Raises:
      UsageError: the file is unreadable or not a checkpoint, belongs to a run
        with other settings, inputs or weights (the message says which), or its
        arrays do not fit the run.
    """
    path = pathlib.Path(path)
    name = repr(str(path))
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        scale, step, has_ema, saved_run = int(meta["scale"]), int(meta["step"]), bool(meta["ema"]), meta["run"]
        if not isinstance(saved_run, dict):
            raise ValueError("no run record")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile, EOFError) as e:
        raise UsageError(f"cannot read checkpoint {name} ({e}); it is truncated or not a jaxstyle "
                         "checkpoint: delete it to start afresh") from None
    differences = _differences(saved_run, run)
    if differences:
        raise UsageError(f"checkpoint {name} belongs to another run: {'; '.join(differences)}; "
                         "resume with the same settings and inputs, or delete it to start afresh")

    def bad(what: str) -> UsageError:
        return UsageError(f"checkpoint {name} is damaged: {what}; delete it to start afresh")

    sizes = optimize.scale_sizes(config)
    if not (0 <= scale < len(sizes) and 0 <= step <= config.steps):
        raise bad(f"scale {scale} step {step} lies outside the run ({len(sizes)} scale(s) of {config.steps} steps)")
    hw = optimize.output_shape(content_shape, sizes[scale])
    image = arrays.get("image")
    if image is None or image.shape != (*hw, 3) or image.dtype != np.float32 or not np.all(np.isfinite(image)):
        got = "no image" if image is None else f"image {image.dtype} {image.shape}"
        raise bad(f"{got}, expected finite float32 {(*hw, 3)}")
    template = jax.ShapeDtypeStruct(image.shape, image.dtype)
    state = _tree(arrays, "state", jax.eval_shape(lambda x: optimize.init_state(config.optimizer, x, config.lr),
                                                  template), bad)
    ema = None
    if config.ema_decay:
        if not has_ema:
            raise bad("no iterate average although the run averages (ema_decay)")
        ema = _tree(arrays, "ema", jax.eval_shape(optax.ema(config.ema_decay).init, template), bad)
    history = arrays.get("history", np.zeros(0, np.float32))
    done = scale * config.steps + step
    if history.ndim != 1 or len(history) != done:
        raise bad(f"{history.size} losses in the history for {done} steps done")
    return optimize.Checkpoint(scale, step, image, state, ema), history


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


def _differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between two `run_record`s, as short phrases."""
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
    return out


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) if value else "(none)"
    return "(unset)" if value is None else str(value)
