"""Convert a torchvision VGG16/VGG19 state dict into a jaxstyle weights file.

    python scripts/convert_torchvision.py vgg19-dcbb9e9d.pth vgg19_torchvision.npz

Reads zip and legacy ``torch.save`` files without torch and without running their
code; ``classifier.*`` is ignored. The result expects torchvision preprocessing.
"""

import argparse
import sys

from jaxstyle import convert
from jaxstyle.errors import JaxstyleError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="convert_torchvision", description=__doc__.splitlines()[0])
    parser.add_argument("input", help="torchvision VGG state dict (.pth)")
    parser.add_argument("output", help="jaxstyle weights file to write (.npz)")
    args = parser.parse_args(argv)
    try:
        meta = convert.convert("torchvision", args.input, args.output)
    except JaxstyleError as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 1
    print(convert.summary(args.output, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
