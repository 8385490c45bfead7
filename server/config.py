"""Settings (environment ``MSSERVE_*`` and an optional YAML file) and model profiles (``models/*.yaml``).

Precedence, highest first: explicit arguments (CLI flags) > environment > YAML file > defaults.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from server.errors import InvalidRequestError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PROFILES_DIR = REPO_ROOT / "models"
DEFAULT_PROFILE = "tiny-mistral3"


class ModelProfile(BaseModel):
    """One way to serve one model: which engine, which weights, which options."""

    name: str
    description: str = ""
    engine: Literal["hf", "vllm"]
    model: str  # Hugging Face hub id, or a path (relative paths are relative to the repository root)
    revision: str | None = None  # pinned hub revision (commit sha or tag)
    format: Literal["hf", "mistral"] = "hf"  # checkpoint layout: HF (config.json) or Mistral-native (params.json)
    tokenizer_file: str = "tekken.json"  # mistral_common tokenizer inside the model folder
    served_model_name: str | None = None
    max_model_len: int = 131072
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    quantization: str | None = None  # fp8, compressed-tensors, bnb-4bit, bnb-8bit, ...
    requires_gpu: bool = False
    demo: bool = False  # random weights: answers are meaningless, say so loudly
    build_script: str | None = None  # script under scripts/ that builds a local model on demand
    gated: bool = False  # hub repo needs an accepted licence and HF_TOKEN
    gpu_memory_gib: float | None = None  # documented need, for README and start-up checks
    engine_options: dict[str, Any] = Field(default_factory=dict)  # passed to the engine as is

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.name

    def local_path(self) -> Path | None:
        """The model folder when ``model`` names a path on disk, else None (a hub id)."""
        candidate = Path(self.model)
        if not candidate.is_absolute():
            candidate = REPO_ROOT / candidate
        # A profile that builds its model is local even before the first build (a fresh clone).
        if self.build_script or self.model.startswith((".", "/", "~")) or candidate.exists():
            return candidate
        return None


class Settings(BaseSettings):
    """Every knob of the server. Environment: ``MSSERVE_<FIELD>`` (e.g. ``MSSERVE_PORT=9000``)."""

    model_config = SettingsConfigDict(env_prefix="MSSERVE_", extra="ignore", yaml_file=None)

    profile: str = DEFAULT_PROFILE
    profiles_dir: Path = DEFAULT_PROFILES_DIR
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Request limits
    max_request_bytes: int = 32 * 1024 * 1024
    max_queue: int = 64  # requests waiting for the local engine beyond those running
    # vLLM: exact running/waiting counts from the scheduler's per-step stats. Off: in-flight requests split at
    # max_num_seqs (what the scheduler batches), saving the stats work on every engine step (a few % of CPU).
    vllm_scheduler_stats: bool = False
    # vLLM on CPU binds its worker to cores and reserves the rest; keep this process on the reserved ones, off
    # the worker's (server/engines/cpu_placement.py; docs/BENCHMARKS.md, seventh round).
    vllm_api_off_worker_cores: bool = True
    request_timeout_s: float = 600.0
    exit_on_engine_failure: bool = True  # engine failed to load: stop the process (false: stay up, /ready 503)
    default_max_tokens: int | None = None  # None: what the context window leaves

    # Images
    max_images_per_request: int = 8
    max_image_bytes: int = 20 * 1024 * 1024
    max_total_image_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 50_000_000

    # Remote image fetch (server.media): SSRF guard and limits. Added for issue 5.
    image_fetch_enabled: bool = True  # false: only data: URLs and uploads
    allow_http: bool = False  # plain http:// image URLs (https:// is always allowed when fetching is enabled)
    # Hosts ("images.internal", "*.corp.example") and networks ("10.1.0.0/16", "::1") that may be fetched even
    # though they are not public. Env: JSON list or comma-separated, e.g. MSSERVE_IMAGE_FETCH_ALLOWLIST=127.0.0.1,::1
    image_fetch_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list)
    image_fetch_connect_timeout_s: float = 5.0
    image_fetch_read_timeout_s: float = 10.0  # between two reads
    image_fetch_total_timeout_s: float = 30.0  # whole fetch, all redirects included (slow-drip servers)
    image_fetch_max_redirects: int = 3

    @field_validator("image_fetch_allowlist", mode="before")
    @classmethod
    def _split_allowlist(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    # Hugging Face hub
    hf_token: SecretStr | None = None  # falls back to HF_TOKEN

    # Router (server.routing.router): weights, threshold or target escalation rate, image policy
    router_weights: Path = DEFAULT_PROFILES_DIR / "router" / "mmlu-lr-v1.json"
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
    azure_api_key: SecretStr | None = None
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
    local_price_output_per_mtok: float = 0.0
    azure_breaker_failures: int = 5  # consecutive Azure failures that open the circuit
    azure_breaker_cooldown_s: float = 30.0  # open circuit lets one probe through after this long
    escalate_when_queue_over: int | None = 16  # local waiting queue above this sends auto requests to Azure
    cascade_threshold: float = 0.60  # cascade: escalate when local confidence (geometric-mean token prob) is below
    cascade_default: bool = False  # treat route "auto" as "cascade" for non-streamed requests

    # --- Operations (server.middleware, server.telemetry, server.shutdown, dashboard). Added for issue 4. ---
    # Named API keys "alice:sk-abc,bob:sk-def" (a bare "sk-abc" is named key1, key2, ...). None: no auth (open).
    api_keys: SecretStr | None = None
    metrics_open: bool = False  # /metrics without a key (when keys are configured)
    dashboard_open: bool = False  # the dashboard at / without a key (when keys are configured)
    max_concurrent_requests: int = 256  # model requests (POST /v1/*) running at once, all keys together
    max_concurrent_per_key: int | None = None  # running + waiting per API key; None: no per-key cap
    max_waiting_requests: int = 256  # beyond max_concurrent_requests, wait up to queue_timeout_s; past it: 429
    queue_timeout_s: float = 30.0  # longest wait for a slot before a 429
    retry_after_s: int = 1  # Retry-After on 429s and 503s from the limits
    # Idle keep-alive connections are closed after this. Longer than load balancers' idle timeouts (60 s on
    # the common ones), so the server never closes a connection the balancer is about to reuse.
    keep_alive_timeout_s: int = 75
    drain_timeout_s: float = 30.0  # on SIGTERM: how long in-flight requests may finish before they are aborted
    # How long a thread may hold the GIL while another waits (Python's default is 5 ms). vLLM tokenizes and
    # prepares images in worker threads; under streaming load the event loop rarely blocks, so each hand-over
    # to them waited the full interval (docs/BENCHMARKS.md: 1 ms cut vLLM's render p50 from 23 to 16 ms).
    gil_switch_interval_ms: float = Field(default=1.0, gt=0.0, le=100.0)
    # Durable state (Azure spend, router outcomes, batches): SQLite under this folder; None: ~/.local/state/msserve
    state_dir: Path | None = None
    log_contents: bool = False  # put prompt text (and image sizes/hashes, never pixels) in the request log
    recent_requests: int = 200  # size of the recent-requests ring buffer the dashboard shows

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


def list_profiles(profiles_dir: Path = DEFAULT_PROFILES_DIR) -> list[ModelProfile]:
    return [load_profile_file(path) for path in sorted(profiles_dir.glob("*.yaml"))]


def load_profile_file(path: Path) -> ModelProfile:
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("name", path.stem)
    return ModelProfile.model_validate(data)


def load_profile(name: str, profiles_dir: Path = DEFAULT_PROFILES_DIR) -> ModelProfile:
    path = profiles_dir / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(p.name for p in list_profiles(profiles_dir)) or "none"
        raise InvalidRequestError(f"unknown profile {name!r}; known profiles: {known}", code="unknown_profile")
    return load_profile_file(path)
