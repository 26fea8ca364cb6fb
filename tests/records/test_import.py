"""``health import`` on real files: the 295 Synthea bundles, NDJSON, and files that are wrong."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import BACKENDS, fresh_database
from tests.services import PROJECT_ROOT, query_database


def run_health(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTH_")}
    env["HEALTH_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "health.cli", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )


@pytest.fixture(params=BACKENDS)
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return fresh_database(request, request.param, tmp_path)


def test_all_synthea_bundles_load_without_error(empty_database: str, shared_dir: Path) -> None:
    folder = shared_dir / "data" / "synthea-r4"
    result = run_health(empty_database, "import", str(folder), "--jobs", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "imported 91216 resources from 295 of 295 files" in result.stdout
    by_type = dict(
        query_database(empty_database, "SELECT res_type, count(*) FROM resources GROUP BY res_type")
    )
    assert by_type["Patient"] == 294
    assert by_type["Observation"] == 41912
    assert sum(by_type.values()) == 91216
    # Every urn:uuid reference between entries now names the stored resource.
    leftovers = query_database(
        empty_database,
        'SELECT count(*) FROM resource_versions WHERE content LIKE \'%"reference":"urn:uuid:%\'',
    )
    assert leftovers == [(0,)]
    # And the identifier index finds each patient by its Synthea identifier.
    indexed = query_database(
        empty_database,
        "SELECT count(DISTINCT rid) FROM search_token "
        "WHERE res_type = 'Patient' AND param = 'identifier'",
    )
    assert indexed == [(294,)]


def test_files_that_fail_are_reported_and_the_rest_load(
    empty_database: str, tmp_path: Path
) -> None:
    marker = uuid.uuid4().hex
    good = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": "urn:test", "value": marker}],
                },
                "request": {"method": "POST", "url": "Patient"},
            }
        ],
    }
    bad = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "gender": "robot"},
                "request": {"method": "POST", "url": "Patient"},
            }
        ],
    }
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a-good.json.gz").write_bytes(gzip.compress(json.dumps(good).encode()))
    (tmp_path / "in" / "b-bad.json").write_text(json.dumps(bad))
    (tmp_path / "in" / "c-broken.json").write_text("{not json")
    lines = [
        json.dumps(
            {"resourceType": "Observation", "status": "final", "code": {"text": f"血压 {i}"}}
        )
        for i in range(3)
    ]
    lines.append(
        json.dumps({"resourceType": "Patient", "id": f"nd-{marker[:8]}", "gender": "female"})
    )
    (tmp_path / "in" / "d-resources.ndjson").write_text("\n".join(lines) + "\n")
    result = run_health(empty_database, "import", str(tmp_path / "in"), "--jobs", "1")
    assert result.returncode == 1
    assert "imported 5 resources from 2 of 4 files" in result.stdout
    assert "b-bad.json" in result.stderr and "Patient.gender" in result.stderr
    assert "c-broken.json" in result.stderr and "not JSON" in result.stderr
    counts = dict(
        query_database(empty_database, "SELECT res_type, count(*) FROM resources GROUP BY res_type")
    )
    assert counts == {"Patient": 2, "Observation": 3}
