"""`jaxstyle.video_io`: clips through video files, GIFs and folders of frames, their rate, size and sound."""

from __future__ import annotations

import pathlib
from fractions import Fraction

import numpy as np
import pytest

from jaxstyle import images, video_io
from jaxstyle.errors import UsageError


def _clip(n: int = 6, h: int = 48, w: int = 64) -> list[np.ndarray]:
    """Smooth frames (H.264 keeps them within a few levels), each a little brighter than the one before."""
    ramp = np.linspace(0.1, 0.8, w, dtype=np.float32)[None, :, None] * np.array([1.0, 0.7, 0.4], np.float32)
    return [np.broadcast_to(ramp + 0.02 * i, (h, w, 3)).copy() for i in range(n)]


def _with_sound(path: pathlib.Path, frames: list[np.ndarray], fps: int = 12) -> None:
    """A source video with an AAC sound track (half a second of 440 Hz), made with PyAV."""
    import av

    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        sound = out.add_stream("aac", rate=44100)
        for i, f in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(np.round(f * 255).astype(np.uint8), format="rgb24")
            picture.pts, picture.time_base = i, Fraction(1, fps)
            out.mux(video.encode(picture))
        out.mux(video.encode())
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(22050) / 44100)).astype(np.float32)[None]
        samples = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        samples.sample_rate, samples.pts = 44100, 0
        out.mux(sound.encode(samples))
        out.mux(sound.encode())


@pytest.mark.parametrize("fps", [Fraction(12), Fraction(30000, 1001)])
def test_a_video_keeps_its_frame_count_rate_and_size(tmp_path, fps):
    frames = _clip()
    video_io.write_clip(tmp_path / "a.mp4", frames, fps)
    clip = video_io.read_clip(tmp_path / "a.mp4")
    assert (len(clip.frames), clip.fps, clip.frames[0].shape, clip.audio) == (6, fps, (48, 64, 3), None)
    # H.264 at CRF 18 in 4:2:0: within a few levels on smooth frames (measured 0.005-0.006 on average).
    assert max(np.abs(a - b).mean() for a, b in zip(clip.frames, frames)) < 0.02
    assert [p.name for p in tmp_path.iterdir()] == ["a.mp4"]  # no temporary file left


def test_the_sound_of_the_source_is_copied_into_the_output(tmp_path):
    import av

    _with_sound(tmp_path / "src.mp4", _clip())
    clip = video_io.read_clip(tmp_path / "src.mp4")
    assert clip.audio == tmp_path / "src.mp4"
    video_io.write_clip(tmp_path / "out.mp4", clip.frames, clip.fps, audio=clip.audio)
    with av.open(str(tmp_path / "out.mp4")) as out:
        assert [s.type for s in out.streams] == ["video", "audio"]
        assert out.streams.audio[0].codec_context.name == "aac"  # copied, not re-encoded
    video_io.write_clip(tmp_path / "silent.mp4", clip.frames, clip.fps)
    with av.open(str(tmp_path / "silent.mp4")) as out:
        assert [s.type for s in out.streams] == ["video"]


def test_an_odd_sized_video_drops_its_last_row_and_column(tmp_path):
    video_io.write_clip(tmp_path / "odd.mp4", _clip(2, 47, 65), Fraction(10))
    assert video_io.read_clip(tmp_path / "odd.mp4").frames[0].shape == (46, 64, 3)


def test_a_gif_keeps_its_frames_and_its_rate_in_hundredths_of_a_second(tmp_path):
    frames = _clip()
    video_io.write_clip(tmp_path / "a.gif", frames, Fraction(10))
    clip = video_io.read_clip(tmp_path / "a.gif")
    assert (len(clip.frames), clip.fps, clip.frames[0].shape) == (6, Fraction(10), (48, 64, 3))
    assert max(np.abs(a - b).max() for a, b in zip(clip.frames, frames)) < 0.02  # 256 colours: measured 0.002
    assert video_io.read_clip(tmp_path / "a.gif", start=2, end=4).frames[0].shape == (48, 64, 3)


def test_a_folder_of_frames_in_and_out_in_name_order(tmp_path):
    frames = _clip(4)
    video_io.write_clip(tmp_path / "out", frames, Fraction(10))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"frame0000{i}.png" for i in range(1, 5)]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left
    clip = video_io.read_clip(tmp_path / "out")
    assert clip.names == [f"frame0000{i}.png" for i in range(1, 5)] and clip.fps == video_io.DEFAULT_FPS
    for a, b in zip(clip.frames, frames):
        np.testing.assert_allclose(a, b, atol=0.5 / 255 + 1e-6)  # 8-bit PNG
    part = video_io.read_clip(str(tmp_path / "out" / "frame*.png"), start=1, end=3)
    assert part.names == ["frame00002.png", "frame00003.png"]


@pytest.mark.parametrize("make, source, words", [
    (lambda d: (d / "empty").mkdir(), "empty", ["holds no image files"]),
    (lambda d: (d / "noise.mp4").write_bytes(b"\0not a video" * 50), "noise.mp4", ["cannot read video"]),
    (None, "missing.mp4", ["does not exist"]),
    (lambda d: (d / "sizes").mkdir() or images.save_image(d / "sizes" / "a.png", np.zeros((20, 30, 3))) or
     images.save_image(d / "sizes" / "b.png", np.zeros((20, 32, 3))), "sizes",
     ["b.png of", "is 32x20, the first frame 30x20; give frames of one size"]),
])
def test_unreadable_empty_or_mixed_sources_are_refused_in_one_line(tmp_path, make, source, words):
    if make is not None:
        make(tmp_path)
    with pytest.raises(UsageError) as info:
        video_io.read_clip(tmp_path / source)
    assert "\n" not in str(info.value) and all(w in str(info.value) for w in words), str(info.value)


def test_a_range_with_no_frames_is_refused(tmp_path):
    video_io.write_clip(tmp_path / "a.mp4", _clip(3), Fraction(10))
    with pytest.raises(UsageError, match="has no frames from 5 to the end"):
        video_io.read_clip(tmp_path / "a.mp4", start=5)


def test_outputs_in_unknown_formats_or_that_exist_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(UsageError, match="cannot write a clip as .*a.xyz.*use a video file"):
        video_io.write_clip(tmp_path / "a.xyz", _clip(2), Fraction(10))
    (tmp_path / "b.mp4").write_bytes(b"mine")
    with pytest.raises(UsageError, match="already exists"):
        video_io.write_clip(tmp_path / "b.mp4", _clip(2), Fraction(10))
    assert (tmp_path / "b.mp4").read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.mp4"]


@pytest.mark.parametrize("source", ["a.mp4", "a.gif", "frames"])
def test_frames_are_brought_to_the_output_size_as_they_are_read(tmp_path, source):
    """What a run gets: each frame resized on reading (Lanczos, as images.resize_to), from any source."""
    frames = _clip(3, 48, 64)
    video_io.write_clip(tmp_path / source, frames, Fraction(10))
    whole = video_io.read_clip(tmp_path / source).frames
    small = video_io.read_clip(tmp_path / source, size=32).frames
    assert len(small) == 3 and all(f.shape == (24, 32, 3) and f.dtype == np.float32 for f in small)
    for a, b in zip(whole, small):
        np.testing.assert_allclose(b, images.resize_to(a, (24, 32)), rtol=0, atol=1e-6)


def test_frames_of_other_sizes_are_refused_though_they_would_resize_alike(tmp_path):
    images.save_image(tmp_path / "f" / "a.png", np.zeros((20, 30, 3)))
    images.save_image(tmp_path / "f" / "b.png", np.zeros((20, 31, 3)))
    with pytest.raises(UsageError, match="b.png of .* is 31x20, the first frame 30x20"):
        video_io.read_clip(tmp_path / "f", size=16)
