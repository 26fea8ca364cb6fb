"""Recorded consult files, served to those whose access reaches the patient's record.

``GET /consult/recordings/{recording id}/{file name}`` — the URL of each attachment of a
recording's DocumentReference (``consult.recording``). The file is served only if the
caller can read that DocumentReference through the records (the same access policy as
``/fhir``, and the read is on their audit trail): the specialist the consult shared the
record with, the patient's clinic; not an outsider, who gets 404 as for anything they may
not see. Range requests work, so a ``<video>`` element can seek.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from consult.call_records import RECORDING_ID_SYSTEM
from consult.recording import consult_folder
from health.core.problems import Problem
from records.api.service import RecordsContext, resources_of
from records.interactions import FhirRequest
from records.outcome import FhirError

router = APIRouter()
_RECORDING_ID = re.compile(r"^[0-9a-f]{32}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}\.(webm|mkv)$")


@router.get("/consult/recordings/{recording_id}/{file_name}", include_in_schema=False)
async def recorded_file(request: Request, recording_id: str, file_name: str) -> FileResponse:
    if not _RECORDING_ID.match(recording_id) or not _FILE_NAME.match(file_name):
        raise Problem(404, "No such recording")
    records: RecordsContext = request.app.state.records
    try:
        caller = await records.authenticate(request)
        found = await records.perform(
            caller,
            FhirRequest(
                "GET", "DocumentReference", query=f"identifier={RECORDING_ID_SYSTEM}|{recording_id}"
            ),
            base_url=records.fhir_base(request),
        )
    except FhirError as error:
        if error.status == 401:
            raise Problem(401, "Log in to see recordings", str(error)) from None
        raise Problem(404, "No such recording") from None
    documents = resources_of(found)
    wanted = f"/consult/recordings/{recording_id}/{file_name}"
    if not documents or not any(
        (c.get("attachment") or {}).get("url") == wanted for c in documents[0].get("content", [])
    ):
        raise Problem(404, "No such recording")
    related = (documents[0].get("context") or {}).get("related") or []
    consult = next(
        (
            r["reference"].split("/", 1)[1]
            for r in related
            if r.get("reference", "").startswith("ServiceRequest/")
        ),
        None,
    )
    directory: Path = request.app.state.settings.consult_recording_dir
    path = consult_folder(directory, consult or "") / recording_id / file_name
    if consult is None or not path.is_file():
        raise Problem(404, "The recording's file is not on this server")
    media_type = "video/webm" if file_name.endswith(".webm") else "video/x-matroska"
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private"})
