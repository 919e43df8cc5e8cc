"""Synthetic test images shared by the test files."""

import numpy as np


def photo(h=30, w=40, seed=1):
    """A content image: smooth colour gradients with texture and noise, every colour direction present."""
    y, x = np.mgrid[0:h, 0:w]
    im = np.stack([x / (w - 1), y / (h - 1), 0.5 + 0.3 * np.sin(x / 5) * np.cos(y / 4)], -1)
    return np.clip(im + np.random.default_rng(seed).normal(0, 0.05, im.shape), 0, 1).astype(np.float32)


def grating(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth image with texture: gradients, a sine grating and noise, RGB in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    image = np.stack([xx, yy, 0.5 + 0.4 * np.sin(12 * xx + 5 * yy)], -1) + 0.1 * rng.standard_normal((h, w, 3))
    return np.clip(image, 0, 1).astype(np.float32)


def adobe_rgb_icc() -> bytes:
    """An ICC v2 display profile with Adobe RGB (1998) primaries and gamma 563/256, built by hand.

    The colorants are Adobe RGB's, adapted to the D50 connection space
    (ICC.1:2001-04, matrix/TRC display profiles). Pillow's ImageCms makes only
    sRGB, LAB and XYZ profiles, and this machine has no profile files.
    """
    import struct

    def s15(x: float) -> bytes:
        return struct.pack(">i", round(x * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ " + bytes(4) + s15(x) + s15(y) + s15(z)

    text = b"Adobe RGB (1998) compatible, test\0"
    desc = (b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + struct.pack(">II", 0, 0)
            + struct.pack(">HB", 0, 0) + bytes(67))
    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, 563) + bytes(2)
    tags = [(b"desc", desc), (b"wtpt", xyz(0.9642, 1.0, 0.8249)), (b"rXYZ", xyz(0.6097, 0.3111, 0.0195)),
            (b"gXYZ", xyz(0.2053, 0.6257, 0.0609)), (b"bXYZ", xyz(0.1492, 0.0632, 0.7446)),
            (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve), (b"cprt", b"text" + bytes(4) + b"none\0\0\0\0")]
    offset = 128 + 4 + 12 * len(tags)
    table, data = struct.pack(">I", len(tags)), b""
    for signature, body in tags:
        body += bytes(-len(body) % 4)
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"lcms" + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ " + bytes(12)
              + b"acsp" + bytes(4 + 4 + 4 + 4 + 8) + struct.pack(">I", 0) + s15(0.9642) + s15(1.0) + s15(0.8249))
    header += bytes(128 - len(header))
    return header + table + data
