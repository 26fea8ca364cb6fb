"""The signalling conversation itself: bad messages, a full room, the protocol's parser."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect

from consult.protocol import (
    MAX_MESSAGE_BYTES,
    Answer,
    Bye,
    Error,
    IceServer,
    Joined,
    Participant,
    Presence,
    ProtocolError,
    TrackInfo,
    Tracks,
    encode,
    parse_client_message,
    parse_server_message,
)
from tests.consult.conftest import (
    DEADLINE,
    INTERPRETER,
    PATIENT,
    SPECIALIST,
    TOWNSHIP_DOCTOR,
    VILLAGE_DOCTOR,
    SignallingWorker,
    token_of,
)
from tests.consult.test_call import sees


async def open_socket(
    worker: SignallingWorker, consult_id: str, who: Participant
) -> ClientConnection:
    return await connect(
        worker.url(consult_id), additional_headers={"Authorization": f"Bearer {token_of(who)}"}
    )


async def reply(socket: ClientConnection, text: str | bytes | None = None) -> dict[str, Any]:
    import asyncio

    if text is not None:
        await socket.send(text)
    return orjson.loads(await asyncio.wait_for(socket.recv(), DEADLINE))


async def test_malformed_messages_get_clear_errors_and_the_call_goes_on(
    worker: SignallingWorker,
) -> None:
    async with (
        worker.client("consult-bad", VILLAGE_DOCTOR) as village,
        worker.client("consult-bad", SPECIALIST) as specialist,
    ):
        socket = await open_socket(worker, "consult-bad", TOWNSHIP_DOCTOR)
        try:
            bad = [
                ("{not json", "invalid-json"),
                ("[1, 2]", "invalid-message"),
                ('{"type": 7}', "invalid-message"),
                ('{"type": "dance"}', "unknown-type"),
                ('{"type": "offer", "sdp": "v=0"}', "not-joined"),
                ("x" * (MAX_MESSAGE_BYTES + 1), "message-too-large"),
                (b"\x00\x01binary", "invalid-message"),
            ]
            for text, code in bad:
                answer = await reply(socket, text)
                assert (answer["type"], answer["code"]) == ("error", code), answer
                assert answer["message"]
            joined = await reply(socket, '{"type": "join"}')
            assert joined["type"] == "joined"
            assert {p["id"] for p in joined["participants"]} == {VILLAGE_DOCTOR.id, SPECIALIST.id}
            assert joined["iceServers"] == [] and joined["maxParticipants"] == 4
            for sdp, said in [
                ("v=0\r\nm=video notaport UDP/TLS/RTP/SAVPF 96\r\n", "not valid SDP"),
                ("v=0\r\nnonsense", "no audio or video"),
                ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n", "BUNDLE"),
                ({"not": "a string"}, 'its SDP as a string in "sdp"'),
            ]:
                answer = await reply(socket, orjson.dumps({"type": "offer", "sdp": sdp}).decode())
                assert answer["type"] == "error" and said in answer["message"], answer
            assert (await reply(socket, '{"type": "join"}'))["code"] == "already-joined"
            # The others saw the newcomer come, and their call never stopped.
            await village.wait_for(lambda c: TOWNSHIP_DOCTOR.id in c.present, DEADLINE)
            frames = village.received(SPECIALIST.id, "video").frames
            await village.wait_for(
                lambda c: c.received(SPECIALIST.id, "video").frames > frames + 10, DEADLINE
            )
            await specialist.wait_for(lambda c: sees(c, village), DEADLINE)
            # Leaving: a bye, the socket closes, the others see it.
            assert (await reply(socket, '{"type": "leave"}'))["type"] == "bye"
            await village.wait_for(lambda c: TOWNSHIP_DOCTOR.id not in c.present, DEADLINE)
        finally:
            await socket.close()


async def test_a_flood_of_bad_messages_closes_the_socket(worker: SignallingWorker) -> None:
    socket = await open_socket(worker, "consult-flood", PATIENT)
    for _ in range(20):
        assert (await reply(socket, "garbage"))["code"] == "invalid-json"
    assert await reply(socket) == {"type": "bye", "reason": "too many invalid messages"}
    await socket.wait_closed()
    assert socket.close_code == 1008


async def test_a_fifth_participant_is_told_the_room_is_full(worker: SignallingWorker) -> None:
    sockets = []
    try:
        for who in (VILLAGE_DOCTOR, SPECIALIST, TOWNSHIP_DOCTOR, INTERPRETER):
            sockets.append(await open_socket(worker, "consult-full", who))
            assert (await reply(sockets[-1], '{"type": "join"}'))["type"] == "joined"
        fifth = await open_socket(worker, "consult-full", PATIENT)
        sockets.append(fifth)
        refused = await reply(fifth, '{"type": "join"}')
        assert refused["type"] == "error" and refused["code"] == "room-full"
        assert "4 participants" in refused["message"]
        # When someone leaves there is room again.
        await reply(sockets[0], '{"type": "leave"}')
        assert (await reply(fifth, '{"type": "join"}'))["type"] == "joined"
    finally:
        for socket in sockets:
            await socket.close()


async def test_a_closed_socket_is_reconnecting_and_after_the_grace_period_left() -> None:
    from health.core.bus import InProcessBus

    worker = await SignallingWorker(
        InProcessBus(), media_grace_seconds=1.0, lease_seconds=1.5
    ).start()
    try:
        async with worker.client("consult-gone", SPECIALIST) as specialist:
            socket = await open_socket(worker, "consult-gone", PATIENT)
            assert (await reply(socket, '{"type": "join"}'))["type"] == "joined"
            await specialist.wait_for(lambda c: PATIENT.id in c.present, DEADLINE)
            await socket.close()  # no leave: a dropped line
            await specialist.wait_for(lambda c: PATIENT.id in c.reconnecting, DEADLINE)
            assert PATIENT.id in specialist.present
            # Not back within the grace period: gone.
            await specialist.wait_for(lambda c: PATIENT.id not in c.present, DEADLINE)
            assert PATIENT.id not in specialist.reconnecting
    finally:
        await worker.stop()


async def test_a_participant_who_comes_back_in_time_keeps_their_place(
    worker: SignallingWorker,
) -> None:
    async with worker.client("consult-back", SPECIALIST) as specialist:
        socket = await open_socket(worker, "consult-back", PATIENT)
        assert (await reply(socket, '{"type": "join"}'))["type"] == "joined"
        await specialist.wait_for(lambda c: PATIENT.id in c.present, DEADLINE)
        await socket.close()
        await specialist.wait_for(lambda c: PATIENT.id in c.reconnecting, DEADLINE)
        again = await open_socket(worker, "consult-back", PATIENT)
        try:
            assert (await reply(again, '{"type": "join"}'))["type"] == "joined"
            await specialist.wait_for(lambda c: PATIENT.id not in c.reconnecting, DEADLINE)
            assert PATIENT.id in specialist.present
        finally:
            await again.close()


@given(
    st.one_of(
        st.text(max_size=300),
        st.binary(max_size=300),
        st.from_regex(r'\{"type": ?"[a-z]{0,8}".{0,40}\}'),
    )
)
def test_the_parser_answers_anything_with_a_message_or_a_protocol_error(text: Any) -> None:
    try:
        message = parse_client_message(text)
    except ProtocolError as error:
        assert error.code and error.message
    else:
        assert orjson.loads(encode(message))["type"] in ("join", "offer", "leave")


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(
                st.sampled_from(["type", "sdp", "code", "tracks", "participant"]),
                children,
                max_size=4,
            )
        ),
        max_leaves=10,
    )
)
def test_the_client_side_parser_never_fails_otherwise(data: Any) -> None:
    try:
        parse_server_message(orjson.dumps(data))
    except ProtocolError as error:
        assert error.code


def test_server_messages_read_back_as_sent() -> None:
    someone = Participant("pract-1", "王建国", "specialist")
    messages = [
        Joined(
            someone, [Participant("p-2", "马秀兰", "village-doctor")], [IceServer(["stun:a:3478"])]
        ),
        Answer("v=0\r\n"),
        Tracks([TrackInfo("2", "video", "p-2")]),
        Presence("left", someone),
        Error("room-full", "full", in_reply_to="join"),
        Bye("left"),
    ]
    for message in messages:
        assert parse_server_message(encode(message)) == message
