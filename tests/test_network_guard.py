"""The guard itself: it must stop a real attempt to reach the network, and let loopback through."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import NetworkAccessError


def test_guard_blocks_public_and_private_addresses() -> None:
    for addr in (("93.184.216.34", 80), ("10.0.0.1", 443)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(NetworkAccessError):
            s.connect(addr)
    with pytest.raises(NetworkAccessError):
        socket.create_connection(("example.com", 80), timeout=1)


def test_guard_allows_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=2):
            pass
