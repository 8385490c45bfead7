"""Settings (environment ``MSSERVE_*`` and an optional YAML file); model profiles are read by server.profiles.

Precedence, highest first: explicit arguments (CLI flags) > environment > YAML file > defaults.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from server import resources

# Profiles live in server.profiles; these names stay importable from here, where they were first.
from server.profiles import (  # noqa: F401
    DEFAULT_PROFILE,
    DEFAULT_PROFILES_DIR,
    ModelProfile,
    list_profiles,
    load_profile,
    load_profile_file,
    profile_dirs,
    resolve_model_path,
)


class Settings(BaseSettings):
    """Every knob of the server. Environment: ``MSSERVE_<FIELD>`` (e.g. ``MSSERVE_PORT=9000``)."""

    model_config = SettingsConfigDict(env_prefix="MSSERVE_", extra="ignore", yaml_file=None)

    profile: str = DEFAULT_PROFILE  # profile name (`msserve profiles`); auto: GPU profile with CUDA, else tiny
    profiles_dir: Path | None = None  # your own profiles, looked up before the packaged ones
    host: str = "127.0.0.1"  # address to bind; a non-loopback one without API keys draws a warning
    port: int = 8000  # port to bind
    log_level: Literal["debug", "info", "warning", "error"] = "info"  # the JSON request log is at info

    # Request limits
    max_request_bytes: int = 32 * 1024 * 1024  # 32 MiB; larger bodies get 413, counted as they arrive
    max_queue: int = 64  # requests waiting for the local engine beyond those running
    # vLLM: exact running/waiting counts from the scheduler's per-step stats. Off: in-flight requests split at
    # max_num_seqs (what the scheduler batches), saving the stats work on every engine step (a few % of CPU).
    vllm_scheduler_stats: bool = False
    # vLLM on CPU binds its worker to cores and reserves the rest; keep this process on the reserved ones, off
    # the worker's, so the event loop never runs on the worker's core mid-step (server/engines/cpu_placement.py;
    # the A/B figures are in docs/BENCHMARKS.md).
    vllm_api_off_worker_cores: bool = True
    request_timeout_s: float = 600.0  # a request still waiting for the engine after this gets 504
    exit_on_engine_failure: bool = True  # engine failed to load: stop the process (false: stay up, /ready 503)
    default_max_tokens: int | None = None  # None: what the context window leaves

    # Images
    max_images_per_request: int = 8  # more: 400 too_many_images
    max_image_bytes: int = 20 * 1024 * 1024  # 20 MiB of encoded bytes per image; past it 413 image_too_large
    max_total_image_bytes: int = 50 * 1024 * 1024  # 50 MiB of encoded image bytes per request
    max_image_pixels: int = 50_000_000  # per image, checked before decoding (decompression bombs)

    # Remote image fetch (server.media): SSRF guard and limits.
    image_fetch_enabled: bool = True  # false: only data: URLs and uploads
    allow_http: bool = False  # plain http:// image URLs (https:// is always allowed when fetching is enabled)
    # Hosts ("images.internal", "*.corp.example") and networks ("10.1.0.0/16", "::1") that may be fetched even
    # though they are not public. Env: JSON list or comma-separated, e.g. MSSERVE_IMAGE_FETCH_ALLOWLIST=127.0.0.1,::1
    image_fetch_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list)
    image_fetch_connect_timeout_s: float = 5.0  # connecting to the image host
    image_fetch_read_timeout_s: float = 10.0  # between two reads
    image_fetch_total_timeout_s: float = 30.0  # whole fetch, all redirects included (slow-drip servers)
    image_fetch_max_redirects: int = 3  # each redirect target is checked again
    # --- Image decoding off the event loop, memory bounded (server.media._pool, _prescan, _dns) ---
    image_decode_workers: int = Field(default=2, ge=1)  # threads decoding images; bounds decode memory
    image_decode_queue: int = Field(default=64, ge=0)  # images waiting for a decode thread; past it: 429
    # Pixels actually decoded per image (a JPEG after draft scaling, which shrinks 12 and 48 MP photos to a few
    # MP): the model sees at most 1540 px on the long side, so 4096 x 4096 leaves room for large screenshots.
    max_decoded_image_pixels: int = Field(default=4096 * 4096, ge=1)
    image_max_jpeg_scans: int = Field(default=100, ge=1)  # progressive scans, each a pass over the image
    image_max_metadata_blocks: int = Field(default=256, ge=1)  # chunks/markers/extensions that are not pixels
    image_fetch_dns_timeout_s: float = Field(default=5.0, gt=0)  # one lookup of an image URL's host
    image_fetch_dns_workers: int = Field(default=4, ge=1)  # lookups at once (their own threads)

    # Hugging Face hub
    hf_token: SecretStr | None = None  # falls back to HF_TOKEN

    # Router (server.routing.router): weights, threshold or target escalation rate, image policy
    router_weights: Path = resources.ROUTER_WEIGHTS  # see server/resources/router/CARD.md
    router_threshold: float | None = Field(default=None, ge=0.0, le=1.0)  # escalate when score > this; wins over rate
    router_target_rate: float | None = Field(default=None, ge=0.0, le=1.0)  # share to escalate (weights' quantiles)
    router_image_policy: Literal["score", "local", "azure"] = "score"  # requests with images: score, or force a tier
    # Learning this deployment's traffic (server.routing.shadow, outcomes, learned): store each routed request's
    # outcome row; shadow this share of the requests the router kept local (also asked of Azure, in the
    # background) and have the judge deployment (None: the escalation deployment) compare the two answers.
    router_learning: bool = True
    router_shadow_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    router_judge_deployment: str | None = None
    router_outcomes_max_rows: int = Field(default=100_000, ge=1)  # retention: the newest rows are kept
    router_outcomes_max_age_days: float | None = Field(default=90.0, gt=0)

    # --- Azure escalation and routing policy (server.engines.azure, server.routing.policy/dispatch) ---
    # Names promised to users: MSSERVE_AZURE_ENDPOINT, _API_KEY, _DEPLOYMENT, _API_VERSION.
    azure_endpoint: str | None = None  # https://RES.openai.azure.com[/openai/v1] or https://RES.services.ai.azure.com/models
    azure_api_key: SecretStr | None = None  # sent as api-key; unused with azure_auth=entra
    azure_deployment: str | None = None  # deployment name (Azure OpenAI) or model name (Foundry models endpoint)
    azure_api_version: str | None = None  # None: the v1 API (no api-version); else the deployments form
    azure_api_style: Literal["auto", "v1", "deployments", "foundry"] = "auto"  # auto: inferred from endpoint/version
    azure_auth: Literal["key", "entra"] = "key"  # entra: azure-identity, scope https://ai.azure.com/.default
    azure_timeout_s: float = 60.0  # per Azure call (connect + until the stream starts and between chunks)
    azure_max_attempts: int = 3  # calls per request, 429 retries included
    azure_max_retry_wait_s: float = 10.0  # total time one request may wait on 429 retry-after
    # HTTP client under the openai SDK: auto = aiohttp (a dependency; its C parser cut our CPU per escalated call),
    # or the SDK's default httpx client when aiohttp cannot be imported.
    azure_http_client: Literal["auto", "aiohttp", "httpx"] = "auto"
    azure_daily_budget_usd: float | None = None  # None: no cap; the day is UTC
    azure_price_input_per_mtok: float = 2.50  # USD per million prompt tokens
    azure_price_output_per_mtok: float = 10.00  # USD per million completion tokens
    local_price_input_per_mtok: float = 0.0  # what a local token costs you (GPU amortised), for savings accounting
    local_price_output_per_mtok: float = 0.0  # USD per million local completion tokens
    azure_breaker_failures: int = 5  # consecutive Azure failures that open the circuit
    azure_breaker_cooldown_s: float = 30.0  # open circuit lets one probe through after this long
    escalate_when_queue_over: int | None = 16  # local waiting queue above this sends auto requests to Azure
    cascade_threshold: float = 0.60  # cascade: escalate when local confidence (geometric-mean token prob) is below
    cascade_default: bool = False  # treat route "auto" as "cascade" for non-streamed requests

    # --- Azure spend ledger (server.routing.ledger): reserve before each Azure call, settle after ---
    # What an Azure call reserves for its answer when the request sets no max_tokens (an answer that runs
    # longer is still charged in full when it settles).
    azure_reserve_max_tokens: int = Field(default=4096, ge=1)
    # The share of the daily budget that shadow and judge calls together may use (escalations may use it all).
    router_shadow_budget_share: float = Field(default=0.1, ge=0.0, le=1.0)

    # --- Operations (server.middleware, server.telemetry, server.serving, dashboard) ---
    # Named API keys "alice:sk-abc,bob:sk-def" (a bare "sk-abc" is named key1, key2, ...). None: no auth (open).
    api_keys: SecretStr | None = None
    metrics_open: bool = False  # /metrics without a key (when keys are configured)
    dashboard_open: bool = False  # the dashboard at / without a key (when keys are configured)
    max_concurrent_requests: int = 256  # model requests (POST /v1/*) running at once, all keys together
    # Running + waiting per API key (keys configured): one tenant cannot take every slot. 0 or None: no cap.
    max_concurrent_per_key: int | None = 64
    max_waiting_requests: int = 256  # beyond max_concurrent_requests, wait up to queue_timeout_s; past it: 429
    queue_timeout_s: float = 30.0  # longest wait for a slot before a 429
    retry_after_s: int = 1  # Retry-After on 429s and 503s from the limits
    # Per-key rate limits (server.limits), as LiteLLM's key rpm_limit / tpm_limit, over any 60 s; past them 429
    # with Retry-After. 0: no limit. Requests: each API key's chat completions and captions (POST).
    key_rpm_limit: int = Field(default=0, ge=0)
    key_tpm_limit: int = Field(default=0, ge=0)  # tokens (prompt + completion) of each API key's answered requests
    # One key's own limit instead: "alice=600,batch-bot=0" (or a JSON object), names from MSSERVE_API_KEYS; 0: none.
    key_rpm_overrides: Annotated[dict[str, int], NoDecode] = Field(default_factory=dict)
    key_tpm_overrides: Annotated[dict[str, int], NoDecode] = Field(default_factory=dict)  # the same for tokens
    # With MSSERVE_REDIS_URL: each request's per-key slot is a lease in Redis, renewed while the request runs; the
    # slots of a replica that died free themselves this long after its last renewal.
    key_lease_ttl_s: float = Field(default=30.0, ge=1.0)
    # Idle keep-alive connections are closed after this. Longer than load balancers' idle timeouts (60 s on
    # the common ones), so the server never closes a connection the balancer is about to reuse.
    keep_alive_timeout_s: int = 75
    drain_timeout_s: float = 30.0  # on SIGTERM: how long in-flight requests may finish before they are aborted
    # How long a thread may hold the GIL while another waits (Python's default is 5 ms). vLLM tokenizes and
    # prepares images in worker threads; under streaming load the event loop rarely blocks, so each hand-over
    # to them waited the full interval (1 ms cut vLLM's render p50 from 23 to 16 ms under the serving benchmark).
    gil_switch_interval_ms: float = Field(default=1.0, gt=0.0, le=100.0)
    # Durable state (Azure spend, router outcomes, batches): SQLite under this folder; None: ~/.local/state/msserve
    state_dir: Path | None = None
    # --- Batch API (server.batch): /v1/files and /v1/batches, state in the state database, files beside it ---
    batch_concurrency: int = Field(default=2, ge=1)  # batch lines running at once, all batches together
    batch_max_file_bytes: int = Field(default=200 * 1024 * 1024, ge=1)  # one uploaded file (OpenAI's 200 MB)
    batch_max_lines: int = Field(default=50_000, ge=1)  # requests in one batch input file (OpenAI's 50,000)
    batch_max_disk_bytes: int = Field(default=10 * 1024**3, ge=1)  # all stored batch files of all keys together
    batch_retention_s: float = Field(default=30 * 86400, gt=0)  # files and finished batches are deleted after this
    log_contents: bool = False  # put prompt text (and image sizes/hashes, never pixels) in the request log
    recent_requests: int = 200  # size of the recent-requests ring buffer the dashboard shows

    # --- Shared state across replicas (server.state.redis_store) ---
    # redis://[:password@]host:port/db, rediss:// (TLS) or unix:///path. Set: the Azure budget and spend, the circuit
    # breaker, the router's outcomes and the per-key limits live in Redis, shared by every replica. None: in-process
    # state plus SQLite.
    redis_url: SecretStr | None = None
    # Connect and read timeout of every Redis call: a dead Redis fails fast (Azure is then refused, never unlimited).
    redis_timeout_s: float = Field(default=0.5, gt=0.0, le=30.0)
    # Signs the dashboard's session cookies. Set it (from a Secret) so every replica accepts a cookie any replica
    # issued. None: one in Redis when redis_url is set (made once, SET NX), else a random one per process.
    dashboard_session_secret: SecretStr | None = None

    # --- Tenants, hosts and proxies (server.middleware.auth, host_allow, cross_site; server.api.permissions) ---
    # Key names from api_keys. Admin keys open the dashboard's all-tenant view, /ready's details and /admin/*;
    # other keys see only their own requests. Empty: no admin keys.
    admin_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Key names that may force Azure (x-msserve-route: azure, or an azure model alias). None (unset): every key;
    # an empty list: no key.
    azure_keys: Annotated[list[str] | None, NoDecode] = None
    # Host header allow-list (DNS rebinding): names or addresses, "*.example.com" suffixes, any port. None (unset):
    # the loopback names when bound to a loopback address, else off; "*": off.
    allowed_hosts: Annotated[list[str] | None, NoDecode] = None
    # Proxies (addresses or networks) whose X-Forwarded-For / X-Forwarded-Proto are believed. Empty: none.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator(
        "image_fetch_allowlist", "admin_keys", "azure_keys", "allowed_hosts", "trusted_proxies", mode="before"
    )
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        """A JSON list, or comma-separated (what an environment variable can hold)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("key_rpm_overrides", "key_tpm_overrides", mode="before")
    @classmethod
    def _parse_key_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """``name=number`` pairs or a JSON object; the names are checked against the API keys at start-up."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("{"):
            return json.loads(text)
        return _name_pairs(text, f"MSSERVE_{(info.field_name or '').upper()}", "name=number")

    @field_validator("key_rpm_overrides", "key_tpm_overrides")
    @classmethod
    def _non_negative(cls, value: dict[str, int]) -> dict[str, int]:
        negative = [name for name, number in value.items() if number < 0]
        if negative:
            raise ValueError(f"limits must be 0 (none) or more; negative for {', '.join(map(repr, negative))}")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip("[]"), strict=False)
            except ValueError:
                raise ValueError(f"MSSERVE_TRUSTED_PROXIES entry {entry!r} is not an address or network") from None
        return value

    @field_validator("azure_endpoint")
    @classmethod
    def _azure_endpoint_https(cls, value: str | None) -> str | None:
        # The Azure key travels in a header on every call: plain http only to this machine (tests' fake Azure).
        if value is None or not value.strip():
            return value
        parsed = urlsplit(value.strip())
        if parsed.scheme == "https" and parsed.hostname:
            return value
        if parsed.scheme == "http" and parsed.hostname and _is_loopback_host(parsed.hostname):
            return value
        raise ValueError(f"MSSERVE_AZURE_ENDPOINT must be an https:// URL (plain http:// only to a loopback "
                         f"address), not {value!r}")

    @field_validator("redis_url")
    @classmethod
    def _redis_url_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        # The message names the scheme only: the URL may carry a password.
        if value is None:
            return None
        scheme = urlsplit(value.get_secret_value().strip()).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"MSSERVE_REDIS_URL must start with redis://, rediss:// or unix://, not {scheme or 'no'} "
                             "scheme")
        return value

    @field_validator("dashboard_session_secret")
    @classmethod
    def _session_secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("MSSERVE_DASHBOARD_SESSION_SECRET needs at least 32 characters "
                             "(e.g. 64 random hex digits)")
        return value

    # --- Model aliases (server.api.aliases): a client written for Azure keeps its deployment name as the model ---
    # "gpt-4o=auto,gpt-4o-mini=local,my-deployment=azure" (or a JSON object): name -> route (auto, local, azure,
    # cascade), as the x-msserve-route header would give it; the header wins. MSSERVE_AZURE_DEPLOYMENT is an
    # "auto" alias unless listed here.
    model_aliases: Annotated[dict[str, Literal["auto", "local", "azure", "cascade"]], NoDecode] = Field(
        default_factory=dict
    )

    @field_validator("model_aliases", mode="before")
    @classmethod
    def _parse_aliases(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("{"):
            return json.loads(text)
        pairs = _name_pairs(text, "MSSERVE_MODEL_ALIASES", "name=route")
        return {name: route.lower() for name, route in pairs.items()}

    # --- Slow clients and a blocked event loop (server.middleware.body_limit, .concurrency; server.loop_lag) ---
    # A request body must arrive at this average rate once the grace period is over, else 408
    # request_body_timeout (a trickling client is cut off; it never holds a concurrency slot). 0: no floor.
    body_min_bytes_per_s: float = Field(default=16384.0, ge=0.0)
    body_min_rate_grace_s: float = Field(default=10.0, ge=0.0)  # seconds before the rate floor applies
    # Bodies are read before their request takes a slot: all of them together, until they have one, hold at most
    # this many bytes; past it 429 queue_full (1 GiB: ~30 maximal uploads at once).
    max_buffered_body_bytes: int = Field(default=2**30, ge=1)
    event_loop_lag_warn_s: float = Field(default=0.1, gt=0.0)  # log a warning when the loop is blocked this long

    @field_validator("port")
    @classmethod
    def _valid_port(cls, port: int) -> int:
        if not 0 <= port <= 65535:
            raise ValueError("port must be between 0 and 65535")
        return port

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_file = settings_cls.model_config.get("yaml_file")
        if yaml_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return (*sources, file_secret_settings)


def _name_pairs(text: str, setting: str, form: str) -> dict[str, str]:
    """``a=1,b=2`` (what an environment variable can hold) -> {"a": "1", "b": "2"}; empty entries are skipped."""
    pairs: dict[str, str] = {}
    for entry in (item.strip() for item in text.split(",")):
        if not entry:
            continue
        name, sep, value = entry.rpartition("=")
        if not sep or not name.strip():
            raise ValueError(f"{setting} entry {entry!r} needs the form {form}")
        pairs[name.strip()] = value.strip()
    return pairs


def _is_loopback_host(host: str) -> bool:
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from env, an optional YAML file, and explicit overrides (None values are ignored)."""
    explicit = {key: value for key, value in overrides.items() if value is not None}
    if config_file is None:
        return Settings(**explicit)
    if not config_file.is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(env_prefix="MSSERVE_", extra="ignore", yaml_file=str(config_file))

    loaded = FileSettings(**explicit)
    return Settings.model_validate(loaded.model_dump())
