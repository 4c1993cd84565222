"""A free TCP port on loopback for tests that start several processes (no fixed port numbers)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port the OS reports free right now on 127.0.0.1 (bind to port 0, read it back, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
