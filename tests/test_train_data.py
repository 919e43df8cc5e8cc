"""`jaxstyle.train_data`: the training file list, crop plans, batches and the prefetching thread."""

from __future__ import annotations

import dataclasses
import pathlib
import threading
import time

import numpy as np
import pytest
from PIL import Image

from jaxstyle import images, train_data
from jaxstyle.errors import JaxstyleError, UsageError
from synthetic import grating

TRAIN = pathlib.Path("/work/shared/images/train")
SIZE = 32


def _write(path: pathlib.Path, height: int, width: int, seed: int) -> pathlib.Path:
    Image.fromarray(images.to_8bit(grating(height, width, seed))).save(path)
    return path


@pytest.fixture
def photos(tmp_path) -> tuple[list[pathlib.Path], list[tuple[int, int]]]:
    """Six small PNGs of different shapes, both orientations, and their (h, w)."""
    shapes = [(40, 60), (60, 40), (32, 32), (48, 80), (36, 50), (70, 45)]
    paths = [_write(tmp_path / f"p{i}.png", h, w, i) for i, (h, w) in enumerate(shapes)]
    return paths, shapes


def _plan(shapes, index, *, seed=0, batch_size=3, size=SIZE):
    return train_data.crop_plan(seed, index, len(shapes), shapes, batch_size=batch_size, size=size)


def _batch(paths, shapes, index, **kwargs):
    size = kwargs.get("size", SIZE)
    return train_data.load_batch(paths, _plan(shapes, index, **kwargs), size=size)


# ----------------------------------------------------------------------------
# The file list


def test_training_images_lists_sorted_readable_files_and_skips_the_rest(tmp_path):
    _write(tmp_path / "b.png", 40, 40, 1)
    _write(tmp_path / "a.jpg", 40, 50, 2)
    (tmp_path / "fake.jpg").write_text("not a picture")
    _write(tmp_path / "tiny.png", 8, 8, 3)
    (tmp_path / "README.md").write_text("# notes")  # not an image extension: not an input at all
    usable, skipped = train_data.training_images([str(tmp_path)])
    assert [p.name for p in usable] == ["a.jpg", "b.png"]
    reasons = {p.name: reason for p, reason in skipped}
    assert set(reasons) == {"fake.jpg", "tiny.png"}
    assert "not an image" in reasons["fake.jpg"] and "too small" in reasons["tiny.png"]
    assert all("\n" not in r for r in reasons.values())
    # A glob lists every file, so a non-image is checked and skipped with its reason.
    usable, skipped = train_data.training_images([str(tmp_path / "*")])
    assert [p.name for p in usable] == ["a.jpg", "b.png"]
    assert "README.md" in {p.name for p, _ in skipped}


@pytest.mark.parametrize("case", ["empty", "unreadable", "missing", "no match"])
def test_training_images_refuses_no_usable_image_in_one_line(tmp_path, case):
    source = tmp_path / "photos"
    if case != "missing":
        source.mkdir()
    if case == "unreadable":
        (source / "a.jpg").write_text("text")
        (source / "b.png").write_bytes(b"")
    if case == "no match":
        source = source / "*.jpg"
    with pytest.raises(UsageError) as e:
        train_data.training_images([str(source)])
    message = str(e.value)
    assert "\n" not in message and str(source) in message and "give a folder" in message


def test_training_images_of_the_demo_folder():
    if not TRAIN.is_dir():
        pytest.skip(f"{TRAIN} is not on this machine")
    usable, skipped = train_data.training_images([str(TRAIN)])
    assert len(usable) == 115 and skipped == []  # its SOURCES.md and .txt are not image files
    assert usable == sorted(usable)


# ----------------------------------------------------------------------------
# Crop plans


def test_crop_plan_is_a_function_of_seed_and_index(photos):
    _, shapes = photos
    assert _plan(shapes, 7) == _plan(shapes, 7)
    assert _plan(shapes, 7) != _plan(shapes, 8)
    assert _plan(shapes, 7) != _plan(shapes, 7, seed=1)


@pytest.mark.parametrize("n, batch_size", [(6, 3), (6, 1), (5, 2), (7, 4)])
def test_every_image_once_per_epoch(n, batch_size):
    shapes = [(40 + i, 50) for i in range(n)]
    epochs = 3
    batches = -(-epochs * n // batch_size)
    items = [c.image for i in range(batches) for c in _plan(shapes, i, batch_size=batch_size)]
    orders = [items[e * n:(e + 1) * n] for e in range(epochs)]
    for order in orders:
        assert sorted(order) == list(range(n))
    assert orders[0] != orders[1] or orders[1] != orders[2]  # a new order each epoch


def test_crops_lie_inside_the_resized_image_at_the_planned_scale():
    rng = np.random.default_rng(0)
    shapes = [tuple(int(s) for s in rng.integers(20, 400, 2)) for _ in range(50)]
    size = 48
    sides, flips = [], []
    for index in range(40):
        for crop in _plan(shapes, index, batch_size=5, size=size, seed=3):
            (h, w), (rh, rw) = shapes[crop.image], crop.shape
            assert size <= min(rh, rw) <= int(size * train_data.MAX_SCALE)
            assert 0 <= crop.top <= rh - size and 0 <= crop.left <= rw - size
            assert abs(rw / rh - w / h) <= (w / h) * 1.5 / min(rh, rw)  # proportions kept, up to rounding
            sides.append(min(rh, rw))
            flips.append(crop.flip)
    assert min(sides) <= size + 2 and max(sides) >= int(size * train_data.MAX_SCALE) - 2  # the range is used
    assert 0.35 < np.mean(flips) < 0.65


def test_crop_plan_refuses_bad_settings():
    with pytest.raises(UsageError, match="batch size"):
        train_data.crop_plan(0, 0, 1, [(40, 40)], batch_size=0, size=SIZE)
    with pytest.raises(UsageError, match="seed"):
        train_data.crop_plan(-1, 0, 1, [(40, 40)], batch_size=1, size=SIZE)
    with pytest.raises(UsageError, match="crop size"):
        train_data.crop_plan(0, 0, 1, [(40, 40)], batch_size=1, size=8)
    with pytest.raises(ValueError, match="one shape per image"):
        train_data.crop_plan(0, 0, 2, [(40, 40)], batch_size=1, size=SIZE)


# ----------------------------------------------------------------------------
# Batches


def test_load_batch_is_deterministic_float32_in_unit_range(photos):
    paths, shapes = photos
    first = _batch(paths, shapes, 4)
    assert first.dtype == np.float32 and first.shape == (3, SIZE, SIZE, 3)
    assert first.min() >= 0 and first.max() <= 1 and first.std() > 0.05
    np.testing.assert_array_equal(_batch(paths, shapes, 4), first)
    assert np.abs(_batch(paths, shapes, 5) - first).max() > 0.1


def test_load_batch_equals_resizing_the_whole_image_then_cropping(tmp_path):
    shapes = [(40, 60), (60, 40), (32, 32), (48, 80), (36, 50), (70, 45)]
    paths = []
    for i, (h, w) in enumerate(shapes):  # values in [0.2, 0.8]: Lanczos's overshoot is never clipped
        paths.append(tmp_path / f"p{i}.png")
        Image.fromarray(images.to_8bit(0.2 + 0.6 * grating(h, w, i))).save(paths[-1])
    plan = _plan(shapes, 0, batch_size=12)
    batch = train_data.load_batch(paths, plan, size=SIZE)
    for crop, got in zip(plan, batch):
        whole = images.resize_to(images.load_image(paths[crop.image]), crop.shape)  # float Lanczos
        want = whole[crop.top:crop.top + SIZE, crop.left:crop.left + SIZE]
        want = want[:, ::-1] if crop.flip else want
        np.testing.assert_allclose(got, want, rtol=0, atol=2 / 255)  # Pillow rounds to 8 bits between its passes


def test_flip_mirrors_the_crop(photos):
    paths, shapes = photos
    plan = _plan(shapes, 2, batch_size=6)
    mirrored = [dataclasses.replace(c, flip=not c.flip) for c in plan]
    a = train_data.load_batch(paths, plan, size=SIZE)
    b = train_data.load_batch(paths, mirrored, size=SIZE)
    np.testing.assert_array_equal(b, np.flip(a, axis=2))
    assert np.abs(a - b).max() > 0.1  # not symmetric images


def test_image_cache_is_bounded_and_least_recently_used(photos):
    paths, _ = photos
    one = 40 * 60 * 3
    cache = train_data.ImageCache(max_bytes=2 * one)
    a = cache.get(paths[0])  # 40x60
    assert a.dtype == np.uint8 and a.shape == (40, 60, 3) and not a.flags.writeable
    cache.get(paths[1])  # 60x40
    cache.get(paths[0])  # p0 is now the most recent
    cache.get(paths[2])  # 32x32: over the limit, so p1 goes
    assert len(cache) == 2 and cache.nbytes == one + 32 * 32 * 3
    assert cache.get(paths[0]) is a  # kept, not decoded again


def test_a_corrupt_image_is_replaced_by_the_next_and_reported_once(tmp_path):
    paths = [_write(tmp_path / f"{name}.jpg", 40, 60, i) for i, name in enumerate("abc")]
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[:len(data) // 2])  # the header intact, the data cut short
    usable, skipped = train_data.training_images([str(tmp_path)])
    assert usable == paths and skipped == []  # the header check cannot see it
    shapes = [(40, 60)] * 3
    plan = _plan(shapes, 0, batch_size=4)
    plan = [dataclasses.replace(plan[0], image=1), plan[1], dataclasses.replace(plan[2], image=1), plan[3]]
    reports = []
    cache = train_data.ImageCache()
    batch = train_data.load_batch(paths, plan, size=SIZE, cache=cache, on_unreadable=lambda *r: reports.append(r))
    again = train_data.load_batch(paths, plan, size=SIZE, cache=cache, on_unreadable=lambda *r: reports.append(r))
    assert len(reports) == 1 and reports[0][0] == paths[1] and "truncated" in reports[0][1]
    np.testing.assert_array_equal(again, batch)
    replaced = [dataclasses.replace(plan[0], image=2), plan[1], dataclasses.replace(plan[2], image=2), plan[3]]
    np.testing.assert_array_equal(batch, train_data.load_batch(paths, replaced, size=SIZE))


def test_load_batch_fails_in_one_line_when_no_image_decodes(tmp_path):
    path = _write(tmp_path / "a.jpg", 40, 60, 0)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(JaxstyleError, match="none of the 1 training images can be decoded"):
        train_data.load_batch([path], _plan([(40, 60)], 0), size=SIZE)


def test_demo_photos_load_quickly():
    if not TRAIN.is_dir():
        pytest.skip(f"{TRAIN} is not on this machine")
    paths = sorted(TRAIN.glob("*.jpg"))[:8]
    shapes = [images.image_shape(p) for p in paths]
    batch = train_data.load_batch(paths, _plan(shapes, 0, batch_size=4, size=256), size=256)
    assert batch.shape == (4, 256, 256, 3) and batch.dtype == np.float32 and batch.std() > 0.05


# ----------------------------------------------------------------------------
# The prefetching thread


def _prefetcher(paths, shapes, **kwargs):
    settings = dict(seed=0, batch_size=3, size=SIZE, start=0, stop=8)
    return train_data.Prefetcher(paths, shapes, **{**settings, **kwargs})


def test_prefetched_batches_equal_load_batch_and_resume_gives_the_same(photos):
    paths, shapes = photos
    with _prefetcher(paths, shapes) as run:
        whole = list(run)
    assert len(whole) == 8
    for i, batch in enumerate(whole):
        np.testing.assert_array_equal(batch, _batch(paths, shapes, i))
    with _prefetcher(paths, shapes, start=5) as resumed:
        rest = list(resumed)
    assert len(rest) == 3
    for got, want in zip(rest, whole[5:]):
        np.testing.assert_array_equal(got, want)


def test_prefetcher_keeps_at_most_depth_ahead_and_a_slow_consumer_waits_little(photos):
    paths, shapes = photos
    sleep, taken = 0.15, 0
    with _prefetcher(paths, shapes, stop=6, depth=2) as run:
        for _ in run:
            taken += 1
            time.sleep(sleep)  # the device computing
            assert run.produced <= taken + 2
        assert run.produced == 6 and run.produced_seconds > 0
        assert run.waited < 6 * sleep  # the batches were ready: far less than the time spent computing


def test_prefetcher_raises_the_thread_exception(photos, monkeypatch):
    paths, shapes = photos

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(train_data, "load_batch", broken)
    with _prefetcher(paths, shapes) as run:
        with pytest.raises(RuntimeError, match="disk on fire"):
            next(run)
        with pytest.raises(StopIteration):
            next(run)


def test_prefetcher_raises_a_jaxstyle_error_from_the_files(tmp_path):
    path = _write(tmp_path / "a.jpg", 40, 60, 0)
    path.write_bytes(path.read_bytes()[:300])
    with _prefetcher([path], [(40, 60)]) as run, pytest.raises(JaxstyleError, match="can be decoded"):
        next(run)


def test_close_stops_the_thread(photos):
    paths, shapes = photos
    before = set(threading.enumerate())
    run = _prefetcher(paths, shapes, stop=10**6)
    (thread,) = set(threading.enumerate()) - before
    next(run)
    began = time.perf_counter()
    run.close()
    assert not thread.is_alive() and time.perf_counter() - began < 5
    with pytest.raises(StopIteration):
        next(run)


def test_an_empty_range_gives_no_batch(photos):
    paths, shapes = photos
    with _prefetcher(paths, shapes, start=3, stop=3) as run:
        assert list(run) == []
