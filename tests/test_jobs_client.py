"""The jobs client (`submit_job`, `job`, `wait`, `job_events`, `cancel_job`) and the CLI
(`satapi jobs submit|show|watch|cancel`) against a real satapi over the real MapServer WMS,
running jobs in-process."""

from __future__ import annotations

import json

import pytest

from satapi.cli import main
from satapi.client.api import SatapiClient
from satapi.client.errors import NotFoundError
from satapi.client.events import JobProgressEvent, JobResultEvent
from satapi.models import TimeseriesRequest
from tests import test_client

pytestmark = pytest.mark.mapserver

# The client tests' satapi under uvicorn over the MapServer: without Redis it runs jobs itself.
served = test_client.served

SERIES = {
    "bbox": [10, 45, 12, 46],
    "width": 100,
    "height": 50,
    "times": ["2024-01-01", "2024-06-01"],
}


async def test_client_submits_follows_and_waits(served: str) -> None:
    async with SatapiClient(served) as client:
        job = await client.submit_job("timeseries", TimeseriesRequest.model_validate(SERIES))
        assert job.state == "queued" and job.progress.total == 2
        events = [event async for event in client.job_events(job.id)]
        assert isinstance(events[0], JobProgressEvent)
        assert isinstance(events[-1], JobResultEvent)
        done = await client.wait(job.id, poll_s=0.1, timeout_s=30)
        assert done.state == "succeeded" and done.final
        assert done.result == events[-1].result
        assert [p["time"] for p in done.result["points"]] == SERIES["times"]
        # Cancelling a finished job leaves it as it ended.
        assert (await client.cancel_job(job.id)).state == "succeeded"
        with pytest.raises(NotFoundError) as raised:
            await client.job("f" * 32)
        assert raised.value.code == "job_not_found"


def test_cli_jobs_submit_watch_show_cancel(
    served: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SATAPI_URL", served)
    params = json.dumps(SERIES)
    assert main(["jobs", "submit", "timeseries", "--params", params, "--watch"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert len(result["points"]) == 2 and not result["partial"]
    job_id = captured.err.splitlines()[0]
    assert "succeeded  2/2" in captured.err
    assert main(["jobs", "show", job_id]) == 0
    assert capsys.readouterr().out.split() == [job_id, "timeseries", "succeeded", "2/2"]
    assert main(["jobs", "show", job_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["result"] == result
    assert main(["jobs", "cancel", job_id]) == 0
    assert "succeeded" in capsys.readouterr().out
    assert main(["jobs", "watch", job_id]) == 0
    assert json.loads(capsys.readouterr().out) == result
    assert main(["jobs", "show", "0" * 32]) == 1
    assert capsys.readouterr().err.startswith("satapi: job_not_found: ")
    assert main(["jobs", "submit", "timeseries", "--params", "{nope"]) == 1
    assert "invalid_params" in capsys.readouterr().err
