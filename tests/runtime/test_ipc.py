"""The IPC channel: multiplexed requests, streams, failure on connection loss, hostile bytes."""

import asyncio
import socket

import msgpack
import pytest

from runtime.ipc import Channel, ChannelClosed, open_channel


async def pair(on_a=None, on_b=None):
    sa, sb = socket.socketpair()
    a = await open_channel(sa, on_a)
    b = await open_channel(sb, on_b)
    return a, b


async def test_many_requests_in_flight_replied_out_of_order():
    box = {}

    def serve(msg):
        async def later():
            await asyncio.sleep(0.001 * (10 - msg["n"]))
            box["b"].reply(msg["id"], {"n2": msg["n"] * 2})

        asyncio.ensure_future(later())

    a, b = await pair(on_b=serve)
    box["b"] = b
    replies = await asyncio.gather(*(a.request({"n": n}) for n in range(10)))
    assert [r["n2"] for r in replies] == [n * 2 for n in range(10)]
    a.close()


async def test_bytes_pass_through_untouched():
    box = {}
    a, b = await pair(on_b=lambda m: box["b"].reply(m["id"], {"body": m["body"]}))
    box["b"] = b
    payload = bytes(range(256)) * 1000
    assert (await a.request({"body": payload}))["body"] == payload
    a.close()


async def test_streamed_reply_chunks_then_end():
    box = {}

    def serve(msg):
        b = box["b"]
        b.reply(msg["id"], {"more": True})
        for i in range(3):
            b.send_chunk(msg["id"], f"c{i}".encode())
        b.end_stream(msg["id"])

    a, b = await pair(on_b=serve)
    box["b"] = b
    fut = a.request({})
    head = await fut
    assert head["more"]
    q = a.stream(head["re"])
    got = []
    while (item := await q.get()) is not None:
        got.append(item)
    assert got == [b"c0", b"c1", b"c2"]
    a.close()


async def test_connection_loss_fails_every_pending_request():
    closed = []
    a, b = await pair(on_b=lambda m: None)
    a.on_close = closed.append
    futs = [a.request({"x": i}) for i in range(5)]
    b.close()
    for f in futs:
        with pytest.raises(ChannelClosed):
            await f
    assert closed and a.closed
    with pytest.raises(ChannelClosed):
        a.send({"late": True})
    with pytest.raises(ChannelClosed):
        await a.request({"late": True})


async def test_undecodable_bytes_close_the_channel_instead_of_raising():
    sa, sb = socket.socketpair()
    a = await open_channel(sa)
    fut = a.request({"q": 1})
    # 0xc1 is never valid msgpack
    sb.sendall(b"\xc1\xc1\xc1")
    with pytest.raises(ChannelClosed):
        await fut
    assert a.closed
    sb.close()


async def test_no_code_execution_from_ext_types():
    sa, sb = socket.socketpair()
    seen = []
    a = await open_channel(sa, seen.append)
    sb.sendall(msgpack.packb({"op": "x", "v": msgpack.ExtType(1, b"\x80\x04K\x01.")}))
    await asyncio.sleep(0.05)
    assert seen and isinstance(seen[0]["v"], msgpack.ExtType)
    a.close()
    sb.close()


def test_channel_is_a_protocol():
    assert issubclass(Channel, asyncio.Protocol)


async def test_a_served_request_whose_handler_raises_is_answered_with_an_error():
    box = {}

    async def broken(msg):
        raise KeyError("kind")

    a, b = await pair(on_b=lambda m: box["b"].serve(m, broken(m)))
    box["b"] = b
    reply = await asyncio.wait_for(a.request({"op": "call"}), 5)
    assert reply["error"]["code"] == "internal_error" and reply["error"]["status"] == 500
    assert "KeyError" in reply["error"]["message"] and "call" in reply["error"]["message"]
    a.close()


async def test_a_served_request_cancelled_before_its_answer_is_answered_cancelled():
    box, started = {}, asyncio.Event()

    async def forever(msg):
        started.set()
        await asyncio.Event().wait()

    a, b = await pair(on_b=lambda m: box.setdefault("task", box["b"].serve(m, forever(m))))
    box["b"] = b
    fut = a.request({"op": "object"})
    await started.wait()
    box["task"].cancel()
    reply = await asyncio.wait_for(fut, 5)
    assert reply["error"]["code"] == "cancelled" and reply["error"]["status"] == 503
    a.close()


async def test_a_served_request_is_answered_once_by_its_own_reply():
    box, seen = {}, []

    async def fine(msg):
        box["b"].reply(msg["id"], {"ok": msg["n"]})

    a, b = await pair(on_b=lambda m: box["b"].serve(m, fine(m)))
    box["b"] = b
    dispatch = a._dispatch
    a._dispatch = lambda m: (seen.append(m), dispatch(m))  # every message `a` receives
    replies = await asyncio.gather(*(a.request({"n": n}) for n in range(5)))
    assert [r["ok"] for r in replies] == list(range(5))
    assert (await a.request({"n": 9}))["ok"] == 9  # the channel is in order: earlier ones are in
    assert len(seen) == 6 and all("error" not in m for m in seen)
    a.close()


@pytest.mark.parametrize("message", [[1, 2], "text", 7, {"s": 3, "d": 7}])
async def test_a_message_that_is_not_a_map_or_a_chunk_that_is_not_bytes_closes_the_channel(message):
    sa, sb = socket.socketpair()
    a = await open_channel(sa)
    fut = a.request({"q": 1})
    a._streams[3] = asyncio.Queue()  # an open stream, so the chunk's type is what is judged
    sb.sendall(msgpack.packb(message))
    with pytest.raises(ChannelClosed, match="must be a map|not bytes"):
        await fut
    assert a.closed
    sb.close()


async def test_chunks_of_a_stream_nobody_consumes_are_dropped_not_buffered():
    box = {}

    def serve(msg):
        b = box["b"]
        if "ping" in msg:
            b.reply(msg["id"], {"ok": True})
            return
        b.reply(msg["id"], {"more": True})
        b.send_chunk(msg["id"], b"x" * 1000)
        b.end_stream(msg["id"])
        b.send_chunk(12345, b"never opened")  # a stream id this side never saw

    a, b = await pair(on_b=serve)
    box["b"] = b
    a.request({}).cancel()  # its awaiter gave up (a wall-time limit, say) before the reply came
    assert (await a.request({"ping": 1}))["ok"]  # answered after all of the above was read
    assert a._streams == {}
    a.close()
    b.close()
