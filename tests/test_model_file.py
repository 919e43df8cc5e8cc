"""`jaxstyle.model_file`: a saved network loads back bit for bit, and a damaged or foreign file is refused.

Every refusal is one `UsageError` line that names the file. The files that
are refused are built here from the format's description (``_pack``), not
with `model_file`'s own code, so these tests pin the format too.
"""

from __future__ import annotations

import hashlib
import json
import pickle

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from jaxstyle import model_file, weights
from jaxstyle.errors import JaxstyleError, UsageError

SHA_A, SHA_B = hashlib.sha256(b"style a").hexdigest(), hashlib.sha256(b"style b").hexdigest()
META = {"architecture": "johnson2016",
        "styles": [{"name": "van_gogh.png", "sha256": SHA_A}, {"name": "monet.jpg", "sha256": SHA_B}],
        "settings": {"style_weight": 1e5, "content_weight": 1.0, "size": 256, "style_layers": ["relu1_1", "relu2_1"]},
        "training": {"date": "2025-01-02T03:04:05Z", "final_loss": 1234.56789, "seconds": 3600.5,
                     "steps": 40000, "batch_size": 4, "size": 256, "loss_every": 100},
        "jaxstyle": "0.1.0"}


def _params(seed: int = 0) -> dict:
    """A small network's tree, three levels deep, with a -0.0 and a subnormal so that bit-exactness means something."""
    rng = np.random.default_rng(seed)

    def a(*shape):
        return rng.normal(0, 0.1, shape).astype(np.float32)

    params = {"conv_in": {"kernel": a(9, 9, 3, 4), "bias": a(4)},
              "in_1": {"scale": a(2, 4), "bias": a(2, 4)},
              "res0": {"conv1": {"kernel": a(3, 3, 4, 4), "bias": a(4)}, "in1": {"scale": a(2, 4), "bias": a(2, 4)}},
              "scalar": {"gain": np.float32(0.5) * np.ones((), np.float32)}}
    params["conv_in"]["bias"][:2] = [-0.0, np.float32(1e-42)]
    return params


def _shapes(params: dict) -> dict:
    return {k: a.shape for k, a in model_file.flatten(params).items()}


def _bits(tree) -> dict:
    return {k: (a.dtype.str, a.shape, a.tobytes()) for k, a in model_file.flatten(tree).items()}


def _array(a: np.ndarray, dtype: str = "float32", shape=None) -> msgpack.ExtType:
    """An array as the format stores it: extension type 1 holding [shape, dtype, bytes]."""
    return msgpack.ExtType(1, msgpack.packb([list(a.shape if shape is None else shape), dtype, a.tobytes()]))


def _pack(network=None, metadata=META, *, leaves=None, **fields) -> bytes:
    """A model file's bytes from the format's description.

    ``leaves`` replaces arrays (flat keys), ``fields`` replaces top-level fields (`_DROP` removes one).
    """
    flat = model_file.flatten(_params() if network is None else network)
    text = json.dumps(metadata)
    tree = model_file.unflatten({k: _array(a) for k, a in flat.items()} | (leaves or {}))
    top = {"format": model_file.FORMAT, "version": 1, "meta": text,
           "meta_sha256": hashlib.sha256(text.encode()).hexdigest(),
           "params_sha256": weights.params_sha256(flat), "params": tree}
    top.update(fields)
    return msgpack.packb({k: v for k, v in top.items() if v is not _DROP}, use_bin_type=True)


_DROP = object()


@pytest.fixture
def saved(tmp_path):
    """``(path, params, bytes)`` of a model file written by `model_file.save`."""
    params = _params()
    path = tmp_path / "van_gogh.msgpack"
    model_file.save(path, params, META)
    return path, params, path.read_bytes()


def _refused(path, match: str, **kwargs) -> str:
    """Load ``path``, expecting one UsageError line that names the file and matches ``match``; return the line."""
    with pytest.raises(UsageError, match=match) as info:
        model_file.load(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert str(path) in message
    return message


def test_round_trip_is_bit_exact(saved):
    path, params, data = saved
    loaded, meta = model_file.load(path)
    assert _bits(loaded) == _bits(params)  # dtype, shape and every byte, -0.0 and the subnormal included
    assert meta == META
    assert list(model_file.flatten(loaded)) == list(model_file.flatten(params))  # the same order
    assert all(a.flags.writeable and a.dtype == np.float32 for a in model_file.flatten(loaded).values())
    assert data == _pack(params)  # the bytes are the format's description, field for field
    assert data[1:].startswith(msgpack.packb("format") + msgpack.packb(model_file.FORMAT))


def test_expected_shapes_that_fit_load(saved):
    path, params, _ = saved
    model_file.load(path, expected_shapes=_shapes(params))
    seen = []
    model_file.load(path, expected_shapes=lambda meta: seen.append(meta) or _shapes(params))
    assert seen == [META]


def test_jax_arrays_save_the_same_file(tmp_path, saved):
    import jax.numpy as jnp

    path, params, data = saved
    other = tmp_path / "jax.msgpack"
    model_file.save(other, {k: {n: jnp.asarray(a) for n, a in d.items()} if k != "res0" else d
                            for k, d in params.items()}, META)
    assert other.read_bytes() == data


def test_flax_serialization_reads_the_file(saved):
    from flax import serialization

    path, params, data = saved
    restored = serialization.msgpack_restore(data)
    assert _bits(restored["params"]) == _bits(params)
    assert json.loads(restored["meta"]) == META


def test_describe(saved):
    path, params, data = saved
    lines = model_file.describe(path)
    text = "\n".join(lines)
    count = sum(a.size for a in model_file.flatten(params).values())
    assert f"({len(data):,} bytes, jaxstyle-transform-network version 1)" in lines[0]
    assert lines[1].startswith(f"parameters: {count:,} in 9 arrays (SHA-256 ")
    assert "architecture: johnson2016" in lines
    assert f"style 1: van_gogh.png (SHA-256 {SHA_A[:16]}...)" in lines
    assert f"style 2: monet.jpg (SHA-256 {SHA_B[:16]}...)" in lines
    assert "jaxstyle: 0.1.0" in lines
    training = lines[lines.index("training:") + 1:]
    assert training == ["  steps: 40000", "  batch_size: 4", "  size: 256", "  final_loss: 1234.57",
                        "  seconds: 3600.5", "  date: 2025-01-02T03:04:05Z", "  loss_every: 100"]
    settings_ = lines[lines.index("settings:") + 1:lines.index("training:")]
    assert settings_ == ["  content_weight: 1", "  size: 256", '  style_layers: ["relu1_1", "relu2_1"]',
                         "  style_weight: 100000"]
    assert model_file.describe(META) == lines[2:]  # the metadata alone: no file, no parameters
    assert "\x1b" not in text


def test_describe_escapes_what_is_not_printable():
    meta = {**META, "styles": [{"name": "evil\x1b[2J\n.png", "sha256": SHA_A}]}
    lines = model_file.describe(meta)
    assert all(line.isprintable() for line in lines)
    assert "style 1: 'evil\\x1b[2J\\n.png'" in lines[1]


@pytest.mark.parametrize("change, match", [
    (lambda p: {**p, "conv_in": {**p["conv_in"], "bias": p["conv_in"]["bias"].astype(np.float16)}},
     r"float32 parameters only; not float32: conv_in/bias \(float16\)"),
    (lambda p: {**p, "in_1": {"scale": np.full((2, 4), np.nan, np.float32)}}, r"NaN or Inf in in_1/scale"),
    (lambda p: {**p, "a/b": {"c": np.ones(1, np.float32)}}, r"the key 'a/b' in the parameters is not"),
    (lambda p: {**p, "empty": {}}, r"empty is an empty map"),
    (lambda p: {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": np.ones(1, np.float32)}}}}}}}}},
     r"nest deeper than 8 levels"),
])
def test_save_refuses_parameters_a_file_cannot_hold(tmp_path, change, match):
    with pytest.raises(JaxstyleError, match=match):
        model_file.save(tmp_path / "m.msgpack", change(_params()), META)
    assert not (tmp_path / "m.msgpack").exists()


@pytest.mark.parametrize("meta, match", [
    ({k: v for k, v in META.items() if k != "training"}, r"metadata lacks training"),
    ({**META, "styles": [{"name": "a.png", "sha256": "ABC"}]}, r"has styles .*64 hex digits"),
    ({**META, "styles": []}, r"has styles \[\]"),
    ({**META, "architecture": 3}, r"has architecture 3, not a non-empty string"),
    ({**META, "settings": [1]}, r"has settings \[1\], not an object"),
    ({**META, "training": {"final_loss": float("nan")}}, r"metadata is not JSON"),
    ({**META, "training": {"when": object()}}, r"metadata is not JSON"),
])
def test_save_refuses_metadata_that_does_not_fit(tmp_path, meta, match):
    with pytest.raises(JaxstyleError, match=match) as info:
        model_file.save(tmp_path / "m.msgpack", _params(), meta)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "m.msgpack").exists()


def test_save_refuses_a_directory_and_replaces_a_file(tmp_path):
    with pytest.raises(UsageError, match=r"it is a directory; give a file name, such as .*model\.msgpack"):
        model_file.save(tmp_path, _params(), META)
    path = tmp_path / "sub" / "m.msgpack"
    model_file.save(path, _params(1), META)
    model_file.save(path, _params(2), META)
    assert _bits(model_file.load(path)[0]) == _bits(_params(2))
    assert [p.name for p in path.parent.iterdir()] == ["m.msgpack"]  # no temporary file left


def test_missing_empty_directory_and_oversized_files_are_refused(tmp_path):
    _refused(tmp_path / "none.msgpack", r"^no model file at .*; check the path, or train one with `jaxstyle train`$")
    _refused(tmp_path, r"is a directory; give the model file")
    (tmp_path / "empty.msgpack").write_bytes(b"")
    _refused(tmp_path / "empty.msgpack", r"is empty, not a jaxstyle model file")
    huge = tmp_path / "huge.msgpack"
    with open(huge, "wb") as f:  # sparse: no disk is used, and nothing is read
        f.truncate(model_file.MAX_BYTES + 1)
    _refused(huge, r"2,147,483,649 bytes, more than a model file holds")


def test_a_pickle_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")

    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"model{protocol}.msgpack"
        path.write_bytes(pickle.dumps(Payload(), protocol=protocol))
        message = _refused(path, r"not a jaxstyle model file")
        if protocol >= 2:
            assert "a Python pickle (never unpickled" in message
        assert not marker.exists()
    pickle.loads((tmp_path / "model2.msgpack").read_bytes()).close()  # the payload does work when unpickled
    assert marker.exists()


def test_other_kinds_of_files_are_refused(tmp_path):
    flat = {k: np.ones(s, np.float32) for k, s in weights.expected_shapes("tiny").items()}
    weights.save(tmp_path / "vgg.npz", flat, architecture="tiny", preprocessing="caffe", source="test")
    _refused(tmp_path / "vgg.npz", r"is a zip archive \(a NumPy \.npz, such as a jaxstyle weights file")
    Image.new("RGB", (4, 4)).save(tmp_path / "image.png")
    _refused(tmp_path / "image.png", r"is a PNG image, not a jaxstyle model file; give a model file that")
    np.save(tmp_path / "a.npy", np.ones(3, np.float32))
    _refused(tmp_path / "a.npy", r"is a NumPy \.npy array")
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (tmp_path / "m.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    _refused(tmp_path / "m.safetensors", r"is a safetensors file")
    for i, data in enumerate([b"hello, world\n", msgpack.packb([1, 2, 3]), msgpack.packb({"a": 1}), b"\xc1"]):
        (tmp_path / f"other{i}").write_bytes(data)
        _refused(tmp_path / f"other{i}", r"is not a jaxstyle model file; give a model file that `jaxstyle train`")


def test_another_format_and_a_newer_version_are_refused(tmp_path):
    path = tmp_path / "m.msgpack"
    path.write_bytes(_pack(format="jaxstyle-other-network"))
    _refused(path, r"is not a jaxstyle model file \(its format is 'jaxstyle-other-network', "
                   r"expected 'jaxstyle-transform-network'\)")
    path.write_bytes(_pack(version=2, extra="a field of version 2"))
    _refused(path, r"has version 2, newer than this jaxstyle reads \(1\); upgrade jaxstyle to use it$")


def test_truncated_files_are_refused(saved):
    path, _, data = saved
    for end in sorted({1, 2, 5, 9, 20, 40, 100, 200, len(data) // 2, len(data) - 5, len(data) - 1,
                       *range(1, len(data), 97)}):
        path.write_bytes(data[:end])
        _refused(path, r"is damaged \(truncated: it ends inside its data\)|is not a jaxstyle model file")
    path.write_bytes(data[:len(data) - 1])
    _refused(path, r"^model file .* is damaged \(truncated: it ends inside its data\); copy it again, "
                   r"or train it again with `jaxstyle train`$")


def test_trailing_bytes_are_refused(saved):
    path, _, data = saved
    path.write_bytes(data + b"\0garbage")
    _refused(path, r"is damaged \(8 bytes of trailing data after its end\)")


def test_flipped_bytes_are_refused(saved):
    path, _, data = saved
    at_array = data.index(np.float32(1e-42).tobytes())  # the subnormal in conv_in/bias
    at_meta = data.index(b"1234.56789") + 1
    for at, match in ((at_array, "its parameters do not match their SHA-256"),
                      (at_array + 3, "its parameters do not match their SHA-256"),
                      (at_meta, "its metadata do not match their SHA-256")):
        path.write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:])
        _refused(path, match)


@pytest.mark.parametrize("fields, match", [
    (dict(version=0), r"its version is 0, expected 1"),
    (dict(version="1"), r"its version is '1', expected 1"),
    (dict(version=True), r"its version is True, expected 1"),
    (dict(meta_sha256=_DROP), r"it lacks meta_sha256"),
    (dict(signed_by="me"), r"it has the unexpected field signed_by"),
    (dict(meta=b"{}"), r"not the MessagePack of a model file: 2 exceeds max_bin_len"),
    (dict(meta=7), r"its meta is a int, not JSON text"),
    (dict(meta_sha256="0" * 64), r"its metadata do not match their SHA-256"),
    (dict(params_sha256="0" * 64), r"its parameters do not match their SHA-256"),
    (dict(params=[1, 2]), r"1 exceeds max_array_len\(0\)|2 exceeds max_array_len"),
    (dict(params=_array(np.ones(2, np.float32))), r"the parameters are not a map of names"),
    (dict(params={"a": {}}), r"a is an empty map"),
    (dict(params={"a": 1.5}), r"a is a float, not a map or an array"),
    (dict(params={"a": msgpack.ExtType(5, b"x")}), r"a MessagePack extension of type 5, not an array \(type 1\)"),
    (dict(params={"a": msgpack.Timestamp(1)}), r"a is a Timestamp, not a map or an array"),
    (dict(params={"a": {"b": "text"}}), r"a/b is a str, not a map or an array"),
    (dict(params={"a\nb": _array(np.ones(2, np.float32))}), r"the key 'a\\nb' in the parameters is not"),
    (dict(params={"": _array(np.ones(2, np.float32))}), r"the key '' in the parameters is not a non-empty"),
    (dict(params={f"k{i}": {} for i in range(1025)}), r"1025 exceeds max_map_len\(1024\)"),
])
def test_damaged_fields_are_refused(tmp_path, fields, match):
    path = tmp_path / "m.msgpack"
    path.write_bytes(_pack(**fields))
    message = _refused(path, match)
    assert message.startswith(f"model file {path} is damaged (")


def test_metadata_that_does_not_fit_is_refused(tmp_path):
    path = tmp_path / "m.msgpack"
    for meta, match in (({k: v for k, v in META.items() if k not in ("settings", "training")},
                         r"its metadata lacks settings, training"),
                        ({**META, "styles": [{"name": "a.png", "sha256": "0" * 63}]}, r"its metadata has styles"),
                        ([1, 2], r"its metadata is a list, not a JSON object")):
        path.write_bytes(_pack(metadata=meta))
        _refused(path, match)
    path.write_bytes(_pack(meta=_DROP))
    _refused(path, r"\(it lacks meta\)")
    for text, match in (('{"architecture": NaN}', r"its metadata are not JSON \(NaN is not JSON\)"),
                        ("{" * 100_000, r"its metadata are not JSON"),
                        ("x" * (model_file.MAX_META_BYTES + 1), r"exceeds max_str_len")):
        path.write_bytes(_pack(meta=text, meta_sha256=hashlib.sha256(text.encode()).hexdigest()))
        _refused(path, match)


@pytest.mark.parametrize("leaf, match", [
    (_array(np.ones(4, np.float16), "float16"), r"conv_in/bias is 'float16', not float32"),
    (_array(np.ones(4, np.float64), "float64"), r"conv_in/bias is 'float64', not float32"),
    (_array(np.ones(4, np.float32), "bfloat16"), r"conv_in/bias is 'bfloat16', not float32"),
    (_array(np.ones(4, np.float32), shape=[5]), r"conv_in/bias of shape \(5,\) holds 16 bytes, not 20"),
    (_array(np.ones(4, np.float32), shape=[2**40, 2**40]),  # absurd: claims 2**82 elements, allocates nothing
     r"conv_in/bias of shape \(1099511627776, 1099511627776\) holds 16 bytes, not 4,835,703,278,458,516,698,824,704"),
    (_array(np.ones(4, np.float32), shape=[-1]), r"conv_in/bias has the shape \[-1\]"),
    (_array(np.ones(4, np.float32), shape=[1] * 9), r"conv_in/bias is not an array's MessagePack"),
    (msgpack.ExtType(1, b"\x93\x91\x04\xa7float32\xa3abc"), r"conv_in/bias holds a str, not bytes"),
    (msgpack.ExtType(1, msgpack.packb([[4], "float32", b"x" * 16, 0])), r"conv_in/bias is not \[shape, dtype, bytes\]"),
    (msgpack.ExtType(1, msgpack.packb([[4], "float32", b"x" * 16])[:-1]), r"conv_in/bias is not an array's"),
    (msgpack.ExtType(1, msgpack.packb([[4], "float32", msgpack.ExtType(1, b"x" * 16)])),
     r"conv_in/bias is not an array's MessagePack"),
])
def test_arrays_that_do_not_fit_are_refused(tmp_path, leaf, match):
    path = tmp_path / "m.msgpack"
    path.write_bytes(_pack(leaves={"conv_in/bias": leaf}))
    _refused(path, match)


def test_nan_is_refused_even_with_a_matching_sha256(tmp_path):
    params = _params()
    params["res0"]["conv1"]["bias"][1] = np.inf
    path = tmp_path / "m.msgpack"
    path.write_bytes(_pack(params))
    _refused(path, r"damaged \(NaN or Inf in res0/conv1/bias\)")


def test_nesting_repeated_keys_and_other_keys_are_refused(tmp_path):
    path = tmp_path / "m.msgpack"
    deep = _array(np.ones(1, np.float32))
    for _ in range(9):
        deep = {"d": deep}
    path.write_bytes(_pack(params=deep))
    _refused(path, r"the parameters nest deeper than 8 levels")
    path.write_bytes(b"\x82" + msgpack.packb("format") + msgpack.packb(model_file.FORMAT) + msgpack.packb("params")
                     + b"\x81\xa1a" * 5000 + b"\xc0")  # maps deeper than msgpack's own stack
    _refused(path, r"is damaged \(it nests too deeply\)")
    path.write_bytes(b"\x82" + msgpack.packb("format") + msgpack.packb(model_file.FORMAT) + b"\xc1")  # 0xc1: never used
    _refused(path, r"is damaged \(a byte begins no MessagePack value\)")
    data = _pack(params={"a": _array(np.ones(2, np.float32)), "b": _array(np.zeros(2, np.float32))})
    path.write_bytes(data.replace(b"\xa1b\xc7", b"\xa1a\xc7"))  # the key "b" renamed "a": a map with "a" twice
    _refused(path, r"damaged \(a map repeats a key\)")
    path.write_bytes(_pack().replace(b"\xa6params\x84", b"\xc4\x06params\x84"))  # the key "params" as binary
    _refused(path, r"max_bin_len")
    path.write_bytes(_pack(params={f"m{i}": {f"k{j}": 0 for j in range(1024)} for i in range(64)}))
    _refused(path, r"damaged \(its maps hold more than 65,536 keys\)")
    path.write_bytes(msgpack.packb({"format": model_file.FORMAT, 1: 2}))
    _refused(path, r"damaged \(a map's key is not a string\)")


def test_expected_shapes_mismatch_lists_every_key(saved):
    path, params, _ = saved
    shapes = _shapes(params)
    shapes["res0/conv1/kernel"] = (3, 3, 4, 8)
    shapes["res1/conv1/kernel"] = (3, 3, 4, 4)
    del shapes["scalar/gain"]
    message = _refused(path, r"do not fit johnson2016: ", expected_shapes=shapes)
    assert message == (f"the parameters in model file {path} do not fit johnson2016: missing res1/conv1/kernel; "
                       "unexpected scalar/gain; wrong shape res0/conv1/kernel (3, 3, 4, 4) (expected (3, 3, 4, 8)); "
                       "train it again with `jaxstyle train`")


_MODEL = _pack({"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3) / 7}, "b": np.float32([-0.0, 3e-40])},
               {**META, "training": {"steps": 3}})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.sampled_from(["flip", "set", "delete", "insert", "truncate"]),
                                st.integers(0, len(_MODEL) - 1), st.integers(0, 255), st.integers(1, 16)),
                      min_size=1, max_size=4))
def test_any_corruption_loads_the_same_data_or_is_refused(tmp_path, edits):
    data = bytearray(_MODEL)
    for op, at, value, n in edits:
        at = min(at, len(data))
        if op == "flip":
            data[at:at + 1] = bytes([data[at] ^ (1 << value % 8)]) if at < len(data) else b""
        elif op == "set":
            data[at:at + 1] = bytes([value])
        elif op == "delete":
            del data[at:at + n]
        elif op == "insert":
            data[at:at] = bytes([value]) * n
        else:
            del data[at:]
    path = tmp_path / "fuzz.msgpack"
    path.write_bytes(bytes(data))
    try:
        params, meta = model_file.load(path)
    except UsageError as e:
        assert "\n" not in str(e)
        return
    path.write_bytes(_MODEL)
    expected, expected_meta = model_file.load(path)
    assert _bits(params) == _bits(expected) and meta == expected_meta
