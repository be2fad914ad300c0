"""The datasource's configuration, read from `FOREST_*` environment variables or given in code."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from rpc_common.protocol import DEFAULT_SCHEMA_MAX_BYTES, DEFAULT_URL_PREFIX
from rpc_common.settings import AuthSecretSettings, normalised_url_prefix
from rpc_common.signing import SignatureScheme
from rpc_datasource.health.policy import ProbeMode, ProbePolicy, check_count, check_seconds
from rpc_datasource.transport.endpoint import AgentEndpoint


class DatasourceSettings(AuthSecretSettings):
    """Where the agent is and how to watch it; `auth_secret` and `rpc_uri` are required."""

    rpc_uri: str
    url_prefix: str = DEFAULT_URL_PREFIX
    health_check_interval: float = 30.0
    health_check_failure_threshold: int = 3
    health_check_timeout: float = 5.0
    health_check_recovery_threshold: int = 1
    health_check_mode: ProbeMode = "poll"
    health_check_watch_wait: float = 25.0
    schema_max_bytes: int = Field(default=DEFAULT_SCHEMA_MAX_BYTES, ge=1024)
    signature_scheme: SignatureScheme = "v2"

    @field_validator("rpc_uri")
    @classmethod
    def _http_uri(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("FOREST_RPC_URI must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("health_check_interval", "health_check_timeout", "health_check_watch_wait")
    @classmethod
    def _seconds(cls, value: float, info: ValidationInfo) -> float:
        return check_seconds(info.field_name or "", value)

    @field_validator("health_check_failure_threshold", "health_check_recovery_threshold")
    @classmethod
    def _count(cls, value: int, info: ValidationInfo) -> int:
        return check_count(info.field_name or "", value)

    @field_validator("url_prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        return normalised_url_prefix(value)

    def endpoint(self) -> AgentEndpoint:
        """The agent these settings name, and how to talk to it (the secret unwrapped here only)."""
        return AgentEndpoint.for_agent(
            self.rpc_uri,
            self.auth_secret.get_secret_value(),
            url_prefix=self.url_prefix,
            scheme=self.signature_scheme,
            timeout=self.health_check_timeout,
            schema_max_bytes=self.schema_max_bytes,
        )

    def policy(self) -> ProbePolicy:
        """When to probe the agent and when to give up, as these settings say."""
        return ProbePolicy(
            polling_interval=self.health_check_interval,
            failure_threshold=self.health_check_failure_threshold,
            timeout=self.health_check_timeout,
            recovery_threshold=self.health_check_recovery_threshold,
            mode=self.health_check_mode,
            watch_wait=self.health_check_watch_wait,
        )
