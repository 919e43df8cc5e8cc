"""jaxstyle: neural style transfer (Gatys, Ecker & Bethge) in JAX and Flax.

The package, one file per idea:

- `jaxstyle.vgg`: the VGG network as a Flax module returning named activations.
- `jaxstyle.losses`: the Gram matrix, content, style and total-variation losses.
- `jaxstyle.optimize`: `stylize`, optax updating the pixels.
- `jaxstyle.config`: `StylizeConfig`, every setting and its default.
- `jaxstyle.weights`: the weights file format, its location, fetching the real VGG19.
- `jaxstyle.torchfile`, `jaxstyle.convert`: reading other weight files safely.
- `jaxstyle.images`: reading and writing images.
- `jaxstyle.cli`: the `jaxstyle` command.

Importing `jaxstyle` imports nothing heavy; import the submodules you need.
"""

__version__ = "0.1.0"
