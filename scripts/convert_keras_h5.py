"""Convert Keras VGG16/VGG19 HDF5 weights into a jaxstyle weights file.

    python scripts/convert_keras_h5.py vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 vgg19.npz

Reads Keras 1/2 ``.h5`` (weights or whole model) and Keras 3 ``.weights.h5``;
the classifier layers are ignored. The result expects Caffe preprocessing.
"""

import sys

from jaxstyle import convert

if __name__ == "__main__":
    sys.exit(convert.script_main("keras-h5", "Keras .h5 or .weights.h5 file", __doc__.splitlines()[0]))
