"""The datasource's configuration, read from `FOREST_*` environment variables or given in code."""

from __future__ import annotations

from pydantic import Field, field_validator

from rpc_common.protocol import DEFAULT_SCHEMA_MAX_BYTES, DEFAULT_URL_PREFIX
from rpc_common.settings import AuthSecretSettings, normalised_url_prefix
from rpc_common.signing import SignatureScheme
from rpc_datasource.health.policy import ProbeMode, ProbePolicy
from rpc_datasource.transport.endpoint import AgentEndpoint


class DatasourceSettings(AuthSecretSettings):
    """Where the agent is and how to watch it; `auth_secret` and `rpc_uri` are required."""

    rpc_uri: str
    url_prefix: str = DEFAULT_URL_PREFIX
    health_check_interval: float = Field(default=30.0, gt=0, le=86_400)
    health_check_failure_threshold: int = Field(default=3, ge=1, le=1_000)
    health_check_timeout: float = Field(default=5.0, gt=0, le=600)
    health_check_recovery_threshold: int = Field(default=1, ge=1, le=1_000)
    health_check_mode: ProbeMode = "poll"
    health_check_watch_wait: float = Field(default=25.0, gt=0, le=3_600)
    schema_max_bytes: int = Field(default=DEFAULT_SCHEMA_MAX_BYTES, ge=1024)
    signature_scheme: SignatureScheme = "v2"

    @field_validator("rpc_uri")
    @classmethod
    def _http_uri(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("FOREST_RPC_URI must be an http:// or https:// URL")
        return value.rstrip("/")

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
