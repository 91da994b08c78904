"""The link between the API processes and an engine core: length-prefixed frames on a Unix stream socket.

Each frame is a 4-byte little-endian length and one msgpack message (server.common.messages). A Unix
socket wakes the peer's poll directly; ZeroMQ, used here before, passed every message through an I/O
thread on each side, four threads per hop (round trips measured in docs/server.md, "The link without I/O
threads"). The core listens at `core_path(run_dir, index)`, one connection per API process. No torch
here.
"""

from __future__ import annotations

import socket
import struct

from server.common.messages import WireError

HEADER = struct.Struct("<I")
MAX_FRAME = 1 << 30  # the longest frame either side sends or accepts
MAX_RESULT = MAX_FRAME - (1 << 20)  # bytes of samples one result may carry (room for the message around)
CHUNK = 1 << 18  # bytes read per recv


def core_path(run_dir: str, index: int) -> str:
    """Where engine core `index` listens."""
    return f"{run_dir}/core-{index}.sock"


def pack(frame: bytes) -> bytes:
    return HEADER.pack(len(frame)) + frame


class Reader:
    """Whole frames out of a byte stream, as the bytes come in."""

    def __init__(self, max_frame: int = MAX_FRAME):
        self.buf, self.max_frame = bytearray(), max_frame

    def feed(self, data: bytes) -> list[bytes]:
        """The frames `data` completes, in order; WireError for a length past `max_frame` (the stream
        is then unusable: close it)."""
        buf = self.buf
        buf += data
        out, i, n = [], 0, len(buf)
        while n - i >= HEADER.size:
            (size,) = HEADER.unpack_from(buf, i)
            if size > self.max_frame:
                raise WireError(f"frame of {size} bytes is past the {self.max_frame}-byte bound")
            if n - i - HEADER.size < size:
                break
            out.append(bytes(buf[i + HEADER.size : i + HEADER.size + size]))
            i += HEADER.size + size
        if i:
            del buf[:i]
        return out


class Writer:
    """Bytes for a non-blocking socket: sent at once, the rest kept (in order) until it can take them."""

    def __init__(self):
        self.buf = bytearray()

    def __len__(self) -> int:
        return len(self.buf)

    def write(self, sock: socket.socket, data: bytes) -> bool:
        """Send `data` after whatever is pending; True when nothing is left pending. OSError (the peer is
        gone) propagates."""
        if self.buf:
            self.buf += data
            return self.flush(sock)
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            self.buf += data[sent:]
            return False
        return True

    def flush(self, sock: socket.socket) -> bool:
        """Send what is pending; True when nothing is left."""
        while self.buf:
            try:
                sent = sock.send(self.buf)
            except BlockingIOError:
                return False
            del self.buf[:sent]
        return True
