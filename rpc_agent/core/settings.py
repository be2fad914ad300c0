"""The agent's configuration, read from `FOREST_*` environment variables or given in code."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from rpc_common.protocol import DEFAULT_URL_PREFIX
from rpc_common.settings import AuthSecretSettings, normalised_url_prefix, split_secrets
from rpc_common.signing import DEFAULT_CLOCK_SKEW


class AgentSettings(AuthSecretSettings):
    """Everything the embedded agent needs; only `auth_secret` is required."""

    auth_previous_secrets: SecretStr | None = Field(
        default=None, description="Comma-separated secrets still accepted during a key rotation."
    )
    require_bound_signatures: bool = False
    allowed_clock_skew: float = Field(default=DEFAULT_CLOCK_SKEW, gt=0, le=86_400)
    sse_heartbeat_interval: float = Field(default=10.0, gt=0, le=3_600)
    url_prefix: str = DEFAULT_URL_PREFIX
    health_max_wait: float = Field(default=30.0, ge=0, le=3_600)
    health_max_watchers: int = Field(default=8, ge=0, le=100_000)
    shutdown_drain_seconds: float = Field(default=1.0, ge=0, le=600)
    schema_refresh_interval: float | None = Field(
        default=None, gt=0, le=86_400, description="Seconds between background schema reads."
    )
    schema_provider_timeout: float = Field(default=5.0, gt=0, le=600)

    @field_validator("url_prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        return normalised_url_prefix(value)

    def verification_secrets(self) -> list[str]:
        """The current secret first, then the previous ones still accepted."""
        return [self.auth_secret.get_secret_value(), *split_secrets(self.auth_previous_secrets)]
