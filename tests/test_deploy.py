"""deploy/compose.yaml, checked without Docker (no image can be pulled here).

The file parses as YAML with its anchors; both replicas are built from the repo's Dockerfile with
the same settings; those settings are ones satapi accepts and name the S3 store, the MinIO
service and the Redis service of the same file; nginx balances over both replicas on the port
the image exposes; the lifecycle rules cover the store's prefix, blobs outliving their records.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from satapi.config import load_settings
from satapi.stores.s3 import S3Location

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
REPLICAS = ("satapi-a", "satapi-b")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def resolve(value: Any) -> str:
    """`${NAME:-default}` → default, as Compose does when NAME is unset."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))


def env_of(service: dict[str, Any]) -> dict[str, str]:
    return {k: resolve(v) for k, v in service["environment"].items()}


def test_every_service_is_there_and_the_replicas_are_built_alike(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert set(services) >= {*REPLICAS, "lb", "redis", "minio", "minio-setup"}
    a, b = (services[name] for name in REPLICAS)
    assert a == b  # one definition: nothing a replica must share can differ
    assert (DEPLOY / a["build"]["context"] / a["build"]["dockerfile"]).resolve() == (
        ROOT / "Dockerfile"
    )
    assert set(a["depends_on"]) == {"redis", "minio-setup"}
    assert a["depends_on"]["minio-setup"]["condition"] == "service_completed_successfully"


def test_the_replicas_settings_are_valid_and_point_at_the_services(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = env_of(compose["services"]["satapi-a"])
    monkeypatch.delenv("SATAPI_CONFIG", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(data_dir=tmp_path)
    assert settings.store_url is not None and settings.store_url.startswith("s3://")
    assert settings.aws_allow_http is True
    endpoint = urlsplit(settings.aws_endpoint_url or "")
    assert endpoint.hostname in compose["services"] and endpoint.port == 9000
    redis = urlsplit(env["SATAPI_REDIS_URL"])
    assert redis.scheme == "redis" and redis.hostname in compose["services"]
    minio = env_of(compose["services"]["minio"])
    assert settings.aws_access_key_id is not None and settings.aws_secret_access_key is not None
    assert minio["MINIO_ROOT_USER"] == settings.aws_access_key_id.get_secret_value()
    assert minio["MINIO_ROOT_PASSWORD"] == settings.aws_secret_access_key.get_secret_value()


def test_the_bucket_and_its_lifecycle_rules_match_the_store_url(compose: dict[str, Any]) -> None:
    env = env_of(compose["services"]["satapi-a"])
    location = S3Location.parse(env["SATAPI_STORE_URL"])
    script = " ".join(compose["services"]["minio-setup"]["command"])
    assert f"mc mb --ignore-existing store/{location.bucket}" in script
    rules = dict(re.findall(r"--prefix (\S+) --expire-days (\d+) store/" + location.bucket, script))
    prefix = f"{location.prefix}/"
    assert set(rules) == {f"{prefix}images/", f"{prefix}analyses/", f"{prefix}blobs/"}
    # A record never outlives the bytes it points at.
    assert int(rules[f"{prefix}blobs/"]) > int(rules[f"{prefix}images/"])


def test_nginx_balances_over_both_replicas(compose: dict[str, Any]) -> None:
    lb = compose["services"]["lb"]
    mount = next(v for v in lb["volumes"] if v.startswith("./nginx.conf:"))
    conf = (DEPLOY / mount.split(":")[0]).read_text()
    exposed = re.search(r"^EXPOSE (\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert exposed is not None
    servers = re.findall(r"^\s*server (\S+):(\d+)", conf, re.M)
    assert sorted(servers) == [(name, exposed.group(1)) for name in REPLICAS]
    assert "proxy_buffering off" in conf  # SSE events pass at once
    assert set(lb["depends_on"]) == set(REPLICAS)
    assert conf.count("{") == conf.count("}")


def test_the_job_workers_share_the_replicas_settings(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker, replica = services["worker"], services["satapi-a"]
    assert worker["command"] == ["satapi", "worker"]
    assert worker["environment"] == replica["environment"]  # the same Redis, store and caps
    assert worker["depends_on"] == replica["depends_on"]
    assert worker["healthcheck"] == {"disable": True}
    assert worker["deploy"]["replicas"] >= 2
    assert "--appendonly" in services["redis"]["command"]
    assert services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1] == (
        "yes"
    )
