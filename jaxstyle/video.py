"""The frames of a clip painted in one style without flicker (Ruder, Dosovitskiy & Brox), on the one driver.

Stylized one by one, the frames of a clip flicker: each lands in a different
local optimum. Ruder et al. tie every frame to its neighbours, carried along
the optical flow (`jaxstyle.flow`) wherever the flow can be trusted
(`jaxstyle.temporal`). Every mode here is a sequence of *programs*, each one
call of the driver, `optimize.run`, whose items are frames:

- ``"independent"``: every frame on its own, ``window`` frames per program
  (a batch, split over the devices): the flickering baseline.
- ``"sequential"`` (Ruder et al. 2016): one frame per program, in order.
  Each frame starts from the previous stylized frame warped onto it (from its
  own content where the flow is not trusted: what the previous frame hid), and its
  objective gains a temporal term (`temporal.references_loss`) that holds it
  to that frame, or with ``long_term`` to several earlier ones
  (`temporal.chain`, `temporal.long_term_masks`), where the flow is trusted.
- ``"multipass"`` (Ruder et al. 2018): all frames of a window optimised
  together, as one vmapped program split over the devices, in several
  passes. The first pass paints every frame from its content; before each
  later pass every frame is blended with its warped neighbour
  (`temporal.blend`), sweeping forward in time on odd passes and backward on
  even ones, and the pass holds each frame to both warped neighbours. A
  window's first frame is held to the finished last frame of the window
  before it.

Every frame's program has the same shapes, so it is compiled once for the
clip: a frame with fewer references than the others gets references whose
masks are zero, which add exactly nothing to its objective.

`programs` yields the programs one by one, so that a caller (the command
line) can report on each and keep what is finished (`ClipState`) before the
next one starts; `stylize_clip` runs them all.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import optimize, plan, sharding, temporal
from jaxstyle.config import StylizeConfig, VideoConfig
from jaxstyle.temporal import References


@dataclasses.dataclass
class ClipState:
    """How far a clip has come: all a resumed run needs besides an optimiser checkpoint.

    Attributes:
      done: the finished stylized frames, from the first on, each float32 (h, w, 3).
      window: multipass: the current window's frames after ``passes_done`` passes (None between windows).
      passes_done: multipass: passes of the current window finished.
    """

    done: list[np.ndarray] = dataclasses.field(default_factory=list)
    window: list[np.ndarray] | None = None
    passes_done: int = 0


@dataclasses.dataclass
class Program:
    """One call of the driver: these frames, in this pass.

    Attributes:
      items: the indices of its frames in the clip.
      index: the pass (multipass; 0 otherwise); passes: how many a window has.
      config: the settings of this program (a later pass runs fewer steps, at one scale).
      run: ``run(callback=None, resume=None, report_every=CHUNK)`` runs it (`optimize.run`'s arguments),
        updates the `ClipState`, and returns the frames' images.
    """

    items: tuple[int, ...]
    index: int
    passes: int
    config: StylizeConfig
    run: Callable[..., list[np.ndarray]]


def stylize_clip(frames: Sequence[np.ndarray], styles: Sequence[np.ndarray], network: optimize.Network,
                 config: StylizeConfig, video: VideoConfig = VideoConfig(), **options) -> list[np.ndarray]:
    """Paint every frame of a clip in the style of ``styles``, frame to frame consistent.

    Args:
      frames, styles, network, config, video: as in `programs`.
      options: the keyword arguments of `programs`, and ``callback``, given to every program.
    Returns:
      The stylized frames, float32 (h, w, 3) RGB in [0, 1].
    """
    callback = options.pop("callback", None)
    state = options.setdefault("state", ClipState())
    for program in programs(frames, styles, network, config, video, **options):
        program.run(callback=callback)
    return state.done


def programs(frames: Sequence[np.ndarray], styles: Sequence[np.ndarray], network: optimize.Network,
             config: StylizeConfig, video: VideoConfig = VideoConfig(), *, flows: tuple[np.ndarray, np.ndarray],
             state: ClipState | None = None, layout: sharding.Layout | None = None) -> Iterator[Program]:
    """The programs that paint a clip, one after another (see the module docs).

    Args:
      frames: the clip, RGB in [0, 1], each (h, w, 3), at the output size.
      styles: the style images, RGB in [0, 1].
      network: the VGG and its weights.
      config: the settings of every frame (`StylizeConfig`).
      video: the mode and its settings (`VideoConfig`).
      flows: ``(forward, backward)`` of `flow.clip_flows`, on the frames' grid.
      state: where an earlier run stopped (updated as programs finish).
      layout: how windows are compiled (default: `sharding.batch()`;
        a sequential run's programs have one frame and run on one device).
    Yields:
      `Program`; each must be run before the next is asked for.
    Raises:
      NonFiniteLoss: (from a program's ``run``) a frame's loss became NaN or Inf.
    """
    state = ClipState() if state is None else state
    forward, backward = (jnp.asarray(f, jnp.float32) for f in flows)
    masks = jax.vmap(temporal.reliable)(forward, backward)  # masks[i]: on frame i + 1's grid
    clip = _Clip(list(frames), list(styles), network, forward, backward, masks)
    if video.mode == "sequential":
        yield from _sequential(clip, config, video, state)
    else:
        yield from _windows(clip, config, video, state, layout or sharding.batch())


@dataclasses.dataclass
class _Clip:
    """A clip's frames, styles and network, and its flows and their masks (device arrays)."""

    frames: list[np.ndarray]
    styles: list[np.ndarray]
    network: optimize.Network
    forward: jax.Array
    backward: jax.Array
    masks: jax.Array

    def run(self, items: Sequence[int], configs: Sequence[StylizeConfig], *, init, references, weight: float,
            layout, size=None, **options) -> list[np.ndarray]:
        """One driver call over these frames; raises the first frame's `NonFiniteLoss`."""
        results = optimize.run([self.frames[i] for i in items], self.styles, self.network, configs, ids=tuple(items),
                               init=init, temporal=references, temporal_weight=weight, layout=layout, size=size,
                               **options)
        for result in results:
            if isinstance(result, optimize.NonFiniteLoss):
                raise result
        return results


def _sequential(clip: _Clip, config: StylizeConfig, video: VideoConfig, state: ClipState) -> Iterator[Program]:
    gaps = gap_frames(video.long_term)
    for i in range(len(state.done), len(clip.frames)):
        def run(i=i, **options):
            refs, init = _earlier(clip, state.done, i, gaps)
            [image] = clip.run([i], [config], init=None if i == 0 else [init], references=[refs],
                               weight=video.temporal_weight, layout=sharding.single(), **options)
            state.done.append(image)
            return [image]

        yield Program((i,), 0, 1, config, run)


def gap_frames(long_term: int) -> tuple[int, ...]:
    """How many frames back each reference of a sequential frame lies: 1, 2, 4, ... (``long_term`` of them)."""
    return tuple(2 ** k for k in range(long_term))


def _earlier(clip: _Clip, done: list[np.ndarray], i: int, gaps: tuple[int, ...]) -> tuple[References, jax.Array]:
    """Frame ``i``'s references (the finished frames ``gaps`` before it, warped onto it) and its start."""
    shape = clip.frames[i].shape
    if i == 0:
        return References(jnp.zeros((len(gaps), *shape)), jnp.zeros((len(gaps), *shape[:2]))), None
    back = min(max(gaps), i)
    earlier = jnp.stack([jnp.asarray(done[i - g]) for g in range(1, back + 1)])
    return _carried(earlier, clip.backward[i - back:i][::-1], clip.masks[i - back:i][::-1], jnp.asarray(clip.frames[i]),
                    gaps=gaps)


@functools.partial(jax.jit, static_argnames=("gaps",))
def _carried(earlier: jax.Array, backward: jax.Array, masks: jax.Array, content: jax.Array, *,
             gaps: tuple[int, ...]):
    """The earlier frames (nearest first) at ``gaps`` carried onto the current one, with Ruder's long-term
    masks; gaps beyond the clip's start get zero masks. Also the start: the previous frame warped where its
    flow is trusted, the content elsewhere (what the previous frame never showed starts as a fresh frame)."""
    flows, trusted = temporal.chain(list(backward), list(masks))
    frames, weights = [], []
    for g in gaps:
        if g <= len(flows):
            frames.append(temporal.warp(earlier[g - 1], flows[g - 1]))
            weights.append(trusted[g - 1])
        else:
            frames.append(jnp.zeros_like(earlier[0]))
            weights.append(jnp.zeros_like(trusted[0]))
    references = References(jnp.stack(frames), temporal.long_term_masks(jnp.stack(weights)))
    return references, temporal.blend(content, frames[0], trusted[0], 1.0)


def _windows(clip: _Clip, config: StylizeConfig, video: VideoConfig, state: ClipState,
             layout: sharding.Layout) -> Iterator[Program]:
    """The independent and multipass modes: windows of frames, each one program per pass."""
    n = len(clip.frames)
    per = math.ceil(n / math.ceil(n / video.window))  # windows of even sizes: 12 frames in 6 and 6, not 8 and 4
    size = plan.program_size(n, per, layout.devices)
    configs = plan.pass_configs(config, video)
    for window in plan.programs(n, per, layout.devices):
        if window.start < len(state.done):
            continue
        items = tuple(window)
        for k in range(state.passes_done, len(configs)):
            def run(k=k, items=items, **options):
                if video.mode == "independent":
                    init, refs = None, None  # a plain batch of frames
                elif k == 0:
                    init, refs = None, [_no_references(clip, i) for i in items]
                else:
                    init = _blended(clip, state, items, forward_in_time=k % 2 == 1, amount=video.blend)
                    refs = _neighbours(clip, state, items, init)
                weight = 0.0 if video.mode == "independent" else video.temporal_weight
                images = clip.run(items, [configs[k]] * len(items), init=init, references=refs, weight=weight,
                                  layout=layout, size=size, **options)
                state.window, state.passes_done = images, k + 1
                if k + 1 == len(configs):
                    state.done += images
                    state.window, state.passes_done = None, 0
                return images

            yield Program(items, k, len(configs), configs[k], run)


def _no_references(clip: _Clip, i: int) -> References:
    shape = clip.frames[i].shape
    return References(jnp.zeros((2, *shape)), jnp.zeros((2, *shape[:2])))


def _blended(clip: _Clip, state: ClipState, items: tuple[int, ...], *, forward_in_time: bool,
             amount: float) -> list[jax.Array]:
    """The window's frames, each blended with its warped neighbour in one sweep through time (the next
    pass's start): forward from the frame before the window (if finished), or backward from its last."""
    frames = [jnp.asarray(x) for x in state.window]
    first = items[0]
    if forward_in_time:
        previous = jnp.asarray(state.done[first - 1]) if first > 0 else None
        for j, i in enumerate(items):
            if previous is not None:
                frames[j] = _blend_from(frames[j], previous, clip.backward[i - 1], clip.masks[i - 1], amount)
            previous = frames[j]
    else:
        for j in range(len(items) - 2, -1, -1):
            i = items[j]
            mask = temporal.reliable(clip.backward[i], clip.forward[i])  # on frame i's grid
            frames[j] = _blend_from(frames[j], frames[j + 1], clip.forward[i], mask, amount)
    return frames


@jax.jit
def _blend_from(image: jax.Array, neighbour: jax.Array, flow: jax.Array, mask: jax.Array, amount) -> jax.Array:
    return temporal.blend(image, temporal.warp(neighbour, flow), mask, amount)


def _neighbours(clip: _Clip, state: ClipState, items: tuple[int, ...], frames: list[jax.Array]) -> list[References]:
    """Each frame of the window held to both its neighbours as they start the pass (the frame before the
    window: finished; a neighbour not yet painted: a zero mask)."""
    refs = []
    for j, i in enumerate(items):
        before = frames[j - 1] if j > 0 else (jnp.asarray(state.done[i - 1]) if 0 < i <= len(state.done) else None)
        after = frames[j + 1] if j + 1 < len(items) else None
        refs.append(_pair(frames[j], before, after, clip.backward[i - 1] if i > 0 else None,
                          clip.masks[i - 1] if i > 0 else None,
                          clip.forward[i] if i + 1 < len(clip.frames) else None,
                          clip.backward[i] if i + 1 < len(clip.frames) else None))
    return refs


def _pair(image, before, after, backward, mask, forward, backward_next) -> References:
    """The references of one frame: its warped predecessor and successor (zeros where there is none)."""
    zero_frame, zero_mask = jnp.zeros_like(image), jnp.zeros(image.shape[:2], image.dtype)
    frames, masks = [zero_frame, zero_frame], [zero_mask, zero_mask]
    if before is not None:
        frames[0], masks[0] = temporal.warp(before, backward), mask
    if after is not None:
        frames[1], masks[1] = temporal.warp(after, forward), temporal.reliable(backward_next, forward)
    return References(jnp.stack(frames), jnp.stack(masks))
