"""Call signalling end to end over the WebSocket, and a real WebRTC connection through it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import replace
from typing import Any

import pytest
import trio

from tests.conftest import Server, start_server
from tests.helpers import Account, Client, pair


async def calls_of(client: Client, who: Account) -> list[dict]:
    r = await client.http.get("/api/calls", headers=who.headers)
    assert r.status_code == 200
    return r.json()["calls"]  # type: ignore[no-any-return]


async def test_offer_rings_every_device_first_answer_wins_then_ice_and_end(
        client: Client) -> None:
    a, b, cid = await pair(client)
    async with client.ws(a) as wa, client.ws(b) as phone, client.ws(b) as laptop:
        ring = await wa.request("call_offer", {"recipient_id": b.id, "media": "video",
                                               "offer": "v=0 offer-sdp"}, "call_ringing")
        assert ring["type"] == "call_ringing"
        call_id = ring["payload"]["call_id"]
        uuid.UUID(call_id)  # the server assigned it
        for device in (phone, laptop):
            offer = await device.expect("call_offer", call_id=call_id)
            assert offer["payload"] == offer["payload"] | {
                "caller_id": a.id, "media": "video", "offer": "v=0 offer-sdp"}
        # caller ICE before the answer reaches every ringing device
        await wa.send("ice_candidate", {"call_id": call_id, "candidate": {"candidate": "c1"}})
        for device in (phone, laptop):
            await device.expect("ice_candidate", call_id=call_id, candidate={"candidate": "c1"})

        await laptop.send("call_answer", {"call_id": call_id, "answer": "v=0 answer-sdp"})
        ans = await wa.expect("call_answer", call_id=call_id)
        assert ans["payload"]["answer"] == "v=0 answer-sdp" and ans["payload"]["callee_id"] == b.id
        await phone.expect("call_answered_elsewhere", call_id=call_id)
        late = await phone.request("call_answer", {"call_id": call_id, "answer": "x"}, "never")
        assert late["type"] == "error" and late["payload"]["code"] == "call_not_ringing"

        # ICE is relayed only between the two devices in the call
        await wa.send("ice_candidate", {"call_id": call_id, "candidate": {"candidate": "c2"}})
        got = await laptop.expect("ice_candidate", candidate={"candidate": "c2"})
        assert got["payload"]["from"] == a.id
        await phone.none("ice_candidate", candidate={"candidate": "c2"})
        await laptop.send("ice_candidate", {"call_id": call_id, "candidate": {"candidate": "c3"}})
        assert (await wa.expect("ice_candidate", candidate={"candidate": "c3"}))["payload"]["from"] == b.id
        err = await phone.request("ice_candidate", {"call_id": call_id, "candidate": {}}, "never")
        assert err["payload"]["code"] == "not_in_call"

        await wa.send("call_end", {"call_id": call_id})
        end = await laptop.expect("call_end", call_id=call_id)
        assert end["payload"]["status"] == "ended"
    [record] = await calls_of(client, a)
    assert record["status"] == "ended" and record["direction"] == "outgoing"
    assert record["answered_at"] and record["ended_at"] and record["media"] == "video"
    [theirs] = await calls_of(client, b)
    assert theirs["id"] == call_id and theirs["direction"] == "incoming"


async def test_reject_busy_offline_and_client_call_id(client: Client) -> None:
    a, b, cid = await pair(client)
    c = await client.register()
    await client.conversation(c, b)
    async with client.ws(a) as wa:
        # b is offline: missed at once, recorded
        off = await wa.request("call_offer", {"conversation_id": cid, "offer": "sdp"},
                               "call_end")
        assert off["payload"]["status"] == "missed" and off["payload"]["reason"] == "offline"
        async with client.ws(b) as wb, client.ws(c) as wc:
            my_id = f"call_{uuid.uuid4().hex[:8]}"  # client-chosen, seed style
            ring = await wa.request("call_offer", {"call_id": my_id, "conversation_id": cid,
                                                   "offer": "sdp"}, "call_ringing")
            assert ring["payload"]["call_id"] == my_id
            await wb.expect("call_offer", call_id=my_id)
            # c calls b, who is in a call: busy
            busy = await wc.request("call_offer", {"recipient_id": b.id, "offer": "sdp"},
                                    "call_reject")
            assert busy["type"] == "call_reject" and busy["payload"]["reason"] == "busy"
            dup = await wc.request("call_offer", {"call_id": my_id, "recipient_id": b.id,
                                                  "offer": "sdp"}, "never")
            # someone else's live call id: not revealed (not_found, never call_exists)
            assert dup["payload"]["code"] == "not_found"
            bad = await wc.request("call_offer", {"call_id": "no spaces!", "recipient_id": b.id,
                                                  "offer": "sdp"}, "never")
            assert bad["payload"]["code"] == "invalid_request"
            await wb.send("call_reject", {"call_id": my_id, "reason": "declined"})
            rej = await wa.expect("call_reject", call_id=my_id)
            assert rej["payload"]["reason"] == "declined"
    statuses = sorted(x["status"] for x in await calls_of(client, b))
    assert statuses == ["busy", "missed", "rejected"]


async def test_outsider_cannot_call_and_bad_call_frames_get_errors(client: Client) -> None:
    a, b, cid = await pair(client)
    stranger = await client.register()
    async with client.ws(stranger) as ws, client.ws(b) as wb:
        for payload, code in [
            ({"recipient_id": b.id, "offer": "sdp"}, "not_a_contact"),
            ({"conversation_id": cid, "offer": "sdp"}, "not_found"),
            ({"recipient_id": "nope", "offer": "sdp"}, "invalid_request"),
            ({"offer": "sdp"}, "invalid_request"),
            ({"recipient_id": b.id}, "invalid_payload"),
            ({"recipient_id": b.id, "offer": "sdp", "media": "hologram"}, "invalid_payload"),
        ]:
            err = await ws.request("call_offer", payload, "never")
            assert err["type"] == "error" and err["payload"]["code"] == code, (payload, err)
        await wb.none("call_offer")
        for type_ in ("call_answer", "call_end", "call_reject", "ice_candidate"):
            err = await ws.request(type_, {"call_id": str(uuid.uuid4()), "answer": "x"}, "never")
            assert err["payload"]["code"] == "call_not_found"
        assert (await ws.request("ping", {}, "pong"))["type"] == "pong"


async def test_disconnect_mid_call_ends_it_for_the_other_side(client: Client) -> None:
    a, b, cid = await pair(client)
    async with client.ws(a) as wa:
        async with client.ws(b) as wb:
            ring = await wa.request("call_offer", {"recipient_id": b.id, "offer": "sdp"},
                                    "call_ringing")
            call_id = ring["payload"]["call_id"]
            await wb.expect("call_offer")
            await wb.send("call_answer", {"call_id": call_id, "answer": "sdp"})
            await wa.expect("call_answer")
        end = await wa.expect("call_end", call_id=call_id)
        assert end["payload"]["reason"] == "disconnected"
    [record] = await calls_of(client, a)
    assert record["status"] == "ended" and record["end_reason"] == "disconnected"


async def test_caller_disconnect_while_ringing_cancels(client: Client) -> None:
    a, b, cid = await pair(client)
    async with client.ws(b) as wb:
        async with client.ws(a) as wa:
            await wa.request("call_offer", {"recipient_id": b.id, "offer": "sdp"}, "call_ringing")
            await wb.expect("call_offer")
        end = await wb.expect("call_end")
        assert end["payload"]["status"] == "cancelled"


async def test_unanswered_call_is_missed_after_the_ring_timeout(server: Server) -> None:
    async with trio.open_nursery() as nursery:
        srv = await start_server(nursery, replace(server.settings, ring_timeout=0.5))
        client = srv.client()
        a, b, cid = await pair(client)
        async with client.ws(a) as wa, client.ws(b) as wb:
            ring = await wa.request("call_offer", {"recipient_id": b.id, "offer": "sdp"},
                                    "call_ringing")
            call_id = ring["payload"]["call_id"]
            end = await wa.expect("call_end", call_id=call_id, wait=3)
            assert end["payload"] == end["payload"] | {"status": "missed", "reason": "timeout"}
            await wb.expect("call_end", call_id=call_id)
        [record] = await calls_of(client, b)
        assert record["status"] == "missed"
        await client.aclose()
        srv.shutdown.set()


async def test_glare_resolves_to_one_call(client: Client) -> None:
    a, b, cid = await pair(client)
    low, high = sorted([a, b], key=lambda x: x.id)
    async with client.ws(low) as wl, client.ws(high) as wh:
        first = await wh.request("call_offer", {"recipient_id": low.id, "offer": "h"},
                                 "call_ringing")
        await wl.expect("call_offer")
        second = await wl.request("call_offer", {"recipient_id": high.id, "offer": "l"},
                                  "call_ringing")
        # the smaller user id's call survives; the other is cancelled for both
        assert second["type"] == "call_ringing"
        kept = second["payload"]["call_id"]
        gone = await wh.expect("call_end", call_id=first["payload"]["call_id"])
        assert gone["payload"]["reason"] == "glare" and gone["payload"]["kept_call_id"] == kept
        await wh.expect("call_offer", call_id=kept)
        # the same decision when the larger id offers second
        await wl.send("call_end", {"call_id": kept})
        await wh.expect("call_end", call_id=kept)
        r1 = await wl.request("call_offer", {"recipient_id": high.id, "offer": "l"},
                              "call_ringing")
        await wh.expect("call_offer")
        r2 = await wh.request("call_offer", {"recipient_id": low.id, "offer": "h"}, "call_end")
        assert r2["payload"]["reason"] == "glare"
        assert r2["payload"]["kept_call_id"] == r1["payload"]["call_id"]


async def test_ice_servers_with_turn_rest_credentials(server: Server) -> None:
    async with trio.open_nursery() as nursery:
        srv = await start_server(nursery, replace(
            server.settings, stun_urls=("stun:stun.example.org:3478",),
            turn_urls=("turn:turn.example.org:3478?transport=udp",), turn_secret="s3cret"))
        client = srv.client()
        a = await client.register()
        r = await client.http.get("/api/ice-servers", headers=a.headers)
        assert r.status_code == 200
        stun, turn = r.json()["ice_servers"]
        assert stun == {"urls": ["stun:stun.example.org:3478"]}
        expiry, user = turn["username"].split(":")
        assert user == a.id and int(expiry) > 0
        expected = base64.b64encode(hmac.new(b"s3cret", turn["username"].encode(),
                                             hashlib.sha1).digest()).decode()
        assert turn["credential"] == expected
        assert r.json()["iceServers"] == r.json()["ice_servers"]
        assert (await client.http.get("/api/ice-servers")).status_code == 401
        await client.aclose()
        srv.shutdown.set()


async def test_real_webrtc_peers_connect_through_chatsrv_signalling(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two aiortc peers: offer, answer and every ICE candidate cross chatsrv's WebSocket
    only (candidates are stripped from the SDPs); then a data channel message crosses."""
    a, b, _ = await pair(client)
    async with client.ws(a) as wa, client.ws(b) as wb:
        await webrtc_call(wa, wb, b.id, monkeypatch)


async def webrtc_call(wa: Any, wb: Any, callee_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real WebRTC connection between two aiortc peers whose signalling goes only through
    the two sockets given (the caller's and the callee's, maybe on different nodes)."""
    aiortc = pytest.importorskip("aiortc")
    import aioice.ice
    from aiortc.sdp import candidate_from_sdp
    from trio_asyncio import aio_as_trio

    # loopback only: no traffic to any other address
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])

    def split_sdp(sdp: str) -> tuple[str, list[dict]]:
        lines, candidates, mid, index = [], [], None, -1
        for line in sdp.splitlines():
            if line.startswith("m="):
                index += 1
            if line.startswith("a=mid:"):
                mid = line[len("a=mid:"):]
            if line.startswith("a=candidate:"):
                candidates.append({"candidate": line[2:], "sdpMid": mid, "sdpMLineIndex": index})
            elif not line.startswith("a=end-of-candidates"):
                lines.append(line)
        return "\r\n".join(lines) + "\r\n", candidates

    async def add_candidate(pc, init: dict) -> None:  # type: ignore[no-untyped-def]
        cand = candidate_from_sdp(init["candidate"].split(":", 1)[1])
        cand.sdpMid = init["sdpMid"]
        cand.sdpMLineIndex = init["sdpMLineIndex"]
        await aio_as_trio(pc.addIceCandidate)(cand)

    config = aiortc.RTCConfiguration(iceServers=[])
    caller = aiortc.RTCPeerConnection(config)
    callee = aiortc.RTCPeerConnection(config)
    received = trio.Event()
    got: list[str] = []
    opened = trio.Event()
    token = trio.lowlevel.current_trio_token()

    channel = caller.createDataChannel("chat")
    channel.on("open", lambda: token.run_sync_soon(opened.set))

    @callee.on("datachannel")
    def _on_channel(ch) -> None:  # type: ignore[no-untyped-def]
        @ch.on("message")
        def _on_message(message: str) -> None:
            got.append(message)
            token.run_sync_soon(received.set)

    try:
        with trio.fail_after(30):
            offer = await aio_as_trio(caller.createOffer)()
            await aio_as_trio(caller.setLocalDescription)(offer)
            sdp, caller_cands = split_sdp(caller.localDescription.sdp)
            assert caller_cands, "the caller gathered no loopback candidate"
            ring = await wa.request("call_offer", {"recipient_id": callee_id, "offer": sdp},
                                    "call_ringing")
            call_id = ring["payload"]["call_id"]
            for cand in caller_cands:
                await wa.send("ice_candidate", {"call_id": call_id, "candidate": cand})

            incoming = await wb.expect("call_offer", call_id=call_id)
            assert "a=candidate" not in incoming["payload"]["offer"]
            await aio_as_trio(callee.setRemoteDescription)(
                aiortc.RTCSessionDescription(incoming["payload"]["offer"], "offer"))
            for _ in caller_cands:
                relayed = await wb.expect("ice_candidate", call_id=call_id)
                await add_candidate(callee, relayed["payload"]["candidate"])
            answer = await aio_as_trio(callee.createAnswer)()
            await aio_as_trio(callee.setLocalDescription)(answer)
            answer_sdp, callee_cands = split_sdp(callee.localDescription.sdp)
            await wb.send("call_answer", {"call_id": call_id, "answer": answer_sdp})
            for cand in callee_cands:
                await wb.send("ice_candidate", {"call_id": call_id, "candidate": cand})

            answered = await wa.expect("call_answer", call_id=call_id)
            await aio_as_trio(caller.setRemoteDescription)(
                aiortc.RTCSessionDescription(answered["payload"]["answer"], "answer"))
            for _ in callee_cands:
                relayed = await wa.expect("ice_candidate", call_id=call_id)
                await add_candidate(caller, relayed["payload"]["candidate"])

            await opened.wait()
            assert caller.connectionState == "connected"
            channel.send("hello over the data channel")
            await received.wait()
            assert got == ["hello over the data channel"]
            await wa.send("call_end", {"call_id": call_id})
            await wb.expect("call_end", call_id=call_id)
    finally:
        with trio.move_on_after(5, shield=True):
            await aio_as_trio(caller.close)()
            await aio_as_trio(callee.close)()
