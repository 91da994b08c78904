"""The link between API processes and an engine core (server.common.frames, core_process.link,
api_process.client.CoreLink): frames arrive whole and in order however the bytes are cut, output the
socket cannot take now waits and goes out in order, a closed peer is noticed on both sides, and a
malformed length closes the connection instead of growing a buffer."""

import asyncio
import os
import socket
import tempfile

import pytest

from server.api_process.client import CoreLink
from server.common.frames import HEADER, MAX_FRAME, Reader, Writer, core_path, pack
from server.common.messages import WireError
from server.core_process.link import Listener


def test_reader_reassembles_frames_cut_anywhere():
    frames = [b"", b"a", b"x" * 300, bytes(range(256)) * 40]
    stream = b"".join(pack(f) for f in frames)
    for cut in (1, 3, 4, 5, 7, 1000):
        r, got = Reader(), []
        for i in range(0, len(stream), cut):
            got += r.feed(stream[i : i + cut])
        assert got == frames and not r.buf


def test_reader_refuses_a_length_past_the_bound():
    with pytest.raises(WireError, match="bound"):
        Reader(max_frame=100).feed(HEADER.pack(101) + b"x")
    assert Reader().max_frame == MAX_FRAME


def test_writer_keeps_what_the_socket_cannot_take_and_sends_it_in_order():
    a, b = socket.socketpair()
    a.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    w, sent = Writer(), b""
    for i in range(50):
        chunk = bytes([i]) * 10_000
        w.write(a, chunk)
        sent += chunk
    assert len(w) > 0  # nobody read: most of it waits
    got = bytearray()
    b.setblocking(False)
    while len(got) < len(sent):
        try:
            got += b.recv(1 << 16)
        except BlockingIOError:
            pass
        w.flush(a)
    assert bytes(got) == sent and len(w) == 0
    a.close(), b.close()


async def _until(cond, what: str, seconds: float = 5.0):
    for _ in range(int(seconds / 0.005)):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def test_core_link_round_trip_large_frames_and_loss():
    async def main(path):
        core = Listener(path)
        got, lost = [], []
        link = CoreLink(path, got.append, lost.append)
        link.start()
        frames = [b"small", os.urandom(3 << 20), b"", b"end"]  # 3 MB: more than either socket buffer
        for f in frames:
            assert link.send(f)

        def pump():  # the core's side, as its loop runs it
            core.poll(0)
            while core.inbox:
                cid, f = core.inbox.popleft()
                core.send(cid, f[::-1])  # answered on the connection it came from
            return len(got) == len(frames)

        await _until(pump, "the echoes")
        assert got == [f[::-1] for f in frames]
        assert len(core.conns) == 1 and not lost
        core.close()  # the core goes away: the API side hears it, and cannot send until it is back
        await _until(lambda: lost, "the loss")
        assert "closed" in lost[0] and link.sock is None
        assert not link.send(b"nobody listens")
        core = Listener(path)  # its successor: the next send connects
        assert link.send(b"again")
        await _until(lambda: core.poll(0) or core.inbox, "the frame at the new core")
        assert core.inbox.popleft()[1] == b"again"
        link.close()
        core.close()

    with tempfile.TemporaryDirectory() as d:
        asyncio.run(main(core_path(d, 0)))


def _poll_until(core: Listener, cond) -> None:
    """Run the core's side of the link until `cond()` holds (or a second passes: the assert says what)."""
    for _ in range(100):
        core.poll(0.01)
        if cond():
            return


def test_a_malformed_length_closes_only_that_connection():
    with tempfile.TemporaryDirectory() as d:
        core = Listener(core_path(d, 0))
        bad, good = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
        bad.connect(core.path), good.connect(core.path)
        bad.sendall(HEADER.pack(MAX_FRAME + 1) + b"junk")
        good.sendall(pack(b"fine"))
        _poll_until(core, lambda: core.inbox and len(core.conns) == 1)
        assert [f for _, f in core.inbox] == [b"fine"] and len(core.conns) == 1
        assert bad.recv(10) == b""  # closed by the core
        bad.close(), good.close()
        core.close()
        assert not os.path.exists(core_path(d, 0))


def test_results_sent_before_the_core_went_are_delivered_even_when_a_send_fails_first():
    async def main(path):
        core = Listener(path)
        got, lost = [], []
        link = CoreLink(path, got.append, lost.append)
        link.start()
        assert link.send(b"req-1")
        await _until(lambda: core.poll(0) or core.inbox, "the request at the core")
        cid, _ = core.inbox.popleft()
        core.send(cid, b"done-1")  # the answer leaves the core, which dies right after
        core.close()
        assert not link.send(b"req-2")  # a handler sends before the reader callback ran: EPIPE
        assert got == [b"done-1"] and len(lost) == 1

    with tempfile.TemporaryDirectory() as d:
        asyncio.run(main(core_path(d, 0)))


def test_a_closed_connection_drops_its_waiting_frames_and_tells_the_core():
    with tempfile.TemporaryDirectory() as d:
        closed = []
        core = Listener(core_path(d, 0), on_close=closed.append)
        gone, stays = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
        gone.connect(core.path), stays.connect(core.path)
        gone.sendall(pack(b"a") + pack(b"b"))
        stays.sendall(pack(b"c"))
        _poll_until(core, lambda: len(core.inbox) == 3)
        (gone_id,) = {cid for cid, f in core.inbox if f == b"a"}
        inbox = core.inbox  # what the core's receive() is reading when a send of its closes `gone`
        gone.close()
        _poll_until(core, lambda: closed)
        assert closed == [gone_id] and [f for _, f in core.inbox] == [b"c"]
        assert core.inbox is inbox  # dropped in place: no frame of `stays` is read twice
        stays.close()
        core.close()
