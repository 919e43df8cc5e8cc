"""The photos a feed-forward style network trains on: listing, random crops, batches, prefetching.

`jaxstyle train STYLE --images DIR` trains an image transformation network
(Johnson, Alahi & Fei-Fei 2016) on square crops of photos. This module is
that input pipeline, in four steps, without JAX (it runs on a thread beside
the device):

- `training_images`: the image files of folders, globs and files, sorted,
  each checked from its header; the unreadable ones are returned with a
  one-line reason, and no usable image at all is a `UsageError`.
- `crop_plan`: what batch ``index`` is made of, as `Crop` records: which
  image, the size it is resized to, where the square is cut, and whether it
  is mirrored. A pure function of ``(seed, index)`` and the file list, so a
  run resumed at batch ``k`` sees exactly the batches an uninterrupted run
  would.
- `load_batch`: the pixels of a plan, float32 (batch, size, size, 3) in
  [0, 1]; decoded images are kept in a bounded LRU cache (`ImageCache`).
- `Prefetcher`: the batches ``start .. stop - 1`` made on a background
  thread, at most ``depth`` ahead, measuring how long the consumer waited.

The choices, and why:

- **Epochs.** Batches take the images in a random order that changes every
  epoch: training item ``k = index * batch_size + j`` is the image at place
  ``k mod n`` of the permutation of epoch ``k // n``, drawn from
  ``(seed, epoch)``. Every image is seen once per ``n`` items (when
  ``batch_size`` does not divide ``n``, a batch may straddle two epochs),
  which sampling with replacement does not promise, and the rule stays a
  pure function of ``(seed, index)``.
- **Scale.** The shorter side is resized to between ``size`` and
  ``MAX_SCALE * size`` (1.5), log-uniformly, before a ``size`` square is cut
  at a uniformly random place. Johnson et al. squashed COCO to 256x256; a
  random scale instead keeps the photo's proportions and shows the network
  features at several sizes, so its strokes do not depend on the scale of
  the photo it is given. At 1.5 the square still holds two thirds of the
  shorter side, so most crops show whole objects rather than textures, and
  at ``size`` 256 the largest scale (384 px) is about the photos' own size
  (the demo photos' shorter sides are mostly 288 to 384 px), so few crops
  are blurred by upsampling.
- **Flips.** Half the crops are mirrored left to right: a photo's mirror
  image is as likely a photo.
- **Cache.** Decoded images are kept as uint8 in an LRU cache of
  `DEFAULT_CACHE_BYTES` (1 GiB): a set that fits (the demo's 115 photos
  take 58 MB) is decoded once; a larger one is decoded on every visit
  (with every image seen once per epoch in a new order, an LRU smaller than
  the set would hit rarely), and memory stays bounded either way.
- **Resampling.** Pillow's Lanczos on uint8 RGB, antialiased, over only the
  region that becomes the crop (``resize``'s ``box``): the same pixels as
  resizing the whole image and cropping, to within rounding, at a third of
  the cost.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import os
import pathlib
import queue
import threading
import time
import weakref
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from jaxstyle import batch_io, images
from jaxstyle.config import DEFAULT_MAX_PIXELS
from jaxstyle.errors import JaxstyleError, UsageError

# The shorter side of an image is resized to between `size` and this many times `size`.
MAX_SCALE = 1.5
# Decoded images kept in memory by an `ImageCache`, in bytes (uint8 RGB).
DEFAULT_CACHE_BYTES = 2**30

# Separate random streams per purpose, so that the image order and the crops never share draws.
_SHUFFLE_STREAM = 0
_CROP_STREAM = 1

# How often a waiting producer thread looks whether it was asked to stop, in seconds.
_POLL_SECONDS = 0.05
# How long `Prefetcher.close` waits for the thread to finish the batch it is making, in seconds.
_CLOSE_SECONDS = 10.0

OnUnreadable = Callable[[pathlib.Path, str], None]


# ----------------------------------------------------------------------------
# The file list


def training_images(sources: Sequence[str], *, max_pixels: int = DEFAULT_MAX_PIXELS
                    ) -> tuple[list[pathlib.Path], list[tuple[pathlib.Path, str]]]:
    """The readable image files of folders, globs and files, sorted, and the rest with the reason.

    Sources are listed as `jaxstyle batch` lists its inputs
    (`batch_io.expand_inputs`): a folder's image files by extension, not
    recursively (so a SOURCES.md beside the photos is not an input); every
    file a glob matches; a file as it is. Each file is then checked from its
    header only (`images.image_shape`): not an image, empty, too small or too
    large files are skipped. A file whose data is corrupt past its header
    passes here and is replaced when it is decoded (`load_batch`).

    Args:
      sources: folders, glob patterns and image files.
      max_pixels: skip images with more than this many pixels (width times height).

    Returns:
      ``(usable, skipped)``: the usable files, sorted by path and without
      duplicates; and ``(path, reason)`` for every file or source skipped,
      the reason one line.

    Raises:
      UsageError: no usable image: no source, an empty or missing folder, a
        pattern matching nothing, or only unreadable files.
    """
    files, problems = batch_io.expand_inputs(sources)
    usable: list[pathlib.Path] = []
    skipped = [(pathlib.Path(arg), message) for arg, message in problems]
    for path in sorted(files):
        if not path.exists():  # a mistyped folder as much as a file: say neither
            skipped.append((path, f"{str(path)!r} does not exist; check the path"))
            continue
        try:
            images.image_shape(path, max_pixels=max_pixels)
        except UsageError as e:
            skipped.append((path, str(e)))
        else:
            usable.append(path)
    if not usable:
        where = ", ".join(repr(str(s)) for s in sources)
        reason = skipped[0][1] if skipped else "no folder, glob or file was given"
        more = f"; {len(skipped) - 1} more skipped" if len(skipped) > 1 else ""
        raise UsageError(
            f"no usable training image in {where or 'the sources'} ({reason}{more}); "
            "give a folder, glob or files of photos that Pillow can read"
        )
    return usable, skipped


# ----------------------------------------------------------------------------
# The plan of a batch


@dataclasses.dataclass(frozen=True)
class Crop:
    """One training example: an image resized, a square cut from it, maybe mirrored.

    Attributes:
      image: the image's index in the file list.
      shape: (h, w) the image is resized to, its proportions kept; the
        shorter side is between ``size`` and ``MAX_SCALE * size``.
      top, left: the square's top-left corner in the resized image; the
        square, ``size`` pixels a side, lies inside it.
      flip: mirror the square left to right.
    """

    image: int
    shape: tuple[int, int]
    top: int
    left: int
    flip: bool


def crop_plan(seed: int, index: int, n_images: int, shapes: Sequence[Sequence[int]], *,
              batch_size: int, size: int) -> list[Crop]:
    """The crops that make training batch ``index``: a pure function of ``(seed, index)`` and the images.

    Item ``j`` is training item ``k = index * batch_size + j``: the image at
    place ``k mod n_images`` of the random order of epoch ``k // n_images``
    (`image_order`). Its shorter side is resized to ``size * MAX_SCALE**u``
    pixels (rounded), ``u`` uniform in [0, 1); the square's corner is uniform
    over the places where it fits; it is mirrored with probability 1/2. These
    draws come from ``np.random.default_rng([seed, 1, index])``.

    Args:
      seed: the run's seed, 0 or more.
      index: the batch number, 0 or more.
      n_images: how many images there are.
      shapes: (h, w) of each image, upright (`images.image_shape`).
      batch_size: crops per batch, 1 or more.
      size: the side of the square crops, in pixels, at least `images.MIN_SIDE`.

    Returns:
      ``batch_size`` `Crop` records, in batch order.

    Raises:
      UsageError: a bad ``seed``, ``batch_size`` or ``size``.
      ValueError: a negative ``index``, or ``shapes`` not one per image.
    """
    _check_settings(seed, batch_size, size)
    if index < 0:
        raise ValueError(f"the batch index must be 0 or more, got {index}")
    if n_images < 1 or len(shapes) != n_images:
        raise ValueError(f"need one shape per image and at least one image, got {len(shapes)} shapes "
                         f"for {n_images} images")
    items = index * batch_size + np.arange(batch_size)
    chosen = [int(image_order(seed, int(k) // n_images, n_images)[int(k) % n_images]) for k in items]
    rng = np.random.default_rng([seed, _CROP_STREAM, index])
    scales = rng.random(batch_size)
    corners = rng.random((batch_size, 2))
    flips = rng.random(batch_size) < 0.5
    plan = []
    for image, u, (v_top, v_left), flip in zip(chosen, scales, corners, flips):
        side = min(round(size * MAX_SCALE ** u), math.floor(size * MAX_SCALE))
        resized = _resized_shape(shapes[image], side)
        top = min(int(v_top * (resized[0] - size + 1)), resized[0] - size)  # uniform over 0 .. h' - size
        left = min(int(v_left * (resized[1] - size + 1)), resized[1] - size)
        plan.append(Crop(image, resized, top, left, bool(flip)))
    return plan


@functools.lru_cache(maxsize=8)
def image_order(seed: int, epoch: int, n_images: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits the ``n_images`` images: a permutation, read-only.

    Drawn from ``np.random.default_rng([seed, 0, epoch])``; a batch needs at
    most two epochs' orders (the cache keeps a few).
    """
    order = np.random.default_rng([seed, _SHUFFLE_STREAM, epoch]).permutation(n_images)
    order.flags.writeable = False
    return order


def _check_settings(seed: int, batch_size: int, size: int) -> None:
    if seed < 0:
        raise UsageError(f"the seed must be 0 or more, got {seed}")
    if batch_size < 1:
        raise UsageError(f"the batch size must be at least 1, got {batch_size}")
    if size < images.MIN_SIDE:
        raise UsageError(f"the crop size must be at least {images.MIN_SIDE} pixels, got {size}")


def _resized_shape(shape: Sequence[int], side: int) -> tuple[int, int]:
    """(h, w) of an image of ``shape`` resized so that its shorter side is ``side``, proportions kept."""
    height, width = int(shape[0]), int(shape[1])
    if height <= width:
        return side, max(side, round(width * side / height))
    return max(side, round(height * side / width)), side


def _moved(crop: Crop, image: int, shape: Sequence[int], size: int) -> Crop:
    """``crop`` applied to another image of ``shape``: the same shorter side, relative place and flip."""
    resized = _resized_shape(shape, min(crop.shape))

    def place(at: int, old: int, new: int) -> int:
        return round(at / (old - size) * (new - size)) if old > size else (new - size) // 2

    return Crop(image, resized, place(crop.top, crop.shape[0], resized[0]),
                place(crop.left, crop.shape[1], resized[1]), crop.flip)


# ----------------------------------------------------------------------------
# Pixels


class ImageCache:
    """Decoded images, uint8 RGB (h, w, 3), the least recently used dropped beyond ``max_bytes``.

    It also remembers the files that failed to decode (`failures`), so they
    are read, and reported, once. Not thread-safe: one thread uses it.

    Args:
      max_bytes: the most bytes of pixels kept; an image larger than this is
        decoded every time.
      max_pixels: refuse images with more pixels than this (`images.load_image`).
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES, *, max_pixels: int = DEFAULT_MAX_PIXELS):
        if max_bytes < 0:
            raise ValueError(f"the cache size must be 0 bytes or more, got {max_bytes}")
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.failures: dict[pathlib.Path, str] = {}
        self._images: collections.OrderedDict[pathlib.Path, np.ndarray] = collections.OrderedDict()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes of pixels held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._images)

    def get(self, path: str | os.PathLike) -> np.ndarray:
        """The pixels of ``path``, uint8 RGB (h, w, 3), upright and in sRGB, read-only.

        Raises:
          UsageError: the file cannot be decoded now, or could not before
            (the same message, without reading it again).
        """
        path = pathlib.Path(path)
        if path in self.failures:
            raise UsageError(self.failures[path])
        pixels = self._images.get(path)
        if pixels is not None:
            self._images.move_to_end(path)
            return pixels
        try:
            pixels = images.to_8bit(images.load_image(path, max_pixels=self.max_pixels))
        except UsageError as e:
            self.failures[path] = str(e)
            raise
        pixels.flags.writeable = False
        if pixels.nbytes <= self.max_bytes:
            self._images[path] = pixels
            self._bytes += pixels.nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._images.popitem(last=False)
                self._bytes -= dropped.nbytes
        return pixels


def load_batch(paths: Sequence[str | os.PathLike], plan: Sequence[Crop], *, size: int,
               cache: ImageCache | None = None, on_unreadable: OnUnreadable | None = None) -> np.ndarray:
    """The pixels of a `crop_plan`: each image resized, cropped and mirrored as its `Crop` says.

    Each crop is the ``size`` square at ``(crop.top, crop.left)`` of the image
    resized to ``crop.shape`` with Pillow's Lanczos filter (antialiased),
    computed from that region alone; mirrored left to right when ``crop.flip``.

    An image that cannot be decoded (it passed `training_images`'s header
    check but its data is corrupt, or it changed since) is replaced by the
    next one in the list that can, with the same shorter side, relative place
    and flip: the batch stays a function of the plan and the files. It is
    reported to ``on_unreadable`` the first time ``cache`` meets it.

    Args:
      paths: the image files, as `training_images` returns them.
      plan: the crops, as `crop_plan` returns them.
      size: the side of the crops, in pixels (the ``size`` of `crop_plan`).
      cache: decoded images to reuse and fill; default: a cache for this call only.
      on_unreadable: called as ``on_unreadable(path, reason)`` for each file
        found undecodable, ``reason`` one line.

    Returns:
      float32 (len(plan), size, size, 3), RGB in [0, 1].

    Raises:
      JaxstyleError: no image in ``paths`` can be decoded.
    """
    cache = ImageCache() if cache is None else cache
    batch = np.empty((len(plan), size, size, 3), np.float32)
    for j, crop in enumerate(plan):
        image, pixels = _decoded(paths, crop.image, cache, on_unreadable)
        if image != crop.image:
            crop = _moved(crop, image, pixels.shape, size)
        square = _cropped(pixels, crop, size)
        batch[j] = (square[:, ::-1] if crop.flip else square) / np.float32(255)
    return batch


def _decoded(paths: Sequence[str | os.PathLike], image: int, cache: ImageCache,
             on_unreadable: OnUnreadable | None) -> tuple[int, np.ndarray]:
    """``(i, pixels)`` of image ``image``, or of the first image after it (cyclically) that decodes."""
    for step in range(len(paths)):
        i = (image + step) % len(paths)
        path = pathlib.Path(paths[i])
        known = path in cache.failures
        try:
            return i, cache.get(path)
        except UsageError as e:
            if not known and on_unreadable is not None:
                on_unreadable(path, str(e))
    raise JaxstyleError(f"none of the {len(paths)} training images can be decoded "
                        f"(first: {cache.failures[pathlib.Path(paths[image])]}); give readable photos")


def _cropped(pixels: np.ndarray, crop: Crop, size: int) -> np.ndarray:
    """The ``size`` square of ``pixels`` (uint8 (h, w, 3)) resized to ``crop.shape``, at the crop's corner."""
    height, width = pixels.shape[:2]
    scale_y, scale_x = crop.shape[0] / height, crop.shape[1] / width
    box = (crop.left / scale_x, crop.top / scale_y, (crop.left + size) / scale_x, (crop.top + size) / scale_y)
    resized = Image.fromarray(pixels).resize((size, size), Image.Resampling.LANCZOS, box=box)
    return np.asarray(resized)


# ----------------------------------------------------------------------------
# Prefetching


class _Counters:
    """What the producer thread measured; shared with the `Prefetcher`, which reads it."""

    def __init__(self) -> None:
        self.produced = 0
        self.produced_seconds = 0.0


class Prefetcher:
    """The batches ``start .. stop - 1`` of a run, made on a background thread while the device computes.

    Batch ``i`` equals ``load_batch(paths, crop_plan(seed, i, len(paths),
    shapes, batch_size=batch_size, size=size), size=size)``, so a run resumed
    at ``start = k`` gets the batches an uninterrupted run got. A daemon
    thread makes them in order, at most ``depth`` ahead of the consumer (made
    and not yet taken, the one being made included). An exception on the
    thread is raised again by ``next()``. Use it as a context manager, or call
    `close`, to stop the thread.

    Attributes:
      waited: seconds the consumer spent in ``next()`` waiting for a batch,
        in all (the time the device waited for input).
      produced_seconds: seconds the thread spent making batches, in all.
      produced: batches made so far.

    Args:
      paths: the image files (`training_images`).
      shapes: (h, w) of each file, upright (`images.image_shape`).
      seed, batch_size, size: as `crop_plan`.
      start, stop: the first batch, and the one after the last.
      rows: which crops of each batch to make (default all): one process's share under `jax.distributed`.
      depth: the most batches made ahead of the consumer, 1 or more.
      cache: decoded images (default: a new `ImageCache`); used by the
        thread only while it runs.
      on_unreadable: as `load_batch`'s; called on the thread.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], shapes: Sequence[Sequence[int]], *, seed: int,
                 batch_size: int, size: int, start: int, stop: int, rows: slice = slice(None), depth: int = 2,
                 cache: ImageCache | None = None, on_unreadable: OnUnreadable | None = None):
        _check_settings(seed, batch_size, size)
        if not 0 <= start <= stop:
            raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
        if depth < 1:
            raise ValueError(f"the prefetch depth must be at least 1, got {depth}")
        if not paths or len(shapes) != len(paths):
            raise ValueError(f"need one shape per image and at least one image, got {len(shapes)} shapes "
                             f"for {len(paths)} images")
        self.waited = 0.0
        self._counters = _Counters()
        self._batches: queue.SimpleQueue = queue.SimpleQueue()
        self._slots = threading.Semaphore(depth)
        self._stopping = threading.Event()
        self._done = start == stop
        job = dict(paths=list(paths), shapes=[tuple(s) for s in shapes], seed=seed, batch_size=batch_size,
                   size=size, indices=range(start, stop), rows=rows, cache=ImageCache() if cache is None else cache,
                   on_unreadable=on_unreadable)
        # The thread holds no reference to self, so a Prefetcher dropped without close() still stops it.
        self._thread = threading.Thread(target=_produce, name="jaxstyle-prefetch", daemon=True,
                                        args=(job, self._batches, self._slots, self._stopping, self._counters))
        self._thread.start()
        weakref.finalize(self, self._stopping.set)

    @property
    def produced_seconds(self) -> float:
        """Seconds the thread spent making batches, in all."""
        return self._counters.produced_seconds

    @property
    def produced(self) -> int:
        """Batches made so far."""
        return self._counters.produced

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        """The next batch's ``rows``, float32 (rows, size, size, 3) in [0, 1].

        Raises:
          StopIteration: after batch ``stop - 1``, or once closed.
          Exception: whatever the thread raised, once.
        """
        if self._done:
            raise StopIteration
        began = time.perf_counter()
        kind, value = self._batches.get()
        self.waited += time.perf_counter() - began
        if kind == "batch":
            self._slots.release()
            return value
        self.close()
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop the thread (it finishes the batch it is making, if any) and drop the batches made ahead."""
        self._done = True
        self._stopping.set()
        if self._thread is not threading.current_thread():
            self._thread.join(_CLOSE_SECONDS)
        while True:
            try:
                self._batches.get_nowait()
            except queue.Empty:
                break

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _produce(job: dict, batches: queue.SimpleQueue, slots: threading.Semaphore, stopping: threading.Event,
             counters: _Counters) -> None:
    """The thread of a `Prefetcher`: puts ``("batch", array)`` per batch, then ``("end", None)`` or ``("error", e)``."""
    try:
        for index in job["indices"]:
            while not slots.acquire(timeout=_POLL_SECONDS):  # a free slot: fewer than `depth` ahead
                if stopping.is_set():
                    break
            if stopping.is_set():
                break
            began = time.perf_counter()
            plan = crop_plan(job["seed"], index, len(job["paths"]), job["shapes"],
                             batch_size=job["batch_size"], size=job["size"])[job["rows"]]
            batch = load_batch(job["paths"], plan, size=job["size"], cache=job["cache"],
                               on_unreadable=job["on_unreadable"])
            counters.produced_seconds += time.perf_counter() - began
            counters.produced += 1
            batches.put(("batch", batch))
    except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
        batches.put(("error", e))
        return
    batches.put(("end", None))
