"""A synthetic video clip with known optical flow: a camera moving over a photo, a cat's head moving across it.

    python scripts/make_clip.py clip.gif --frames 24 --size 256 --fps 12

Measuring the flicker of video style transfer needs a clip with real motion whose true flow is
known, and no such video ships with the project. This script makes one from two CC0 photos
(docs/images/video/SOURCES.md): a camera pans over the coffee photo along a smooth curve, a few
pixels a frame at a changing velocity, with a slight zoom so the flow is not uniform; and the
cat's head from jaxstyle/examples/chelsea.png, cut out by an ellipse, moves across the screen on a
path of its own, covering and uncovering the background. Both motions are exact, so the flow
between neighbouring frames and where it holds (`SyntheticClip.visible`) are known for every
pixel, in `jaxstyle.temporal`'s convention.

The command line writes the frames only, through `jaxstyle.video_io.write_clip` (a video file, a
GIF, or a folder of PNG frames); `synthetic_clip` also returns the ground truth.
"""

import argparse
import dataclasses
import pathlib
import sys
from fractions import Fraction

import numpy as np
from PIL import Image

import jaxstyle
from jaxstyle import images, video_io
from jaxstyle.errors import JaxstyleError

ROOT = pathlib.Path(__file__).resolve().parent.parent
BACKGROUND = ROOT / "docs" / "images" / "video" / "coffee.png"
CHELSEA = pathlib.Path(jaxstyle.__file__).parent / "examples" / "chelsea.png"
CAT_HEAD = (40, 0, 390, 300)  # (left, top, right, bottom) in chelsea.png: the ellipse inscribed is the head

FRAMES, SIZE, FPS = 24, 256, 12  # the command line's defaults
MIN_SIZE = 32

# The motions, lengths as fractions of the frame's width, angles in radians per frame. Both move
# along ellipses (so a clip of any length stays inside the photo and the frame) at speeds that
# change along the way: at 256 px the camera pans 1.3-2 px a frame and the object, turning the
# other way, moves 3.7-6 px a frame, so it always moves against the background (the zoom aside, by
# 1.7 px a frame or more).
CAMERA_ORBIT, CAMERA_TURN = (0.16, 0.10), 0.05
ZOOM, ZOOM_TURN = 0.05, 0.1  # the view's scale swings within 1 +- ZOOM
OBJECT_ORBIT, OBJECT_TURN = (0.26, 0.16), 0.09
OBJECT_WIDTH = 0.34
MARGIN = 4  # pixels of photo kept beyond the view: the bicubic filter reads two


@dataclasses.dataclass
class SyntheticClip:
    """A rendered clip and its ground truth, for n frames of (h, w) pixels.

    Attributes:
      frames: n float32 (h, w, 3) RGB in [0, 1].
      backward: float32 (n - 1, h, w, 2): ``backward[i]`` is the true flow(i + 1 -> i) on frame
        i + 1's grid, (dx, dy) in pixels: `jaxstyle.temporal.warp` ``(frames[i], backward[i])``
        looks like ``frames[i + 1]`` wherever `visible`.
      visible: float32 (n - 1, h, w): 1 where the pixel of frame i + 1 was visible in frame i, 0 where
        it comes from outside frame i, was hidden behind the object there (the band the object
        uncovers), or lies on the object's antialiased rim (a mix of two motions).
      alpha: float32 (n, h, w): how much of each pixel the object covers, 1 inside its ellipse, 0
        outside, antialiased over one pixel.
    """

    frames: list[np.ndarray]
    backward: np.ndarray
    visible: np.ndarray
    alpha: np.ndarray


def cat_head(chelsea: np.ndarray) -> np.ndarray:
    """The box around the cat's head in jaxstyle/examples/chelsea.png (h, w, 3): the sprite for `synthetic_clip`."""
    left, top, right, bottom = CAT_HEAD
    return chelsea[top:bottom, left:right]


def frame_shape(size: int) -> tuple[int, int]:
    """(h, w) of the frames: ``size`` wide, 3:2, the height rounded to an even number (H.264 needs one)."""
    return 2 * round(size / 3), size


def synthetic_clip(background: np.ndarray, sprite: np.ndarray, *, frames: int = FRAMES, size: int = SIZE,
                   seed: int = 0) -> SyntheticClip:
    """A moving-camera shot of ``background`` with ``sprite`` moving across it, and its true flow.

    The camera looks at a window of the photo (resampled beforehand so that the window is about as
    many pixels as the frame): its centre moves along an ellipse and its scale swings by up to 5 %.
    The object, the ellipse inscribed in ``sprite`` (a third of the frame's width), moves in screen
    coordinates along an ellipse of its own, turning the other way. Pixels are sampled with Keys'
    bicubic filter; the object's edge is antialiased over one pixel.

    Args:
      background: the photo, (H, W, 3) RGB in [0, 1], any size (the view is cut from its middle).
      sprite: the object's picture, (h, w, 3) RGB in [0, 1] (e.g. `cat_head`).
      frames: how many frames, at least 2.
      size: the frames' width in pixels, at least 32 (see `frame_shape`).
      seed: where each motion starts and which way it turns.
    Returns:
      A `SyntheticClip`.
    Raises:
      ValueError: fewer than 2 frames, or a size under 32.
    """
    if frames < 2:
        raise ValueError(f"a clip with a flow needs at least 2 frames, got {frames}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    h, w = frame_shape(size)
    rng = np.random.default_rng(seed)
    camera_phase, zoom_phase, object_phase = rng.uniform(0, 2 * np.pi, 3)
    turn = rng.choice([-1.0, 1.0])
    t = np.arange(frames, dtype=np.float64)

    # The camera: frame pixel q shows photo point c + s (q - mid), in the resampled photo's pixels.
    need_w = (1 + ZOOM) * w + 2 * CAMERA_ORBIT[0] * w + 2 * MARGIN
    need_h = (1 + ZOOM) * h + 2 * CAMERA_ORBIT[1] * w + 2 * MARGIN
    k = max(need_w / background.shape[1], need_h / background.shape[0])
    photo = _resize(background, int(np.ceil(background.shape[1] * k)), int(np.ceil(background.shape[0] * k)))
    angle = camera_phase + turn * CAMERA_TURN * t
    centres = np.stack([(photo.shape[1] - 1) / 2 + CAMERA_ORBIT[0] * w * np.cos(angle),
                        (photo.shape[0] - 1) / 2 + CAMERA_ORBIT[1] * w * np.sin(angle)], -1)
    scales = 1 + ZOOM * np.sin(zoom_phase + ZOOM_TURN * t)
    mid = np.array([(w - 1) / 2, (h - 1) / 2])

    # The object: its sprite resized to its size on screen, centred at `positions` (screen pixels).
    sprite_w = max(4, round(OBJECT_WIDTH * w))
    sprite_h = max(4, round(sprite_w * sprite.shape[0] / sprite.shape[1]))
    texture = _resize(sprite, sprite_w, sprite_h)
    radii = (sprite_w / 2 - 1, sprite_h / 2 - 1)  # a pixel of texture beyond the rim
    angle = object_phase - turn * OBJECT_TURN * t
    positions = np.stack([mid[0] + OBJECT_ORBIT[0] * w * np.cos(angle),
                          mid[1] + OBJECT_ORBIT[1] * w * np.sin(angle)], -1)

    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    rendered, alphas = [], []
    for c, s, o in zip(centres, scales, positions):
        back = _bicubic(photo, c[0] + s * (xs - mid[0]), c[1] + s * (ys - mid[1]))
        front = _bicubic(texture, xs - o[0] + (sprite_w - 1) / 2, ys - o[1] + (sprite_h - 1) / 2)
        alpha = _ellipse(xs - o[0], ys - o[1], radii)
        rendered.append(np.clip(alpha[..., None] * front + (1 - alpha[..., None]) * back, 0, 1).astype(np.float32))
        alphas.append(alpha)

    backward, visible = [], []
    for i in range(frames - 1):
        # Background: frame i + 1's pixel q is photo point p = c' + s' (q - mid), which frame i shows
        # at mid + (p - c) / s. The object moves rigidly with its centre.
        px = centres[i + 1, 0] + scales[i + 1] * (xs - mid[0])
        py = centres[i + 1, 1] + scales[i + 1] * (ys - mid[1])
        back = np.stack([mid[0] + (px - centres[i, 0]) / scales[i] - xs,
                         mid[1] + (py - centres[i, 1]) / scales[i] - ys], -1)
        front = positions[i] - positions[i + 1]
        on_object = alphas[i + 1] >= 0.5
        flow = np.where(on_object[..., None], front, back)
        sx, sy = xs + flow[..., 0], ys + flow[..., 1]
        inside = (sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)
        # What a bilinear warp reads at the source: a pixel is visible if all of it is of its own
        # layer, so a source within a pixel of the object's rim in frame i counts as hidden.
        there = _bilinear(alphas[i], sx, sy)
        background_seen = (alphas[i + 1] == 0) & (there == 0)
        object_seen = (alphas[i + 1] == 1) & (there >= 1 - 1e-9)
        backward.append(flow.astype(np.float32))
        visible.append((inside & (background_seen | object_seen)).astype(np.float32))
    return SyntheticClip(rendered, np.stack(backward), np.stack(visible), np.stack(alphas).astype(np.float32))


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` (h, w, c) resized to (height, width, c) with Pillow's Lanczos filter, in float (no 8-bit step)."""
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., k], np.float32), "F")
                           .resize((width, height), Image.Resampling.LANCZOS)) for k in range(image.shape[-1])]
    return np.stack(channels, -1).astype(np.float64)


def _keys(distance: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel (a = -1/2) at ``distance`` >= 0."""
    d = np.abs(distance)
    near = (1.5 * d - 2.5) * d * d + 1
    far = ((-0.5 * d + 2.5) * d - 4) * d + 2
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _bicubic(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``image`` (H, W, c) at the points (x, y) (any shape), bicubic (Keys), edges repeated."""
    x0, y0 = np.floor(x), np.floor(y)
    out = 0.0
    for j in range(-1, 3):
        rows = np.clip(y0 + j, 0, image.shape[0] - 1).astype(np.intp)
        wy = _keys(y - (y0 + j))[..., None]
        for i in range(-1, 3):
            cols = np.clip(x0 + i, 0, image.shape[1] - 1).astype(np.intp)
            out = out + wy * _keys(x - (x0 + i))[..., None] * image[rows, cols]
    return out


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``image`` (H, W) at the points (x, y), bilinear, edges repeated (as `jaxstyle.temporal.warp`)."""
    x = np.clip(x, 0, image.shape[1] - 1)
    y = np.clip(y, 0, image.shape[0] - 1)
    x0 = np.minimum(np.floor(x).astype(np.intp), image.shape[1] - 2)
    y0 = np.minimum(np.floor(y).astype(np.intp), image.shape[0] - 2)
    fx, fy = x - x0, y - y0
    return ((1 - fy) * ((1 - fx) * image[y0, x0] + fx * image[y0, x0 + 1])
            + fy * ((1 - fx) * image[y0 + 1, x0] + fx * image[y0 + 1, x0 + 1]))


def _ellipse(dx: np.ndarray, dy: np.ndarray, radii: tuple[float, float]) -> np.ndarray:
    """Coverage of the ellipse with semi-axes ``radii`` centred at the origin, at offsets (dx, dy): exactly
    1 inside, 0 outside, linear over the pixel across its rim (the signed distance, to first order)."""
    a, b = radii
    r = np.sqrt((dx / a) ** 2 + (dy / b) ** 2)
    slope = np.sqrt((dx / a ** 2) ** 2 + (dy / b ** 2) ** 2)  # |grad r| * r
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = np.where(r > 0.5, (r - 1) * r / slope, -1.0)
    return np.clip(0.5 - distance, 0.0, 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help=f"a video file ({', '.join(video_io.WRITABLE_VIDEO)}), a .gif, "
                                    "or a folder name without an extension (PNG frames)")
    parser.add_argument("--frames", type=int, default=FRAMES, help="how many frames")
    parser.add_argument("--size", type=int, default=SIZE, help="width in pixels (the height is two thirds)")
    parser.add_argument("--fps", type=Fraction, default=Fraction(FPS), help="frame rate, e.g. 12 or 30000/1001")
    parser.add_argument("--seed", type=int, default=0, help="where the motions start and which way they turn")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    args = parser.parse_args(argv)
    if args.frames < 2:
        parser.error(f"--frames must be at least 2, got {args.frames}")
    if args.size < MIN_SIZE:
        parser.error(f"--size must be at least {MIN_SIZE}, got {args.size}")
    if args.fps <= 0:
        parser.error(f"--fps must be positive, got {args.fps}")
    try:
        video_io.check_output(args.out, overwrite=args.overwrite)  # refuse before rendering
        clip = synthetic_clip(images.load_image(BACKGROUND), cat_head(images.load_image(CHELSEA)),
                              frames=args.frames, size=args.size, seed=args.seed)
        video_io.write_clip(args.out, clip.frames, args.fps, overwrite=args.overwrite)
    except JaxstyleError as e:
        print(f"make_clip: error: {e}", file=sys.stderr)
        return e.exit_code
    h, w = clip.frames[0].shape[:2]
    print(f"wrote {args.out}: {args.frames} frames of {w}x{h} at {args.fps} fps (seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
