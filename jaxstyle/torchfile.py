"""Read PyTorch checkpoint files (``torch.save``) without torch and without running their code.

A ``.pth`` / ``.pt`` / ``.bin`` file written by ``torch.save`` is a pickle, and
unpickling can call any function the file names: loading an untrusted
checkpoint with stock ``pickle`` (or ``torch.load(weights_only=False)``) can
run arbitrary code. `load` uses a restricted unpickler that resolves only
the few globals a tensor checkpoint needs and refuses everything else:

- ``torch._utils._rebuild_tensor_v2``, ``_rebuild_tensor`` (older files) and
  ``_rebuild_parameter``: they become pure NumPy constructors here;
- the storage classes ``torch.FloatStorage``, ``torch.HalfStorage``, ...,
  ``torch.UntypedStorage`` and the dtypes ``torch.float32``, ...: tags, never called;
- ``collections.OrderedDict``.

Two layouts are read:

- zip (torch >= 1.6): ``<archive>/data.pkl`` holds the object; each storage is
  the record ``<archive>/data/<key>``; ``<archive>/byteorder`` ("little" or
  "big") is optional and defaults to little-endian.
- legacy (``_use_new_zipfile_serialization=False``): a sequence of pickles, the
  magic number ``0x1950a86a20f9469cfc6c``, the protocol version 1001, a dict
  of system information, the object, the list of storage keys; then, for each
  key in that order, an 8-byte little-endian element count and the raw
  little-endian bytes of the storage.

In both, a storage is a persistent id ``("storage", torch.<Kind>Storage, key,
location, numel[, view])`` and a tensor is ``_rebuild_tensor_v2(storage,
offset, size, stride, ...)``, all in elements of the storage's dtype.

Damaged or hostile files fail with one `JaxstyleError`, never a crash: each
pickle is first parsed without being run (`pickletools.genops`), so that a
length running past the end of the file is caught before anything is
allocated, and every tensor view is checked against its storage's bounds
before NumPy's ``as_strided`` reads it.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pathlib
import pickle
import pickletools
import sys
import warnings
import zipfile
from typing import Any

import numpy as np

from jaxstyle.errors import JaxstyleError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# `torch.<Kind>Storage` -> NumPy dtype of its elements (byte order added on read).
_STORAGE_DTYPES = {
    "FloatStorage": "f4", "HalfStorage": "f2", "DoubleStorage": "f8", "BFloat16Storage": "bfloat16",
    "ByteStorage": "u1", "CharStorage": "i1", "ShortStorage": "i2", "IntStorage": "i4",
    "LongStorage": "i8", "BoolStorage": "?", "UntypedStorage": "u1",
}
# `torch.<dtype>` globals (a dtype stored as a value) -> NumPy dtype.
_TORCH_DTYPES = {
    "float32": "f4", "float16": "f2", "float64": "f8", "bfloat16": "bfloat16", "uint8": "u1",
    "int8": "i1", "int16": "i2", "int32": "i4", "int64": "i8", "bool": "?",
}
# Opcodes of pickle protocol 5 (out-of-band buffers) that torch.save does not write.
_REFUSED_OPCODES = {"BYTEARRAY8", "NEXT_BUFFER", "READONLY_BUFFER"}
# A tensor may hold more elements than its storage only through zero strides
# (a broadcast view); past this many elements such a file is refused rather
# than allowed to exhaust memory.
_MAX_BROADCAST_ELEMENTS = 2**24


def load(path: str | os.PathLike) -> Any:
    """Read a ``torch.save`` file into plain Python and NumPy, without torch.

    Args:
      path: a checkpoint in the zip or the legacy format, usually a state dict.
    Returns:
      The saved object (usually a dict or `collections.OrderedDict`) with each
      tensor replaced by a NumPy array of the same dtype, shape and values
      (a fresh, C-contiguous, native-endian copy; bfloat16 as
      ``ml_dtypes.bfloat16``) and each ``torch.<dtype>`` by a NumPy dtype.
    Raises:
      JaxstyleError: the file is missing, truncated or corrupt, is not a
        ``torch.save`` file, or references a global that is not a tensor
        type (it may carry code); nothing the file names is ever called.
    """
    path = pathlib.Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise JaxstyleError(f"cannot read {path}: {e.strerror or e}") from None
    if not data:
        raise JaxstyleError(f"cannot read {path}: the file is empty")
    try:
        if data[:4] == b"PK\x03\x04":
            return _load_zip(path, data)
        if data[257:262] == b"ustar":
            raise JaxstyleError(f"{path} is a tar-format checkpoint (torch before 0.4), which is not "
                                "supported; re-save it with a recent torch.save")
        return _load_legacy(path, data)
    except JaxstyleError:
        raise
    except Exception as e:  # anything else a damaged file can provoke, as one line
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise JaxstyleError(f"cannot read {path} as a PyTorch checkpoint ({reason}); "
                            "the file is truncated or corrupt") from None


class _StorageType:
    """What ``torch.<Kind>Storage`` resolves to: a dtype tag, not callable."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype

    def __setstate__(self, state):
        raise pickle.UnpicklingError("a storage type cannot be given a state")


class _DType:
    """What ``torch.<dtype>`` resolves to; becomes a NumPy dtype once loaded.

    Not a NumPy dtype during unpickling, because a pickle may apply BUILD
    (``__setstate__``) to the objects it holds, and NumPy's builtin dtypes
    are process-wide singletons.
    """

    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype

    def __setstate__(self, state):
        raise pickle.UnpicklingError("a dtype cannot be given a state")


class _Storage:
    """A storage named by a persistent id; ``data`` (1-D, native byte order) is filled after unpickling.

    A legacy view storage has ``root`` set and is ``root.data[offset:offset + numel]``.
    """

    __slots__ = ("key", "dtype", "numel", "data", "root", "offset")

    def __init__(self, key: str, dtype: np.dtype, numel: int, root: _Storage | None = None, offset: int = 0):
        self.key, self.dtype, self.numel, self.data = key, dtype, numel, None
        self.root, self.offset = root, offset

    def __setstate__(self, state):
        raise pickle.UnpicklingError("a storage cannot be given a state")


class _Tensor:
    """A tensor named in the pickle, made into a NumPy array once its storage is read."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, _Storage):
            raise pickle.UnpicklingError(f"a tensor is built on {type(storage).__name__}, not a storage")
        for what, value in (("offset", (offset,)), ("size", size), ("stride", stride)):
            if not isinstance(value, tuple) or not all(type(v) is int and v >= 0 for v in value):
                raise pickle.UnpicklingError(f"tensor {what} {value!r} is not a tuple of non-negative integers")
        if len(size) != len(stride):
            raise pickle.UnpicklingError(f"tensor size {size} and stride {stride} differ in length")
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __setstate__(self, state):
        raise pickle.UnpicklingError("a tensor cannot be given a state")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: records where the tensor's values are."""
    return _Tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_tensor(storage, storage_offset, size, stride):
    """Stand-in for ``torch._utils._rebuild_tensor`` (torch 0.3 files)."""
    return _Tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    """Stand-in for ``torch._utils._rebuild_parameter``: a parameter is just its tensor here."""
    if not isinstance(data, _Tensor):
        raise pickle.UnpicklingError(f"a parameter is built on {type(data).__name__}, not a tensor")
    return data


def _numpy_dtype(code: str) -> np.dtype:
    if code == "bfloat16":
        import ml_dtypes  # a JAX dependency; imported only when a file holds bfloat16

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(code)


def _allowed_global(module: str, name: str) -> Any:
    """The stand-in for an allow-listed global, or None."""
    if module == "torch._utils":
        return {"_rebuild_tensor_v2": _rebuild_tensor_v2, "_rebuild_tensor": _rebuild_tensor,
                "_rebuild_parameter": _rebuild_parameter}.get(name)
    if module == "torch" and name in _STORAGE_DTYPES:
        return _StorageType(_numpy_dtype(_STORAGE_DTYPES[name]))
    if module == "torch" and name in _TORCH_DTYPES:
        return _DType(_numpy_dtype(_TORCH_DTYPES[name]))
    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only `_allowed_global` names and collects storages.

    Args:
      file: the pickle stream.
      path: the checkpoint, for messages.
      storages: key -> `_Storage`, shared by every pickle of one file; None
        when the pickle must not reference storages (legacy header pickles).
    """

    def __init__(self, file, path: pathlib.Path, storages: dict[str, _Storage] | None):
        super().__init__(file, encoding="utf-8")
        self._path, self._storages = path, storages

    def find_class(self, module: str, name: str) -> Any:
        value = _allowed_global(module, name)
        if value is None:
            raise JaxstyleError(f"refusing to load {self._path}: it references {module}.{name}, "
                                "which is not a tensor type (the file may carry code)")
        return value

    def persistent_load(self, pid: Any) -> _Storage:
        if self._storages is None or not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            kind = repr(pid[0] if isinstance(pid, tuple) and pid else pid)
            kind = kind if len(kind) <= 40 else kind[:37] + "..."
            raise JaxstyleError(f"refusing to load {self._path}: it holds a persistent object {kind}, "
                                "not a tensor storage (a whole saved module?); save a state_dict instead")
        if len(pid) == 5:  # zip: ("storage", type, key, location, numel)
            (_, storage_type, key, _location, numel), view = pid, None
        elif len(pid) == 6:  # legacy: the same, then a view (key, offset, numel) or None
            _, storage_type, key, _location, numel, view = pid
        else:
            raise pickle.UnpicklingError(f"storage id {pid!r} has {len(pid)} fields, expected 5 or 6")
        if not isinstance(storage_type, _StorageType) or type(numel) is not int or numel < 0:
            raise pickle.UnpicklingError(f"storage id {pid!r} does not name a storage type and size")
        key = str(key)
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = _Storage(key, storage_type.dtype, numel)
        elif storage.dtype != storage_type.dtype:
            raise pickle.UnpicklingError(f"storage {key} is used as both {storage.dtype} and {storage_type.dtype}")
        if view is None:
            return storage
        view_key, offset, view_numel = view
        if type(offset) is not int or type(view_numel) is not int or offset < 0 or view_numel < 0:
            raise pickle.UnpicklingError(f"storage view {view!r} has a bad offset or size")
        return _Storage(str(view_key), storage.dtype, view_numel, root=storage, offset=offset)


def _unpickle(path: pathlib.Path, stream: io.BytesIO, storages: dict[str, _Storage] | None = None) -> Any:
    """The next pickle of ``stream``, parsed (not run) first, then unpickled by `_RestrictedUnpickler`."""
    start = stream.tell()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both warn about bad escapes in damaged STRING opcodes
        # The dry parse rejects lengths that run past the end of the file before
        # the unpickler allocates for them, and the buffer opcodes of protocol 5.
        for opcode, _, _ in pickletools.genops(stream):
            if opcode.name in _REFUSED_OPCODES:
                raise JaxstyleError(f"refusing to load {path}: its pickle uses {opcode.name}, "
                                    "which a torch.save checkpoint never does")
        stream.seek(start)
        return _RestrictedUnpickler(stream, path, storages).load()


def _load_legacy(path: pathlib.Path, data: bytes) -> Any:
    stream = io.BytesIO(data)
    try:
        magic = _unpickle(path, stream)
    except JaxstyleError:
        raise
    except Exception:
        magic = None
    if magic != MAGIC_NUMBER:
        raise JaxstyleError(f"{path} is not a PyTorch checkpoint (no torch.save magic number)")
    protocol = _unpickle(path, stream)
    if protocol != PROTOCOL_VERSION:
        raise JaxstyleError(f"{path} has legacy torch.save protocol {protocol!r}; expected {PROTOCOL_VERSION}")
    _unpickle(path, stream)  # system information; storages are little-endian whatever it says
    storages: dict[str, _Storage] = {}
    obj = _unpickle(path, stream, storages)
    keys = _unpickle(path, stream)
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
        raise JaxstyleError(f"{path} is corrupt: its storage list does not match the storages its tensors use")
    view = memoryview(data)
    for key in keys:
        storage = storages[str(key)]
        header = stream.read(8)
        if len(header) < 8:
            raise JaxstyleError(f"{path} is truncated: storage {key} is missing")
        count = int.from_bytes(header, "little")
        nbytes = count * storage.dtype.itemsize
        start = stream.tell()
        if start + nbytes > len(data):
            raise JaxstyleError(f"{path} is truncated: storage {key} needs {nbytes} bytes, "
                                f"{len(data) - start} are left")
        storage.data = _elements(view[start:start + nbytes], storage.dtype, count, little_endian=True)
        stream.seek(start + nbytes)
    return _materialise(path, obj)


def _load_zip(path: pathlib.Path, data: bytes) -> Any:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise JaxstyleError(f"{path} is a zip archive without a single <archive>/data.pkl: "
                                "not a torch.save checkpoint (a TorchScript model?)")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in archive.namelist():
            byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace")
            if byteorder not in ("little", "big"):
                raise JaxstyleError(f"{path} records an unknown byte order {byteorder!r}")
        storages: dict[str, _Storage] = {}
        obj = _unpickle(path, io.BytesIO(archive.read(pickles[0])), storages)
        for key, storage in storages.items():
            name = f"{prefix}data/{key}"
            try:
                info = archive.getinfo(name)
            except KeyError:
                raise JaxstyleError(f"{path} is corrupt: storage record {name} is missing") from None
            nbytes = storage.numel * storage.dtype.itemsize
            if info.file_size < nbytes:  # checked before reading, and again by zipfile's CRC
                raise JaxstyleError(f"{path} is corrupt: storage {key} has {info.file_size} bytes, "
                                    f"expected {nbytes}")
            raw = archive.read(info)
            storage.data = _elements(raw, storage.dtype, storage.numel, little_endian=byteorder == "little")
    return _materialise(path, obj)


def _elements(raw, dtype: np.dtype, count: int, *, little_endian: bool) -> np.ndarray:
    """``count`` elements of ``dtype`` stored in ``raw`` in the given byte order, in native order."""
    elements = np.frombuffer(raw, dtype, count)
    if little_endian != (sys.byteorder == "little") and dtype.itemsize > 1:
        # Swapped through unsigned integers: ml_dtypes' bfloat16 has no byte order of its own.
        elements = elements.view(f"u{dtype.itemsize}").byteswap().view(dtype)
    return elements


def _storage_data(path: pathlib.Path, storage: _Storage) -> np.ndarray:
    """The elements of a storage, resolving a legacy view into its root."""
    if storage.root is None:
        if storage.data is None:
            raise JaxstyleError(f"{path} is corrupt: storage {storage.key} has no data")
        return storage.data
    root = _storage_data(path, storage.root)
    if storage.offset + storage.numel > len(root):
        raise JaxstyleError(f"{path} is corrupt: a view of storage {storage.root.key} reaches element "
                            f"{storage.offset + storage.numel} of {len(root)}")
    return root[storage.offset:storage.offset + storage.numel]


def _tensor_array(path: pathlib.Path, tensor: _Tensor) -> np.ndarray:
    """A fresh, native-endian NumPy array with the tensor's values, after checking its bounds."""
    data = _storage_data(path, tensor.storage)
    count = math.prod(tensor.size)
    if count == 0:
        return np.zeros(tensor.size, data.dtype)
    last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
    if last >= len(data):
        # Checked because as_strided would otherwise read outside the file's bytes.
        raise JaxstyleError(f"{path} is corrupt: a tensor of size {tensor.size}, stride {tensor.stride} "
                            f"and offset {tensor.offset} reaches element {last} of a storage of {len(data)}")
    if count > max(len(data), _MAX_BROADCAST_ELEMENTS):
        raise JaxstyleError(f"{path} holds a broadcast tensor of size {tensor.size} ({count} elements) "
                            f"over a storage of {len(data)}; refusing to expand it")
    itemsize = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(data[tensor.offset:], shape=tensor.size,
                                           strides=[s * itemsize for s in tensor.stride], writeable=False)
    return np.array(view, order="C")


def _materialise(path: pathlib.Path, obj: Any) -> Any:
    """Replace every `_Tensor`, `_Storage` and `_DType` in the loaded containers by NumPy arrays."""
    done: dict[int, Any] = {}

    def convert(x):
        if id(x) in done:
            return done[id(x)]
        if isinstance(x, _Tensor):
            done[id(x)] = _tensor_array(path, x)
        elif isinstance(x, _Storage):
            done[id(x)] = _storage_data(path, x).copy()
        elif isinstance(x, _DType):
            done[id(x)] = x.dtype
        elif isinstance(x, dict):  # in place, so that shared and self-referencing dicts survive
            done[id(x)] = x
            for k in x:
                x[k] = convert(x[k])
        elif isinstance(x, list):
            done[id(x)] = x
            x[:] = [convert(v) for v in x]
        elif isinstance(x, tuple):
            done[id(x)] = tuple(convert(v) for v in x)
        elif isinstance(x, (set, frozenset)):
            if any(isinstance(v, (_Tensor, _Storage)) for v in x):
                raise JaxstyleError(f"{path} holds tensors in a set, which this reader does not support")
            done[id(x)] = x
        else:
            done[id(x)] = x
        return done[id(x)]

    return convert(obj)
