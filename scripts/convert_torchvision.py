"""Convert a torchvision VGG16/VGG19 state dict into a jaxstyle weights file.

    python scripts/convert_torchvision.py vgg19-dcbb9e9d.pth vgg19_torchvision.npz

Reads zip and legacy ``torch.save`` files without torch and without running their
code; ``classifier.*`` is ignored. The result expects torchvision preprocessing.
"""

import sys

from jaxstyle import convert

if __name__ == "__main__":
    sys.exit(convert.script_main("torchvision", "torchvision VGG state dict (.pth)", __doc__.splitlines()[0]))
