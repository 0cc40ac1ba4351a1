"""systemd's sd_notify datagram protocol on ``$NOTIFY_SOCKET`` (a no-op without systemd)."""

from __future__ import annotations

import os
import socket


def sd_notify(*lines: str) -> bool:
    """Send ``READY=1``-style lines to the service manager; False when there is none to tell."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            # Never block the daemon on a full notification queue: a dropped ping is better.
            sock.send("\n".join(lines).encode(), socket.MSG_DONTWAIT)
    except OSError:
        return False  # the manager went away: the daemon's work matters more than the notification
    return True
