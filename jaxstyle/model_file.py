"""Model files: a trained feed-forward style network, with its settings and where it came from.

A model file (``NAME.msgpack`` by convention; any name is read) is one
MessagePack map with these fields, written in this order:

- ``format``: ``"jaxstyle-transform-network"``. It comes first, so a model
  file's first bytes identify it;
- ``version``: 1. A newer version is refused with "upgrade jaxstyle";
- ``meta``: UTF-8 JSON text of an object with ``architecture`` (str),
  ``styles`` (a list of ``{"name": str, "sha256": 64 hex digits}``: each
  style image's file name and SHA-256), ``settings`` (the training settings),
  ``training`` (the training record: steps, batch size, final loss, time,
  ...) and any other keys. It is JSON text so that it can hold plain data only;
- ``meta_sha256``: the SHA-256 of the ``meta`` text, as UTF-8;
- ``params_sha256``: the SHA-256 of the parameters, as
  `jaxstyle.weights.params_sha256` computes it for weights files (names,
  shapes and float32 bytes in name order);
- ``params``: the Flax parameter tree as nested maps with string keys. Each
  leaf is a float32 array, stored as MessagePack extension type 1 holding
  ``[shape, "float32", C-order little-endian bytes]``. This is the layout
  ``flax.serialization`` uses, so ``flax.serialization.msgpack_restore`` reads
  these files too.

`load` treats the file as untrusted. MessagePack cannot carry code, and
jaxstyle never unpickles anything. The loader calls ``msgpack.unpackb``
itself, with limits, instead of ``flax.serialization.msgpack_restore``,
because that function accepts any dtype (bfloat16 included), NumPy scalars,
complex numbers, chunked arrays and non-string keys, and it lets a repeated
key silently replace another. This loader accepts exactly the layout above:

- no string, map or extension is longer than the file. There are no lists
  (except an array's shape), a map has at most `MAX_KEYS` keys, maps nest at
  most `MAX_DEPTH` deep, and the metadata is at most `MAX_META_BYTES`;
- there is no extension type other than the array's;
- each array is float32, and its bytes must match its shape before anything
  is allocated for it;
- both SHA-256s must match.

So reading allocates at most about three times the file's size (the bytes,
the arrays' bytes and the arrays), plus a bounded amount for the maps. A file
over `MAX_BYTES` is refused before it is read. Reading a model file needs
NumPy and msgpack only, not JAX.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import stat
from typing import Any, Callable, Mapping

import msgpack
import numpy as np

from jaxstyle._files import atomic_write_bytes
from jaxstyle.errors import JaxstyleError, UsageError
from jaxstyle import weights

FORMAT = "jaxstyle-transform-network"
VERSION = 1
EXTENSION = ".msgpack"
REQUIRED = ("architecture", "styles", "settings", "training")

MAX_BYTES = 2 << 30  # a whole file
MAX_META_BYTES = 1 << 20  # the metadata's JSON text; keep long loss curves in a log, not here
MAX_DEPTH = 8  # levels of maps in the parameter tree
MAX_KEYS = 1024  # keys of one map
MAX_NDIM = 8  # dimensions of one array
_MAX_ENTRIES = 1 << 16  # keys of all maps together
_NDARRAY = 1  # flax.serialization's MessagePack extension type for an ndarray
_FIELDS = ("format", "version", "meta", "meta_sha256", "params_sha256", "params")
_TAG = msgpack.packb("format") + msgpack.packb(FORMAT)  # follows the map's header byte
_REMEDY = "give a model file that `jaxstyle train` wrote"
_TRAINING_ORDER = ("steps", "steps_done", "batch_size", "size", "final_loss", "seconds", "date", "finished")


class _Bad(Exception):
    """What is wrong inside a file; `load` turns it into one `UsageError` line."""


def flatten(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flatten a nested tree: ``{"res0": {"conv1": {"kernel": k}}}`` -> ``{"res0/conv1/kernel": k}``.

    Works at any depth up to `MAX_DEPTH`. Leaves become NumPy arrays (a JAX
    array is copied to the host).

    Raises:
      JaxstyleError: a key is not a non-empty string without "/", a map is
        empty or has more than `MAX_KEYS` keys, or the tree nests deeper than
        `MAX_DEPTH`.
    """
    flat: dict[str, np.ndarray] = {}
    try:
        _flatten_into(params, (), flat, lambda where, leaf: np.asarray(leaf))
    except _Bad as e:
        raise JaxstyleError(f"cannot store these parameters: {e}") from None
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Rebuild the nested tree: ``{"res0/conv1/kernel": k}`` -> ``{"res0": {"conv1": {"kernel": k}}}``.

    Raises:
      JaxstyleError: one key is a prefix of another (``"a"`` and ``"a/b"``).
    """
    params: dict[str, Any] = {}
    for key, leaf in flat.items():
        *parents, last = key.split("/")
        node = params
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise JaxstyleError(f"parameter {key!r} lies under another parameter")
        if last in node:
            raise JaxstyleError(f"parameter {key!r} is also a prefix of other parameters")
        node[last] = leaf
    return params


def save(path: str | os.PathLike, params: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """Write a trained network and its metadata to a model file, atomically.

    Args:
      path: the file (``.msgpack`` by convention). Its directory is created. An
        existing file is replaced: the caller must refuse to overwrite an input.
      params: the Flax parameter tree, nested dicts of float32 arrays (NumPy or
        JAX), e.g. ``{"conv_in": {"kernel": (9, 9, 3, 32), "bias": (32,)}, ...}``.
      meta: JSON-serialisable: ``architecture`` (str), ``styles`` (list of
        ``{"name": str, "sha256": 64 lowercase hex digits}``), ``settings``
        (dict), ``training`` (dict), and any other keys. It is stored as JSON,
        so `load` returns tuples as lists.
    Raises:
      UsageError: ``path`` is a directory.
      JaxstyleError: a parameter is not float32 or not finite, the tree's keys
        do not fit (see `flatten`), the metadata is not JSON, lacks a required
        key or has the wrong types, or the file would exceed `MAX_BYTES`.
      OSError: the file cannot be written.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        raise UsageError(f"cannot write the model to {_name(path)}: it is a directory; "
                         f"give a file name, such as {_name(path / ('model' + EXTENSION))}")
    flat = flatten(params)
    wrong = [f"{k} ({a.dtype})" for k, a in flat.items() if a.dtype != np.float32]
    if wrong:
        raise JaxstyleError(f"a model file stores float32 parameters only; not float32: {_listing(wrong)}")
    bad = [k for k, a in flat.items() if not np.all(np.isfinite(a))]
    if bad:
        raise JaxstyleError(f"NaN or Inf in {_listing(bad)}; a model file stores finite parameters only")
    try:
        text = json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise JaxstyleError(f"the model's metadata is not JSON ({e})") from None
    problems = meta_problems(json.loads(text))
    if problems:
        raise JaxstyleError("the model's metadata " + "; ".join(problems))
    if len(text) > MAX_META_BYTES:  # ASCII: json.dumps escapes the rest
        raise JaxstyleError(f"the model's metadata is {len(text):,} bytes of JSON, more than {MAX_META_BYTES:,}")
    leaves = {k: msgpack.ExtType(_NDARRAY, msgpack.packb(
        [list(a.shape), "float32", np.ascontiguousarray(a, "<f4").tobytes()], use_bin_type=True))
        for k, a in flat.items()}
    data = msgpack.packb({"format": FORMAT, "version": VERSION, "meta": text,
                          "meta_sha256": hashlib.sha256(text.encode()).hexdigest(),
                          "params_sha256": weights.params_sha256(flat), "params": unflatten(leaves)}, use_bin_type=True)
    if len(data) > MAX_BYTES:
        raise JaxstyleError(f"the model is {len(data):,} bytes, more than a model file holds ({MAX_BYTES:,})")
    atomic_write_bytes(path, data)


def load(path: str | os.PathLike, *,
         expected_shapes: Mapping[str, tuple[int, ...]] | Callable[[dict], Mapping[str, tuple[int, ...]]] | None = None,
         ) -> tuple[dict, dict]:
    """Read and verify a model file.

    Args:
      path: the file.
      expected_shapes: the shapes the network's architecture requires, flat
        (``{"res0/conv1/kernel": (3, 3, 128, 128), ...}``), or a function that
        computes them from the file's metadata (its ``architecture``, its
        number of ``styles``, its ``settings``). When given, every missing,
        unexpected and wrong-shape parameter is listed
        (`jaxstyle.weights.check_shapes`).
    Returns:
      ``(params, meta)``: the parameter tree (nested dicts of float32 NumPy
      arrays) and the metadata, as `save` was given them.
    Raises:
      UsageError: in one line that names the file: it is missing, a directory,
        unreadable, empty or over `MAX_BYTES`; it is another kind of file (a
        weights ``.npz``, a checkpoint, an image, a pickle, which is never
        unpickled); it has another ``format`` or a newer ``version``; it is
        truncated or damaged (not MessagePack, trailing bytes, a field
        missing or of the wrong type, metadata that is not JSON or lacks a
        required key, an array that is not float32 or whose bytes do not fit
        its shape, an extension other than the array's, nesting or sizes over
        the limits, a SHA-256 that does not match, NaN or Inf); or it does not
        fit ``expected_shapes``.
    """
    path = pathlib.Path(path)
    name = _name(path)
    data = _read(path, name)
    ours = 0x81 <= data[0] <= 0x8F and data[1:1 + len(_TAG)] == _TAG
    kind = None if ours else _foreign_kind(data)
    if kind:
        raise UsageError(f"{name} is {kind}, not a jaxstyle model file; {_REMEDY}")
    try:
        top = _unpack(data)
    except _Bad as e:
        if ours:
            raise _damaged(name, str(e)) from None
        raise UsageError(f"{name} is not a jaxstyle model file; {_REMEDY}") from None
    if not isinstance(top, dict) or top.get("format") != FORMAT:
        found = top.get("format") if isinstance(top, dict) else None
        what = f" (its format is {_show(repr(found))}, expected {FORMAT!r})" if isinstance(found, str) else ""
        raise UsageError(f"{name} is not a jaxstyle model file{what}; {_REMEDY}")
    version = top.get("version")
    if type(version) is int and version > VERSION:
        raise UsageError(f"model file {name} has version {version}, newer than this jaxstyle reads ({VERSION}); "
                         "upgrade jaxstyle to use it")
    try:
        flat, meta = _contents(top)
    except _Bad as e:
        raise _damaged(name, str(e)) from None
    if expected_shapes is not None:
        shapes = expected_shapes(meta) if callable(expected_shapes) else expected_shapes
        try:
            weights.check_shapes(flat, {k: tuple(v) for k, v in shapes.items()},
                                 what=f"the parameters in model file {name}", fits=_show(meta["architecture"]))
        except JaxstyleError as e:
            raise UsageError(f"{e}; train it again with `jaxstyle train`") from None
    return unflatten(flat), meta


def meta_problems(meta: Any) -> list[str]:
    """What is wrong with a model's metadata (its JSON form), as short phrases; empty when nothing is.

    The metadata must be an object with ``architecture`` (a non-empty string),
    ``styles`` (a non-empty list of ``{"name": str, "sha256": 64 lowercase hex
    digits}``), ``settings`` and ``training`` (objects). Other keys are free.
    """
    if not isinstance(meta, dict):
        return [f"is a {type(meta).__name__}, not a JSON object"]
    problems = []
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        problems.append(f"lacks {', '.join(missing)}")
    if "architecture" in meta and not (isinstance(meta["architecture"], str) and meta["architecture"]):
        problems.append(f"has architecture {_show(meta['architecture'])}, not a non-empty string")
    styles = meta.get("styles")
    if "styles" in meta and not (isinstance(styles, list) and styles and all(
            isinstance(s, dict) and isinstance(s.get("name"), str) and _is_sha256(s.get("sha256")) for s in styles)):
        problems.append(f'has styles {_show(styles)}, not a non-empty list of {{"name": str, "sha256": 64 hex digits}}')
    for key in ("settings", "training"):
        if key in meta and not isinstance(meta[key], dict):
            problems.append(f"has {key} {_show(meta[key])}, not an object")
    return problems


def describe(source: str | os.PathLike | Mapping[str, Any]) -> list[str]:
    """The lines `jaxstyle model info MODEL` prints about a model file, or about its metadata alone.

    Args:
      source: a model file (read with `load`), or the metadata of one. The
        file's size and parameters are described only when a file is given.
    Returns:
      The format and version, the file's size, the parameters' count and
      SHA-256, the architecture, each style with its SHA-256 (the first 16
      digits), the other metadata, the settings (sorted) and the training record
      (steps, steps done, batch size, size, final loss, seconds, date and
      finished first, then the rest, sorted). Text from the file is shown escaped where it is not printable.
    Raises:
      UsageError: the file cannot be loaded (see `load`).
      JaxstyleError: the metadata given does not fit (see `meta_problems`).
    """
    lines = []
    if isinstance(source, Mapping):
        meta = dict(source)
        problems = meta_problems(meta)
        if problems:
            raise JaxstyleError("the model's metadata " + "; ".join(problems))
    else:
        path = pathlib.Path(source)
        params, meta = load(path)
        flat = flatten(params)
        lines += [f"model file: {_name(path)} ({path.stat().st_size:,} bytes, {FORMAT} version {VERSION})",
                  f"parameters: {sum(a.size for a in flat.values()):,} in {len(flat)} arrays "
                  f"(SHA-256 {weights.params_sha256(flat)[:16]}...)"]
    lines.append(f"architecture: {_show(meta['architecture'], 200)}")
    for i, style in enumerate(meta["styles"], 1):
        more = "".join(f", {_show(k)} {_value(v)}" for k, v in style.items() if k not in ("name", "sha256"))
        lines.append(f"style {i}: {_show(style['name'], 200)} (SHA-256 {style['sha256'][:16]}...{more})")
    lines += [f"{_show(k)}: {_value(meta[k])}" for k in sorted(meta) if k not in REQUIRED]
    for key, order in (("settings", ()), ("training", _TRAINING_ORDER)):
        record = meta[key]
        keys = [k for k in order if k in record] + sorted(k for k in record if k not in order)
        lines.append(f"{key}:" + ("" if keys else " (none)"))
        lines += [f"  {_show(k)}: {_value(record[k])}" for k in keys]
    return lines


def _read(path: pathlib.Path, name: str) -> bytes:
    """The bytes of a model file, refusing what is not a regular file of a model file's size."""
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise UsageError(f"model path {name} is a directory; give the model file ({EXTENSION}) "
                             "that `jaxstyle train` wrote")
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{name} is not a regular file; {_REMEDY}")
        if info.st_size > MAX_BYTES:
            raise UsageError(f"{name} is {info.st_size:,} bytes, more than a model file holds ({MAX_BYTES:,}); "
                             f"it is not a jaxstyle model file: {_REMEDY}")
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)  # the file may have grown since stat
    except FileNotFoundError:
        raise UsageError(f"no model file at {name}; check the path, or train one with `jaxstyle train`") from None
    except OSError as e:
        raise UsageError(f"cannot read model file {name} ({_show(e.strerror or e)})") from None
    if not data:
        raise UsageError(f"{name} is empty, not a jaxstyle model file; {_REMEDY}")
    if len(data) > MAX_BYTES:
        raise UsageError(f"{name} is over {MAX_BYTES:,} bytes, more than a model file holds; {_REMEDY}")
    return data


def _foreign_kind(data: bytes) -> str | None:
    """What kind of file ``data`` is when its first bytes say so ("a PNG image"), else None."""
    for magic, kind in ((b"PK\x03\x04", "a zip archive (a NumPy .npz, such as a jaxstyle weights file or "
                                       "checkpoint, or a PyTorch file)"),
                        (b"PK\x05\x06", "an empty zip archive"),
                        (b"\x93NUMPY", "a NumPy .npy array"),
                        (b"\x89PNG\r\n\x1a\n", "a PNG image"),
                        (b"\xff\xd8\xff", "a JPEG image"),
                        (b"\x1f\x8b", "a gzip file")):
        if data.startswith(magic):
            return kind
    if data[0] == 0x80 and len(data) > 1 and 2 <= data[1] <= 5:  # PROTO opcode and protocol
        return "a Python pickle (never unpickled: unpickling can run code)"
    if len(data) > 9 and data[8:9] == b"{" and int.from_bytes(data[:8], "little") <= len(data) - 8:
        return "a safetensors file"
    return None


def _unpack(data: bytes) -> Any:
    """The MessagePack object in ``data``, with the limits of a model file's layout."""
    entries = 0

    def as_map(pairs: list) -> dict:
        nonlocal entries
        entries += len(pairs)
        if entries > _MAX_ENTRIES:
            raise _Bad(f"its maps hold more than {_MAX_ENTRIES:,} keys")
        out = dict(pairs)
        if len(out) != len(pairs):
            raise _Bad("a map repeats a key")
        return out

    def ext(code: int, payload: bytes) -> _Array:
        if code != _NDARRAY:
            raise _Bad(f"it holds a MessagePack extension of type {code}, not an array (type {_NDARRAY})")
        return _Array(payload)

    try:  # no lists or binary at this level (they live inside an array's extension), short strings only
        return msgpack.unpackb(data, raw=False, strict_map_key=True, object_pairs_hook=as_map, ext_hook=ext,
                               max_array_len=0, max_bin_len=0, max_map_len=MAX_KEYS, max_str_len=MAX_META_BYTES)
    except msgpack.ExtraData as e:
        raise _Bad(f"{len(e.extra):,} byte{'s' * (len(e.extra) != 1)} of trailing data after its end") from None
    except msgpack.StackError:
        raise _Bad("it nests too deeply") from None
    except msgpack.FormatError:
        raise _Bad("a byte begins no MessagePack value") from None
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as e:
        if "incomplete input" in str(e):
            raise _Bad("truncated: it ends inside its data") from None
        if "not allowed for map key" in str(e):
            raise _Bad("a map's key is not a string") from None
        raise _Bad(f"not the MessagePack of a model file: {_show(str(e) or type(e).__name__)}") from None


class _Array:
    """The payload of an array's MessagePack extension, decoded by `_decode` once its name is known."""

    def __init__(self, payload: bytes):
        self.payload = payload


def _decode(where: str, leaf: Any) -> np.ndarray:
    """The float32 array of an `_Array` leaf, after checking its shape, dtype and byte count."""
    if not isinstance(leaf, _Array):
        raise _Bad(f"{where} is a {type(leaf).__name__}, not a map or an array")
    try:
        item = msgpack.unpackb(leaf.payload, raw=False, strict_map_key=True, max_array_len=MAX_NDIM,
                               max_map_len=0, max_ext_len=0, max_str_len=64)
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException):
        raise _Bad(f"{where} is not an array's MessagePack") from None
    if not (isinstance(item, list) and len(item) == 3):
        raise _Bad(f"{where} is not [shape, dtype, bytes]")
    shape, dtype, buffer = item
    if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
        raise _Bad(f"{where} has the shape {_show(shape)}")
    if dtype != "float32":
        raise _Bad(f"{where} is {_show(repr(dtype))}, not float32")
    if not isinstance(buffer, bytes):
        raise _Bad(f"{where} holds a {type(buffer).__name__}, not bytes")
    if len(buffer) != 4 * math.prod(shape):  # checked before anything is allocated for the array
        raise _Bad(f"{where} of shape {tuple(shape)} holds {len(buffer):,} bytes, not {4 * math.prod(shape):,}")
    return np.frombuffer(buffer, "<f4").astype(np.float32).reshape(shape)  # a writable native-order copy


def _flatten_into(tree: Any, keys: tuple[str, ...], flat: dict, leaf: Callable[[str, Any], np.ndarray]) -> None:
    """Add the leaves of a parameter tree to ``flat`` under "a/b/c" keys; ``leaf(where, value)`` makes each array."""
    where = "/".join(keys) or "the parameters"
    if not isinstance(tree, Mapping):
        if not keys:
            raise _Bad("the parameters are not a map of names")
        flat[where] = leaf(where, tree)
        return
    if not tree:
        raise _Bad(f"{where} is an empty map")
    if len(tree) > MAX_KEYS:
        raise _Bad(f"{where} has {len(tree):,} keys, more than {MAX_KEYS:,}")
    if len(keys) >= MAX_DEPTH:
        raise _Bad(f"the parameters nest deeper than {MAX_DEPTH} levels (at {where})")
    for key, child in tree.items():
        if not (isinstance(key, str) and key and "/" not in key and key.isprintable()):
            raise _Bad(f"the key {_show(repr(key))} in {where} is not a non-empty printable string without '/'")
        _flatten_into(child, (*keys, key), flat, leaf)


def _contents(top: dict) -> tuple[dict[str, np.ndarray], dict]:
    """The flat float32 parameters and the metadata of an unpacked model file, each field checked."""
    version = top.get("version")
    if type(version) is not int or version != VERSION:
        raise _Bad(f"its version is {_show(repr(version))}, expected {VERSION}")
    missing = [k for k in _FIELDS if k not in top]
    unexpected = [_show(k) for k in top if k not in _FIELDS]
    if missing or unexpected:
        raise _Bad("; ".join(([f"it lacks {', '.join(missing)}"] if missing else [])
                             + ([f"it has the unexpected field {_listing(unexpected)}"] if unexpected else [])))
    text = top["meta"]
    if not isinstance(text, str):
        raise _Bad(f"its meta is a {type(text).__name__}, not JSON text")
    if hashlib.sha256(text.encode()).hexdigest() != top["meta_sha256"]:
        raise _Bad("its metadata do not match their SHA-256")
    try:
        meta = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise _Bad(f"its metadata are not JSON ({_show(str(e))})") from None
    problems = meta_problems(meta)
    if problems:
        raise _Bad("its metadata " + "; ".join(problems))
    flat: dict[str, np.ndarray] = {}
    _flatten_into(top["params"], (), flat, _decode)
    if weights.params_sha256(flat) != top["params_sha256"]:
        raise _Bad("its parameters do not match their SHA-256")
    bad = [k for k, a in flat.items() if not np.all(np.isfinite(a))]
    if bad:
        raise _Bad(f"NaN or Inf in {_listing(bad)}")
    return flat, meta


def _damaged(name: str, why: str) -> UsageError:
    return UsageError(f"model file {name} is damaged ({why}); copy it again, or train it again with `jaxstyle train`")


def _no_constant(token: str):
    raise ValueError(f"{token} is not JSON")


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _name(path: pathlib.Path) -> str:
    """A path for a one-line message: as it is, or escaped where it holds a newline or another control character."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _show(value: Any, limit: int = 60) -> str:
    """A value from a file for a one-line message: escaped where not printable, and at most ``limit`` characters."""
    text = value if isinstance(value, str) and value.isprintable() else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _listing(items: list[str], limit: int = 10) -> str:
    """``a, b, c``, or the first ``limit`` items and how many more."""
    shown = ", ".join(_show(item, 120) for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _value(value: Any) -> str:
    """A metadata value as `describe` shows it: numbers to 6 digits, lists and objects as JSON, all on one line."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return _show(json.dumps(value), 120)
    return _show(value if isinstance(value, str) else json.dumps(value), 120)
