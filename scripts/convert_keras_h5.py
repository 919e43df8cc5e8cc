"""Convert Keras VGG16/VGG19 HDF5 weights into a jaxstyle weights file.

    python scripts/convert_keras_h5.py vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 vgg19.npz

Reads Keras 1/2 ``.h5`` (weights or whole model) and Keras 3 ``.weights.h5``;
the classifier layers are ignored. The result expects Caffe preprocessing.
"""

import argparse
import sys

from jaxstyle import convert
from jaxstyle.errors import JaxstyleError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="convert_keras_h5", description=__doc__.splitlines()[0])
    parser.add_argument("input", help="Keras .h5 or .weights.h5 file")
    parser.add_argument("output", help="jaxstyle weights file to write (.npz)")
    args = parser.parse_args(argv)
    try:
        meta = convert.convert("keras-h5", args.input, args.output)
    except JaxstyleError as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 1
    print(convert.summary(args.output, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
