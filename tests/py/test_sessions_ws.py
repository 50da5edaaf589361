"""Thread sessions through an independent client: the `websockets` package."""

import asyncio
import json

import websockets


def ws_url(broker):
    return broker.replace("http://", "ws://") + "/ws"


async def collect(ws, until="complete"):
    events = []
    while True:
        ev = json.loads(await asyncio.wait_for(ws.recv(), 15))
        events.append(ev)
        if ev["type"] == until:
            return events


def test_turn_fans_out_and_resumes(broker):
    async def run():
        async with websockets.connect(ws_url(broker)) as ws:
            await ws.send(json.dumps({"type": "hello"}))
            session = json.loads(await ws.recv())
            assert session["type"] == "session" and session["resumed"] is False
            await ws.send(json.dumps({"type": "send", "request_id": "p1", "content": "hello",
                                      "models": ["sdk-model", "sdk-tools"]}))
            first = await collect(ws, until="token")
        last = max(e["id"] for e in first if "id" in e)
        async with websockets.connect(ws_url(broker)) as ws:
            await ws.send(json.dumps({"type": "hello", "session_id": session["session_id"], "last_event_id": last}))
            again = json.loads(await ws.recv())
            assert again["resumed"] is True
            rest = await collect(ws)
        ids = [e["id"] for e in first + rest if "id" in e]
        assert ids == list(range(1, len(ids) + 1)), ids
        text = "".join(e["content"] for e in first + rest if e["type"] == "token" and e["model"] == "sdk-model")
        assert text == "[sdk-model] You said: hello. The quick brown fox jumps over the lazy dog."
        tools = [e for e in rest + first if e["type"] == "tool_end"]
        assert {t["name"] for t in tools} == {"get_weather", "get_time"}

    asyncio.run(run())


def test_invalid_json_keeps_the_connection(broker):
    async def run():
        async with websockets.connect(ws_url(broker)) as ws:
            await ws.send(json.dumps({"type": "hello"}))
            await ws.recv()
            await ws.send("{nope")
            err = json.loads(await ws.recv())
            assert err["type"] == "error" and err["code"] == "invalid_message" and "id" not in err
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await ws.recv())["type"] == "pong"

    asyncio.run(run())


def test_unknown_session_closes_4001(broker):
    async def run():
        async with websockets.connect(ws_url(broker)) as ws:
            await ws.send(json.dumps({"type": "hello", "session_id": "nope", "last_event_id": 0}))
            try:
                await asyncio.wait_for(ws.recv(), 5)
            except websockets.ConnectionClosed as closed:
                assert closed.rcvd.code == 4001
            else:
                raise AssertionError("expected close 4001")

    asyncio.run(run())
