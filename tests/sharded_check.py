"""Sharded runs against unsharded ones, on fake CPU devices; run by tests/test_batch.py in a subprocess.

The number of devices is fixed when JAX starts, so this runs as its own
process with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` set
before JAX is imported:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/sharded_check.py

Each check compares with NumPy (``assert_allclose``) at a tolerance measured
for the problem (`tolerance.rounding_atol`: sharding changes only the order of
float32 sums, and the optimisation carries that as far as it carries a 1e-6
change of its start), and records facts about the arrays' shardings; the
process prints them as one JSON object on its last line and exits non-zero if
a check fails.
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np
from tolerance import rounding_atol

from jaxstyle import batch, optimize, plan, sharding, step, vgg, weights
from jaxstyle.config import StylizeConfig



def _network() -> optimize.Network:
    params = vgg.init_params("tiny", jax.random.key(0))
    keys = iter(jax.random.split(jax.random.key(1), 100))
    params = {n: {**p, "bias": 0.1 * jax.random.normal(next(keys), p["bias"].shape)} for n, p in params.items()}
    return optimize.Network(weights.model_for({"architecture": "tiny", "preprocessing": "caffe"}), params)


def _photo(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x / (width - 1), y / (height - 1), 0.5 + 0.3 * np.sin(x / 5.0) * np.cos(y / 4.0)], -1)
    return np.clip(image + np.random.default_rng(3).normal(0, 0.05, image.shape), 0, 1).astype(np.float32)


def _spec(array: jax.Array) -> dict:
    s = array.sharding
    return {"spec": [a for a in s.spec], "devices": len(s.device_set),
            "shard_shapes": sorted({tuple(x.data.shape) for x in array.addressable_shards})}


def check_batch(network, contents, style, facts):
    """A batch of 6 (padded to 8) over 4 devices equals the same batch on 1 device."""
    cfg = StylizeConfig(size=32, steps=12, init="noise")
    seen = []
    sharded = batch.stylize_batch(contents, style, network, cfg, seeds=range(len(contents)),
                                  callback=lambda p: seen.append(p.images))
    single = batch.stylize_batch(contents, style, network, cfg, seeds=range(len(contents)),
                                 layout=sharding.batch(jax.local_devices()[:1]))
    for i, (a, b) in enumerate(zip(sharded, single)):
        start = np.asarray(step.initial_image("noise", b, i))
        atol = rounding_atol(lambda init: optimize.stylize(contents[i], style, network, cfg, init=init), start)
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)
    facts["batch"] = _spec(seen[-1])


def check_sweep(network, content, style, facts):
    """A sweep of 4 points over 4 devices equals the same sweep on 1 device."""
    cfg = StylizeConfig(size=32, steps=12)
    grid = {"style_weight": [1.0, 100.0], "tv_weight": [0.0, 5.0]}
    seen = []
    sharded = batch.sweep(content, style, network, cfg, grid=grid, callback=lambda p: seen.append(p.images))
    single = batch.sweep(content, style, network, cfg, grid=grid, layout=sharding.batch(jax.local_devices()[:1]))
    start = np.asarray(step.resize(content, plan.output_shape(content.shape, 32)))
    for (pa, a), (pb, b) in zip(sharded, single):
        assert pa == pb
        atol = rounding_atol(lambda init: optimize.stylize(content, style, network, cfg.replace(**pa), init=init),
                             start)
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)
    facts["sweep"] = _spec(seen[-1])


def check_video(network, content, style, facts):
    """A window of 6 video frames (padded to 8) over 4 devices, in 3 passes, equals the same on 1 device."""
    from jaxstyle import flow, video
    from jaxstyle.config import VideoConfig

    cfg, settings = StylizeConfig(size=48, steps=12), VideoConfig(mode="multipass", passes=3, window=6)
    frames = [np.ascontiguousarray(content[2 * i:2 * i + 40]) for i in range(6)]  # 48x40 crops of 48x64, moving up
    flows = flow.clip_flows(frames)
    seen = []

    def run(stack, layout=None, callback=None):
        return np.stack(video.stylize_clip(list(stack), [style], network, cfg, settings, flows=flows, layout=layout,
                                           callback=callback))

    sharded = run(np.stack(frames), callback=lambda p: seen.append(p.images))
    single = run(np.stack(frames), layout=sharding.batch(jax.local_devices()[:1]))
    atol = rounding_atol(lambda stack: run(stack, layout=sharding.batch(jax.local_devices()[:1])), np.stack(frames))
    np.testing.assert_allclose(sharded, single, rtol=0, atol=atol)
    facts["video"] = {**_spec(seen[-1]), "max_abs_diff": float(np.abs(sharded - single).max()), "atol": atol}


def check_rows(network, content, style, facts):
    """One image split by rows over 4 devices equals the unsharded run; activations are split too.

    ``content`` is 64x48: at size 64, 16 rows per device (relu5_1 is 4 poolings
    deep, `sharding.fit_row_mesh`); at 70, uneven shards; at 40, only 2 devices.
    """
    # Sharding changes the order of float32 sums; the optimisation can amplify that like any
    # perturbation (L-BFGS more than Adam: its line search compares values), hence a measured
    # tolerance (on this photo-like image, for Adam about 1e-6, for L-BFGS up to 1e-4).
    for optimizer, size, steps in [("adam", 64, 20), ("adam", 70, 10), ("adam", 40, 10), ("lbfgs", 64, 10)]:
        cfg = StylizeConfig(size=size, steps=steps, optimizer=optimizer)
        start = np.asarray(step.resize(content, plan.output_shape(content.shape, size)))
        seen = []
        sharded = optimize.stylize(content, style, network, cfg, layout=sharding.rows(), init=start,
                                   callback=lambda p: seen.append(p.checkpoint.images))
        plain = optimize.stylize(content, style, network, cfg, init=start)
        atol = rounding_atol(lambda init: optimize.stylize(content, style, network, cfg, init=init), start)
        np.testing.assert_allclose(sharded, plain, rtol=0, atol=atol, err_msg=f"rows, {optimizer}, size {size}")
        facts[f"rows_{optimizer}_{size}"] = {**_spec(seen[-1]), "max_abs_diff": float(np.abs(sharded - plain).max()),
                                             "atol": atol}
    # Per-device scratch memory of one chunk's program, 4 devices against 1.
    cfg = StylizeConfig(size=64, steps=10)
    image = step.resize(content, plan.output_shape(content.shape, 64))
    targets = step.compute_targets(network.model, network.params, image, (style,), np.ones(1, np.float32),
                                       content_layers=cfg.content_layers, style_layers=cfg.style_layers)
    one = lambda tree: jax.tree.map(lambda x: x[None], tree)  # noqa: E731 (a batch of one)
    w, state = one(step.loss_weights(cfg, targets)), one(step.init_state("adam", image, cfg.lr))
    temp = {}
    for n in (1, 4):
        compiled = sharding.rows(jax.local_devices()[:n]).lower(
            network.model, network.params, image[None], state, None, targets, w, np.int32(10), optimizer="adam",
            ema_decay=0.0, axes=sharding.ItemAxes(content=None, style=None)).compile()
        temp[n] = compiled.memory_analysis().temp_size_in_bytes
    facts["rows_temp_bytes"] = temp


def check_train(network, contents, style, facts):
    """A training step of a batch of 4 photos split over 4 devices equals the step on one device: the same
    gradient (a well-conditioned comparison), and the same parameters after two Adam steps (Adam's first
    steps are about lr times the gradient's sign, so a gradient near zero that rounds the other way moves a
    weight by up to 2 lr: the tolerance measured for this problem says how far)."""
    from jaxstyle import feedforward, model_file
    from jaxstyle.config import TrainConfig

    config = TrainConfig(architecture="tiny", size=30, steps=2, batch_size=4, lr=1e-2)
    photos = np.stack([c[:30, :30] for c in contents[:4]])
    split = feedforward.Trainer(network, [style], config)
    one = feedforward.Trainer(network, [style], config, devices=jax.local_devices()[:1])
    flat = lambda tree: np.concatenate([np.ravel(x) for x in model_file.flatten(tree).values()])  # noqa: E731

    def gradient(trainer, batch):
        loss = lambda p, x: feedforward.batch_loss(p, x, np.zeros(4, np.int32), model=trainer.model,  # noqa: E731
                                                   network=trainer.network, config=config, goal=trainer.goal)[0]
        grad = jax.jit(jax.grad(loss), in_shardings=(trainer.replicated, trainer.split))
        return flat(grad(trainer.init().params, trainer.photos(batch)))

    def trained(trainer, batch):
        return flat(feedforward.train([batch, batch], trainer).params)

    grad_atol = rounding_atol(lambda batch: gradient(one, batch), photos)
    np.testing.assert_allclose(gradient(split, photos), gradient(one, photos), rtol=0, atol=grad_atol)
    single, sharded = trained(one, photos), trained(split, photos)
    atol = rounding_atol(lambda batch: trained(one, batch), photos)
    np.testing.assert_allclose(sharded, single, rtol=0, atol=atol)
    facts["train"] = {"photos": _spec(split.photos(photos)), "params": _spec(jax.tree.leaves(split.init().params)[0]),
                      "grad_atol": grad_atol, "grad_scale": float(np.abs(gradient(one, photos)).max()),
                      "max_abs_diff": float(np.abs(sharded - single).max()), "atol": atol}


def main() -> int:
    facts = {"devices": jax.local_device_count()}
    rng = np.random.default_rng(0)
    contents = [rng.random((30, 40, 3)).astype(np.float32) for _ in range(6)]
    style = rng.random((30, 30, 3)).astype(np.float32)
    big = _photo(64, 48)  # smooth, like a photo: random pixels make Adam amplify rounding (see check_rows)
    network = _network()
    checks = sys.argv[1:] or ["batch", "sweep", "rows", "video", "train"]
    if "batch" in checks:
        check_batch(network, contents, style, facts)
    if "sweep" in checks:
        check_sweep(network, contents[0], style, facts)
    if "rows" in checks:
        check_rows(network, big, style, facts)
    if "video" in checks:
        check_video(network, big, style, facts)
    if "train" in checks:
        check_train(network, contents, style, facts)
    print(json.dumps(facts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
