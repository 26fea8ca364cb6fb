"""``health consult join``: a Python participant from the command line, and what it prints."""

from __future__ import annotations

import asyncio
import os
import sys

import orjson

from tests.consult.conftest import DEADLINE, SPECIALIST, VILLAGE_DOCTOR, SignallingWorker, token_of
from tests.services import PROJECT_ROOT


async def health(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTH_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "health.cli",
        *args,
        cwd=PROJECT_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_command_joins_and_prints_one_line_of_what_it_received(
    worker: SignallingWorker,
) -> None:
    async with worker.client("consult-cli", SPECIALIST) as specialist:
        command = asyncio.create_task(
            health(
                "consult",
                "join",
                "consult-cli",
                "--token",
                token_of(VILLAGE_DOCTOR),
                "--server",
                f"http://127.0.0.1:{worker.port}",
                "--duration",
                "4",
            )
        )
        # The command's test pattern reaches the specialist, under the command's name.
        await specialist.wait_for(
            lambda c: c.received(VILLAGE_DOCTOR.id, "video").frames >= 10, DEADLINE
        )
        assert specialist.received(VILLAGE_DOCTOR.id, "video").picture_of == VILLAGE_DOCTOR.id
        code, out, err = await asyncio.wait_for(command, DEADLINE * 2)
        assert code == 0, err[-2000:]
        assert len(out.strip().splitlines()) == 1
        summary = orjson.loads(out)
        assert summary["participant"]["id"] == VILLAGE_DOCTOR.id
        assert [p["id"] for p in summary["participantsSeen"]] == [SPECIALIST.id]
        received = {(t["participantId"], t["kind"]): t for t in summary["tracks"]}
        assert received[(SPECIALIST.id, "video")]["frames"] > 0
        assert received[(SPECIALIST.id, "video")]["bytes"] > 0
        assert received[(SPECIALIST.id, "audio")]["frames"] > 0
        assert summary["errors"] == []
        await specialist.wait_for(lambda c: VILLAGE_DOCTOR.id not in c.present, DEADLINE)


async def test_a_refused_join_is_reported_and_fails(worker: SignallingWorker) -> None:
    code, out, _ = await health(
        "consult",
        "join",
        "consult-cli-2",
        "--token",
        "not-a-token",
        "--server",
        f"http://127.0.0.1:{worker.port}",
        "--duration",
        "1",
    )
    assert code == 1
    summary = orjson.loads(out)
    assert summary["errors"] and "could not join" in summary["errors"][0]["message"]
