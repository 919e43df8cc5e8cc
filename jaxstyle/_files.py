"""Writing files atomically, so that a crash or a signal never leaves half a file, nor a temporary one."""

import io
import os
import pathlib
import secrets
from typing import Callable


def temporary_beside(path: str | os.PathLike, suffix: str = ".tmp") -> pathlib.Path:
    """A new hidden name in ``path``'s folder, for a file to be written there and then renamed onto ``path``.

    The name is drawn before the file is made, so that the writer's handler knows what to remove whenever
    an exception comes (a signal's `Interrupted` can come between any two lines, even inside
    `tempfile.mkstemp`, which would leave a file that no one knows of). 64 random bits keep two writers
    from drawing the same name.
    """
    path = pathlib.Path(path)
    return path.parent / f".{path.name}.{secrets.token_hex(8)}{suffix}"


def write_beside(path: str | os.PathLike, write: Callable[[pathlib.Path], None], suffix: str = ".tmp") -> None:
    """``write(tmp)`` a file at a `temporary_beside` name, then rename it onto ``path``; if anything raises
    (a signal's `Interrupted` included, at any line), the temporary file is removed and ``path`` is as it was."""
    tmp = temporary_beside(path, suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, then rename."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: pathlib.Path) -> None:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    write_beside(path, write)


def atomic_write_npz(path: str | os.PathLike, **arrays) -> None:
    """`numpy.savez` of ``arrays`` to ``path``, atomically (`atomic_write_bytes`)."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
