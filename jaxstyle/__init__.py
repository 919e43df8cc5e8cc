"""jaxstyle: neural style transfer (Gatys, Ecker & Bethge) in JAX and Flax.

The package, one file per idea:

- `jaxstyle.vgg`: the VGG network as a Flax module returning named activations.
- `jaxstyle.losses`: the Gram matrix, content, style and total-variation losses.
- `jaxstyle.step`: one step as pure functions: targets, objective, a chunk of steps, optimiser state.
- `jaxstyle.optimize`: the one driver (`run`, `stylize`): scales, chunks, progress.
- `jaxstyle.sharding`: how a chunk is compiled: one device, the batch or the rows over devices.
- `jaxstyle.batch`: many photos, or a grid of settings, as items of one program.
- `jaxstyle.strips`: the network over strips of an image.
- `jaxstyle.config`: `StylizeConfig` and `RunOptions`, every setting and option and its default.
- `jaxstyle.plan`, `jaxstyle.memory`: the arithmetic of a run, without JAX.
- `jaxstyle.weights`: the weights file format and its location.
- `jaxstyle.torchfile`, `jaxstyle.convert`: reading other weight files safely; fetching the real VGG19.
- `jaxstyle.images`, `jaxstyle.batch_io`: reading and writing images; input folders, buckets, sheets.
- `jaxstyle.checkpoint`: checkpoint files for resuming.
- `jaxstyle.video`, `jaxstyle.temporal`, `jaxstyle.flow`, `jaxstyle.video_io`: video without flicker.
- `jaxstyle.live`: the live view of a run in the browser (``--serve``).
- `jaxstyle.transform`, `jaxstyle.feedforward`, `jaxstyle.train_data`, `jaxstyle.model_file`: fast style,
  a network trained per style that paints a photo in one pass.
- `jaxstyle.outputs`, `jaxstyle.report`, `jaxstyle.commands`, `jaxstyle.cli`: the `jaxstyle` command.

Importing `jaxstyle` imports nothing heavy; import the submodules you need.
"""

__version__ = "0.1.0"
