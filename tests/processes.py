"""Running the console script in subprocesses: with fake CPU devices, and as several `jax.distributed` processes;
and a signal this process sends itself where Python loses the handler's exception."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
from typing import Sequence

JAXSTYLE = pathlib.Path(sys.executable).with_name("jaxstyle")


def cpu_env(devices: int) -> dict[str, str]:
    """This environment with JAX on the CPU, pretending to have ``devices`` devices."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_distributed(argv: Sequence[str], processes: int = 2, *, timeout: float = 300) -> list[tuple[int, str]]:
    """``jaxstyle ARGV --distributed`` as ``processes`` processes on localhost (one CPU device each):
    each one's ``(exit code, stderr)``."""
    common = [str(JAXSTYLE), *argv, "--distributed", "--coordinator-address", f"127.0.0.1:{free_port()}",
              "--num-processes", str(processes)]
    procs = [subprocess.Popen([*common, "--process-id", str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=cpu_env(1)) for i in range(processes)]
    try:
        errs = [p.communicate(timeout=timeout)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [(p.returncode, err) for p, err in zip(procs, errs)]


class SignalInFinaliser:
    """Dropped, it raises SIGTERM in its finaliser: the handler's `report.Interrupted` comes there, and Python
    loses it (as when a signal lands in jax's garbage-collection callback)."""

    def __del__(self):
        signal.raise_signal(signal.SIGTERM)
        lost = [signal.SIGTERM]  # the handler runs at a line of the finaliser
        del lost
