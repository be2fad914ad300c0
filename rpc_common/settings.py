"""Settings shared by both sides: the auth secret rules and readable configuration errors."""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "FOREST_"
MIN_SECRET_BYTES = 32


class ConfigurationError(ValueError):
    """A setting is missing or out of range; the message is one line and names the setting."""


class AuthSecretSettings(BaseSettings):
    """Base for both sides' settings: the shared secret, read from `FOREST_AUTH_SECRET`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, hide_input_in_errors=True, extra="ignore"
    )

    # The empty default is validated, so a missing secret is refused with the variable's name.
    auth_secret: SecretStr = Field(default=SecretStr(""), validate_default=True)

    @field_validator("auth_secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr) -> SecretStr:
        size = len(value.get_secret_value().encode("utf-8"))
        if size == 0:
            raise ValueError(f"{ENV_PREFIX}AUTH_SECRET is not set or is empty")
        if size < MIN_SECRET_BYTES:
            raise ValueError(
                f"{ENV_PREFIX}AUTH_SECRET is too short ({size} bytes; at least "
                f"{MIN_SECRET_BYTES} are required)"
            )
        return value


def normalised_url_prefix(value: str) -> str:
    """The agent routes' prefix, `/forest` or `/api/forest` ("/" means none); `ValueError`
    for any other shape, so a typo is refused at start instead of giving 404s forever."""
    if not value.startswith("/") or (len(value) > 1 and value.endswith("/")):
        raise ValueError(f"url_prefix must start with '/' and not end with one, got {value!r}")
    if any(char.isspace() or char in "?#" for char in value):
        raise ValueError(f"url_prefix must be a plain path, got {value!r}")
    return "" if value == "/" else value


def describe_validation_error(error: ValidationError) -> str:
    """One line naming each refused setting (argument and variable), never its value."""
    parts = []
    for item in error.errors(include_input=False, include_url=False):
        field = "_".join(str(part) for part in item["loc"])
        name = ENV_PREFIX + field.upper()
        if item["type"] == "missing":
            parts.append(f"{name} is not set ({field})")
        else:
            message = item["msg"].removeprefix("Value error, ")
            parts.append(
                f"{field}: {message}" if name in message else f"{field} ({name}): {message}"
            )
    return "configuration error: " + "; ".join(parts)


def split_secrets(value: SecretStr | None) -> list[str]:
    """The non-empty entries of a comma-separated secret list."""
    if value is None:
        return []
    return [part.strip() for part in value.get_secret_value().split(",") if part.strip()]
