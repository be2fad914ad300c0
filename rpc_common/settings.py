"""Settings shared by both sides: the auth secret rules and readable configuration errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "FOREST_"
MIN_SECRET_BYTES = 32


class ConfigurationError(ValueError):
    """A setting is missing or out of range; the message is one line and names the setting."""


class AuthSecretSettings(BaseSettings):
    """Base for both sides' settings: the shared secret, read from `FOREST_AUTH_SECRET`.

    A refused value is a one-line `ConfigurationError` naming where it came from: the
    argument given, or the `FOREST_*` variable.
    """

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
            raise ValueError("is not set or is empty")
        if size < MIN_SECRET_BYTES:
            raise ValueError(
                f"is too short ({size} bytes; at least {MIN_SECRET_BYTES} are required)"
            )
        return value

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            given = {name: name for name in values}
            raise ConfigurationError(describe_validation_error(error, given)) from None

    @classmethod
    def given_as(cls, names: Mapping[str, str], **values: Any) -> Self:
        """Like `cls(**values)`, but a refused value is named as `names` spells it for the
        caller's user (`timeout`, `--prefix`) instead of by its field."""
        try:
            return cls(**values)
        except ConfigurationError as refused:
            # `from None` hides the pydantic error from tracebacks but keeps it as the context.
            error = refused.__context__
            if not isinstance(error, ValidationError):
                raise
            given = {name: names.get(name, name) for name in values}
            raise ConfigurationError(describe_validation_error(error, given)) from None


def normalised_url_prefix(value: str) -> str:
    """The agent routes' prefix, `/forest` or `/api/forest` ("/" means none); `ValueError`
    for any other shape, so a typo is refused at start instead of giving 404s forever."""
    if not value.startswith("/") or (len(value) > 1 and value.endswith("/")):
        raise ValueError(f"url_prefix must start with '/' and not end with one, got {value!r}")
    if any(char.isspace() or char in "?#" for char in value):
        raise ValueError(f"url_prefix must be a plain path, got {value!r}")
    return "" if value == "/" else value


def describe_validation_error(error: ValidationError, given: Mapping[str, str]) -> str:
    """One line naming each refused setting where it came from (the argument or option
    `given` maps it to, or its `FOREST_*` variable), never its value."""
    parts = []
    for item in error.errors(include_input=False, include_url=False):
        field = "_".join(str(part) for part in item["loc"])
        variable = ENV_PREFIX + field.upper()
        if item["type"] == "missing":
            parts.append(f"{variable} is not set (nor the {field} argument)")
            continue
        message = item["msg"].removeprefix("Value error, ")
        for name in (variable, field):
            message = message.removeprefix(name + " ")  # the source is named once, below
        source = f"{given[field]} (as given)" if field in given else f"{variable} ({field})"
        separator = " " if message.startswith(("is ", "must ")) else ": "
        parts.append(source + separator + message)
    return "configuration error: " + "; ".join(parts)


def split_secrets(value: SecretStr | None) -> list[str]:
    """The non-empty entries of a comma-separated secret list."""
    if value is None:
        return []
    return [part.strip() for part in value.get_secret_value().split(",") if part.strip()]
