"""Settings: one `Settings` object from defaults, an optional TOML file and `SATAPI_*` variables."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_ENV_VAR = "SATAPI_CONFIG"

GIBS_URL = "https://gibs.earthdata.nasa.gov/wms/epsg4326/best/wms.cgi"
EOX_URL = "https://tiles.maps.eox.at/wms"
EOX_ATTRIBUTION = (
    "Sentinel-2 cloudless - https://s2maps.eu by EOX IT Services GmbH "
    "(Contains modified Copernicus Sentinel data)"
)

# --- Sentinel Hub / CDSE Process API providers ---------------------------------------
CDSE_URL = "https://sh.dataspace.copernicus.eu"
CDSE_OAUTH_URL = (
    "https://identity.dataspace.copernicus.eu/auth/realms/CDSE/protocol/openid-connect/token"
)
SENTINELHUB_URL = "https://services.sentinel-hub.com"
SENTINELHUB_OAUTH_URL = (
    "https://services.sentinel-hub.com/auth/realms/main/protocol/openid-connect/token"
)
COPERNICUS_ATTRIBUTION = "Contains modified Copernicus Sentinel data"
# Built-in providers that need credentials: left out until client_id and client_secret are given.
CREDENTIAL_BUILTINS = frozenset({"cdse", "sentinelhub"})


# Fields one kind of provider has no use for: `check-config` leaves them out.
WMS_ONLY = frozenset({"version", "default_layer", "params", "secret_params", "check_time"})
SENTINELHUB_ONLY = frozenset(
    {
        "token_url",
        "client_id",
        "client_secret",
        "collection",
        "evalscript",
        "max_cloud_coverage",
        "mosaicking_order",
    }
)


class ProviderConfig(BaseModel):
    """One imagery server the service fetches from: a WMS server, or a Sentinel Hub Process API."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["wms", "sentinelhub"] = Field(
        default="wms", description="`wms` (GetMap) or `sentinelhub` (Process API, OAuth)."
    )
    url: str = Field(
        description=(
            "wms: the GetMap/GetCapabilities endpoint, without a query string; "
            "sentinelhub: the API base (the Process API is {url}/api/v1/process)."
        )
    )
    version: Literal["1.1.1", "1.3.0"] = "1.3.0"
    default_layer: str | None = Field(
        default=None,
        description="Required for wms; a sentinelhub provider's layer is its collection.",
    )
    title: str | None = None
    attribution: str | None = None
    max_concurrency: int = Field(default=8, ge=1, le=1000)
    min_interval_s: float = Field(default=0.0, ge=0.0, le=60.0)
    params: dict[str, str] = Field(default_factory=dict)
    secret_params: dict[str, SecretStr] = Field(default_factory=dict)
    enabled: bool = Field(default=True, description="false removes a built-in provider.")
    check_time: bool = Field(
        default=True,
        description=(
            "wms: refuse a time the layer's capabilities do not list (time_not_available); "
            "false for servers whose capabilities do not tell their dates truthfully."
        ),
    )

    max_size: int | None = Field(
        default=None,
        ge=16,
        le=16384,
        description=(
            "The largest width or height the provider serves in one request; larger images "
            "are fetched as a grid of tiles and stitched. Default: the WMS capabilities' "
            "MaxWidth/MaxHeight, 2500 for sentinelhub."
        ),
    )

    # kind = "sentinelhub": OAuth client credentials and the Process API request.
    token_url: str | None = Field(
        default=None, description="sentinelhub: the OAuth2 token endpoint (client credentials)."
    )
    client_id: str | None = None
    client_secret: SecretStr | None = Field(
        default=None, description="sentinelhub: redacted everywhere, like secret_params."
    )
    collection: str = Field(
        default="sentinel-2-l2a",
        pattern=r"^[A-Za-z0-9_.:\-]{1,128}$",
        description="sentinelhub: input.data[].type, e.g. sentinel-2-l2a; the provider's layer.",
    )
    evalscript: str | None = Field(
        default=None,
        max_length=100_000,
        description="sentinelhub: the evalscript; default true colour (B04, B03, B02, gain 2.5).",
    )
    max_cloud_coverage: float = Field(default=100.0, ge=0.0, le=100.0)
    mosaicking_order: Literal["mostRecent", "leastRecent", "leastCC"] = "leastCC"

    @field_validator("url", "token_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL with a host")
        if parts.username or parts.password:
            raise ValueError("must not contain credentials; use secret_params")
        if parts.query or parts.fragment:
            raise ValueError("must not contain a query string; use params")
        return value

    @model_validator(mode="after")
    def _check_kind(self) -> ProviderConfig:
        # Settings that the other kind would silently ignore are refused, naming the field.
        if self.kind == "wms":
            if not self.default_layer:
                raise ValueError("a wms provider needs default_layer")
            given = [
                n
                for n in ("token_url", "client_id", "client_secret", "evalscript")
                if getattr(self, n) is not None
            ]
            if given:
                raise ValueError(f'{", ".join(given)}: only for kind = "sentinelhub"')
        else:
            if self.token_url is None:
                raise ValueError("a sentinelhub provider needs token_url")
            given = [n for n in ("default_layer", "params", "secret_params") if getattr(self, n)]
            if given:
                raise ValueError(
                    f'{", ".join(given)}: not used by kind = "sentinelhub" '
                    "(its layer is `collection`)"
                )
        return self

    def shown(self) -> dict[str, Any]:
        """This provider's settings as `check-config` prints them: only the fields its kind
        uses, secrets masked."""
        other = SENTINELHUB_ONLY if self.kind == "wms" else WMS_ONLY
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in other}

    @property
    def layer(self) -> str:
        """The layer used when a request names none: default_layer (wms) or the collection."""
        return self.default_layer if self.kind == "wms" and self.default_layer else self.collection

    @property
    def tile_limit(self) -> int | None:
        """The configured largest width/height of one request (`max_size`; 2500 px for the
        Process API), or None to go by the capabilities alone."""
        if self.max_size is not None:
            return self.max_size
        return 2500 if self.kind == "sentinelhub" else None

    @property
    def mosaics_scenes(self) -> bool:
        """True when the provider itself picks and mosaics the scenes of a time interval
        (sentinelhub, with `mosaickingOrder`), so it has no list of dates to choose from."""
        return self.kind == "sentinelhub"

    @property
    def has_credentials(self) -> bool:
        """True when both OAuth client credentials are set (sentinelhub)."""
        return bool(self.client_id) and bool(
            self.client_secret and self.client_secret.get_secret_value()
        )

    @property
    def origin(self) -> tuple[str, str, int]:
        """(scheme, host, port) of the endpoint, with the scheme's default port filled in."""
        return url_origin(self.url)

    @property
    def origins(self) -> list[tuple[str, str, int]]:
        """Every origin the service connects to for this provider (endpoint, token endpoint)."""
        return [url_origin(u) for u in (self.url, self.token_url) if u is not None]


def url_origin(url: str) -> tuple[str, str, int]:
    """(scheme, lower-case host, port) of an absolute URL; ValueError if it has none."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if not scheme or not host:
        raise ValueError(f"not an absolute URL: {url!r}")
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, host, port


def builtin_providers() -> dict[str, ProviderConfig]:
    """The public, keyless providers the service knows out of the box."""
    return {
        "gibs": ProviderConfig(
            url=GIBS_URL,
            version="1.3.0",
            default_layer="MODIS_Terra_CorrectedReflectance_TrueColor",
            title="NASA GIBS (EPSG:4326, best)",
            attribution="NASA EOSDIS GIBS",
            max_concurrency=8,
        ),
        "eox": ProviderConfig(
            url=EOX_URL,
            version="1.3.0",
            default_layer="s2cloudless-2023",
            title="EOX Sentinel-2 cloudless",
            attribution=EOX_ATTRIBUTION,
            max_concurrency=4,
        ),
        # Disabled until client_id and client_secret are given (see Settings._drop_disabled).
        "cdse": ProviderConfig(
            kind="sentinelhub",
            url=CDSE_URL,
            token_url=CDSE_OAUTH_URL,
            title="Copernicus Data Space Ecosystem (Process API)",
            attribution=COPERNICUS_ATTRIBUTION,
            max_concurrency=4,
        ),
        "sentinelhub": ProviderConfig(
            kind="sentinelhub",
            url=SENTINELHUB_URL,
            token_url=SENTINELHUB_OAUTH_URL,
            title="Sentinel Hub (Process API)",
            attribution=COPERNICUS_ATTRIBUTION,
            max_concurrency=4,
        ),
    }


def _is_blank(value: Any) -> bool:
    """True for an empty or whitespace-only string (or SecretStr)."""
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    return isinstance(text, str) and not text.strip()


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every tunable of the service. Environment (`SATAPI_<NAME>`) wins over the TOML file."""

    model_config = SettingsConfigDict(
        env_prefix="SATAPI_",
        extra="forbid",
        validate_default=True,
        populate_by_name=True,
    )

    data_dir: Path = Path("data")
    default_provider: str = "gibs"
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)

    max_concurrent_wms: int = Field(default=20, ge=1, le=10_000)
    max_waiting: int = Field(default=1000, ge=0, le=1_000_000)
    wms_connect_timeout_s: float = Field(default=5.0, gt=0)
    wms_read_timeout_s: float = Field(default=30.0, gt=0)
    wms_total_timeout_s: float = Field(default=120.0, gt=0)
    max_image_px: int = Field(default=4096, ge=16, le=16384)
    max_image_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # How a downloaded PNG is proved whole: "crc" checks its structure and every chunk's CRC-32
    # (truncation, damage in transit); "inflate" also inflates its image data (a server's broken
    # zlib stream under correct CRCs), at ~30x the CPU. See imaging.py.
    png_check: Literal["crc", "inflate"] = "crc"
    # Areas (`geometry`, `resolution`): the most pixels one image may have (a larger one is
    # fetched in tiles and stitched), and the most vertices a geometry may have.
    max_area_pixels: int = Field(default=25_000_000, ge=256, le=400_000_000)
    max_geometry_vertices: int = Field(default=10_000, ge=4, le=1_000_000)
    retry_attempts: int = Field(default=3, ge=1, le=10)
    retry_wait_initial_s: float = Field(default=0.5, ge=0)
    retry_wait_max_s: float = Field(default=10.0, ge=0)
    cache_ttl_s: float = Field(default=3600.0, ge=0)
    store_max_bytes: int = Field(default=2 * 1024**3, ge=1024 * 1024)
    capabilities_ttl_s: float = Field(default=3600.0, ge=0)

    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    request_timeout_s: float = Field(default=300.0, gt=0)

    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # prometheus-client reads the same variable when it is imported: only the environment works.
    prometheus_multiproc_dir: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("prometheus_multiproc_dir", "PROMETHEUS_MULTIPROC_DIR"),
        description="Several worker processes: where their metrics files go (see operations docs).",
    )

    anthropic_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "anthropic_api_key", "SATAPI_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY"
        ),
    )
    anthropic_base_url: str | None = None
    anthropic_model: str = "claude-sonnet-5-5"
    anthropic_max_retries: int = Field(default=2, ge=0, le=10)
    ai_max_long_edge: int = Field(default=1568, ge=64, le=8000)
    ai_max_pixels: int = Field(default=1_150_000, ge=4096)
    ai_max_tokens: int = Field(default=1500, ge=16)

    # AI cap: concurrent Claude calls, and how many may queue before 503 ai_busy.
    max_concurrent_ai: int = Field(default=16, ge=1, le=10_000)
    max_ai_waiting: int = Field(default=200, ge=0, le=1_000_000)

    # -- Scale-out: Redis coordination --
    redis_url: SecretStr | None = Field(
        default=None,
        description="redis://[:password@]host:port/db (or rediss://, unix://): caps, waiting "
        "limit and single flight shared by every process using it. Unset: per process.",
    )
    redis_lease_s: float = Field(
        default=15.0,
        ge=1.0,
        le=600.0,
        description="A permit's lease: a killed holder's permits return within this time.",
    )
    worker_processes: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Processes sharing the caps without Redis (set by `satapi serve --workers`).",
    )

    max_timeseries_dates: int = Field(default=24, ge=1, le=1000)

    # --- jobs: long work submitted to POST /api/jobs (see docs/jobs.md) ---------------------------
    jobs_in_process: bool | None = Field(
        default=None,
        description="true: `satapi serve` runs jobs itself; false: only `satapi worker` "
        "processes do (needs redis_url). Unset: in-process without redis_url, workers with it.",
    )
    job_ttl_s: float = Field(
        default=86400.0, ge=60, description="How long a job and its result are kept."
    )
    job_heartbeat_s: int = Field(
        default=10,
        ge=2,
        le=300,
        description="A running job's worker touches it this often over; a job untouched for "
        "longer is taken over by another worker (at most about heartbeat + sweep + 5 s).",
    )
    job_sweep_s: int = Field(
        default=5, ge=1, le=300, description="How often workers look for jobs of dead workers."
    )
    job_poll_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often a running job saves its progress and checks for a cancel.",
    )
    job_attempts: int = Field(
        default=5, ge=1, le=100, description="Runs of one job at most (a dead worker's included)."
    )
    worker_concurrency: int = Field(
        default=4, ge=1, le=1000, description="Jobs one `satapi worker` runs at once."
    )
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="host[:port] (or scheme://host:port) entries a job's webhook may go to.",
    )
    webhook_attempts: int = Field(default=5, ge=1, le=20)
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=300)

    # Clearest date: candidate previews and the in-memory selection cache.
    preview_px: int = Field(
        default=256, ge=16, le=2048, description="Long edge of a candidate's preview, in pixels."
    )
    selection_cache_entries: int = Field(default=1024, ge=0, le=1_000_000)
    cpu_threads: int = Field(default=4, ge=1, le=64)
    # glibc malloc arenas for the process (0: glibc's default of 8 per core); see cpu.py.
    malloc_arenas: int = Field(default=2, ge=0, le=64)

    # --- shared object store: where images, records and analyses live -----------------
    # Unset: the file store under data_dir. The AWS_* variables are read under their standard
    # names, as AWS tools read them (an SATAPI_-prefixed name or the TOML key works too).
    store_url: str | None = Field(
        default=None,
        description="file:///path (the file store) or s3://bucket/prefix (any S3-compatible).",
    )
    aws_access_key_id: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "aws_access_key_id", "SATAPI_AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"
        ),
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "aws_secret_access_key", "SATAPI_AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"
        ),
    )
    aws_session_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "aws_session_token", "SATAPI_AWS_SESSION_TOKEN", "AWS_SESSION_TOKEN"
        ),
    )
    aws_endpoint_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "aws_endpoint_url",
            "SATAPI_AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
            "AWS_ENDPOINT_URL",
        ),
        description="An S3-compatible endpoint (minio, moto, R2 ...); unset: AWS itself.",
    )
    aws_region: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "aws_region", "SATAPI_AWS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"
        ),
    )
    aws_allow_http: bool = Field(
        default=False,
        validation_alias=AliasChoices("aws_allow_http", "SATAPI_AWS_ALLOW_HTTP", "AWS_ALLOW_HTTP"),
        description="true lets store_url's endpoint be plain http:// (a local test server).",
    )
    store_timeout_s: float = Field(
        default=30.0, gt=0, description="One object-store request's deadline."
    )

    @field_validator("store_url")
    @classmethod
    def _check_store_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value)
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost") or not parts.path:
                raise ValueError("a file store URL is file:///absolute/path")
        elif parts.scheme == "s3":
            if not parts.netloc or parts.query or parts.fragment:
                raise ValueError("an S3 store URL is s3://bucket or s3://bucket/prefix")
        else:
            raise ValueError("must start with file:// or s3://")
        return value

    @field_validator("aws_endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http(s) URL")
        return value

    # Shutdown and full disks.
    # Seconds between SIGTERM and closing the listener, during which /readyz answers 503.
    shutdown_delay_s: float = Field(default=0.0, ge=0, le=600)

    @field_validator(
        "allowed_hosts", "cors_origins", "api_keys", "webhook_allowed_hosts", mode="before"
    )
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split_commas(value)

    # Blank settings: an empty or whitespace-only value is no value. An exported
    # but empty ANTHROPIC_API_KEY (a template, `ANTHROPIC_API_KEY=`) means the local analyzer,
    # not a Claude analyzer whose every call fails authentication; likewise for the AWS and
    # Redis settings, where "" was sent as a credential or refused as a URL.
    @field_validator(
        "anthropic_api_key",
        "anthropic_base_url",
        "redis_url",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "aws_endpoint_url",
        "aws_region",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if _is_blank(value) else value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _no_blank_api_keys(cls, value: Any) -> Any:
        # A blank key never matches (an empty credential is refused before any comparison), so
        # blank entries of a list are dropped. A list of nothing but blanks is refused: running
        # open to anyone is not a safe reading of `api_keys = [""]` (a template whose variable
        # was empty). SATAPI_API_KEYS="" stays "no keys", as for every comma-separated setting.
        if isinstance(value, list | tuple):
            kept = [item for item in value if not _is_blank(item)]
            if value and not kept:
                raise ValueError(
                    "every API key given is blank; give real keys, or remove api_keys to run "
                    "without them"
                )
            return kept
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        scheme = urlsplit(value.get_secret_value()).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("allowed_hosts", "webhook_allowed_hosts")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        for item in value:
            url_origin(item if "://" in item else f"https://{item}")
        return value

    @field_validator("providers", mode="before")
    @classmethod
    def _merge_builtins(cls, value: Any) -> Any:
        # The file or environment adds to and replaces the built-in providers;
        # `enabled = false` removes one.
        # A partial table for a built-in provider overrides just the fields it names.
        merged: dict[str, Any] = dict(builtin_providers())
        for name, override in dict(value or {}).items():
            base = merged.get(name)
            if isinstance(base, ProviderConfig) and isinstance(override, dict):
                merged[name] = {**base.model_dump(exclude_defaults=True), **override}
            else:
                merged[name] = override
        return merged

    @field_validator("providers")
    @classmethod
    def _drop_disabled(cls, value: dict[str, ProviderConfig]) -> dict[str, ProviderConfig]:
        kept: dict[str, ProviderConfig] = {}
        for name, p in value.items():
            if not p.enabled:
                continue
            if p.kind == "sentinelhub" and not p.has_credentials:
                given = p.client_id or p.client_secret is not None
                if name in CREDENTIAL_BUILTINS and not given:
                    continue  # a built-in OAuth provider stays off until credentials are given
                raise ValueError(f"provider {name!r} needs both client_id and client_secret")
            kept[name] = p
        return kept

    @model_validator(mode="after")
    def _check_job_runner(self) -> Settings:
        if self.jobs_in_process is False and self.redis_url is None:
            raise ValueError("jobs_in_process = false needs redis_url (workers take jobs there)")
        return self

    @property
    def runs_jobs_in_process(self) -> bool:
        """True when `satapi serve` runs the jobs it accepts itself."""
        return self.jobs_in_process if self.jobs_in_process is not None else self.redis_url is None

    @model_validator(mode="after")
    def _check_default_provider(self) -> Settings:
        if self.default_provider not in self.providers:
            known = ", ".join(sorted(self.providers)) or "none"
            raise ValueError(
                f"default_provider {self.default_provider!r} is not a configured provider "
                f"(configured: {known})"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Order of precedence: arguments, environment, the SATAPI_CONFIG TOML file."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_path = os.environ.get(CONFIG_ENV_VAR)
        if config_path:
            path = Path(config_path)
            if not path.is_file():
                raise SettingsError(f"{CONFIG_ENV_VAR}: no such file: {config_path}")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def shown(self) -> dict[str, Any]:
        """The settings as `check-config` prints them: secrets masked, and each provider with
        only the fields its kind uses."""
        data = self.model_dump(mode="json")
        data["providers"] = {name: p.shown() for name, p in self.providers.items()}
        return data

    @property
    def secrets(self) -> list[str]:
        """Every secret value, for redaction."""
        values = [key.get_secret_value() for key in self.api_keys]
        if self.anthropic_api_key is not None:
            values.append(self.anthropic_api_key.get_secret_value())
        for provider in self.providers.values():
            values.extend(v.get_secret_value() for v in provider.secret_params.values())
            if provider.client_secret is not None:
                values.append(provider.client_secret.get_secret_value())
        for secret in (self.aws_secret_access_key, self.aws_session_token):
            if secret is not None:
                values.append(secret.get_secret_value())
        if self.redis_url is not None:
            password = urlsplit(self.redis_url.get_secret_value()).password
            if password:
                values.append(password)
        return [v for v in values if v]


class SettingsError(Exception):
    """A setting is invalid; the message names the field."""


def load_settings(**overrides: Any) -> Settings:
    """Build `Settings`, turning a validation failure into one readable `SettingsError`."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False, include_input=False):
            field = ".".join(str(part) for part in err["loc"])
            lines.append(f"{field}: {err['msg']}" if field else err["msg"])
        raise SettingsError("invalid settings: " + "; ".join(lines)) from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends "(at line L, column C)": name the file it is about too.
        where = os.environ.get(CONFIG_ENV_VAR, "the settings file")
        raise SettingsError(f"{where} is not valid TOML: {exc}") from None
    except (ValueError, OSError) as exc:
        raise SettingsError(f"invalid settings: {exc}") from None
