# Loaded by notebook kernels during the tests (IPYTHONDIR=tests/ipython): any connection to a
# non-loopback address raises, so a notebook that reaches for the network fails its nbval run.
import ipaddress as _ip
import socket as _socket

_real_connect = _socket.socket.connect


def _galcore_guarded_connect(self, address):
    host = address[0] if isinstance(address, tuple) else None
    if host is not None and host != "localhost":
        try:
            local = _ip.ip_address(host).is_loopback
        except ValueError:
            local = False
        if not local:
            raise RuntimeError(f"galcore tests: a notebook tried to connect to {address!r} (network is off)")
    return _real_connect(self, address)


_socket.socket.connect = _galcore_guarded_connect
