"""`AgentEndpoint`: where one agent is and how to talk to it, in one object (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from rpc_common.protocol import (
    DEFAULT_HEALTH_MAX_BYTES,
    DEFAULT_SCHEMA_MAX_BYTES,
    DEFAULT_URL_PREFIX,
    Route,
    url_target,
)
from rpc_common.settings import MIN_SECRET_BYTES, normalised_url_prefix
from rpc_common.signing import SignatureScheme, signed_headers


@dataclass(frozen=True)
class AgentEndpoint:
    """The agent's routes, the shared secret, the signature scheme and the per-request timeout.

    Everything that sends a request to an agent (the health probe, the schema fetch) asks this
    object for the URL and the signed headers, so none of these travel as loose arguments.
    """

    root_url: str
    secret: str = field(repr=False)
    scheme: SignatureScheme = "v2"
    timeout: float = 5.0
    health_max_bytes: int = DEFAULT_HEALTH_MAX_BYTES
    schema_max_bytes: int = DEFAULT_SCHEMA_MAX_BYTES
    health_url: str = ""

    def __post_init__(self) -> None:
        if not self.root_url.startswith(("http://", "https://")):
            raise ValueError(f"url must be an http(s) URL, got {self.root_url!r}")
        if not self.secret:
            raise ValueError("auth_secret must not be empty")
        if self.scheme not in ("v1", "v2"):
            raise ValueError(f"signature_scheme must be 'v1' or 'v2', got {self.scheme!r}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be greater than 0, got {self.timeout!r}")
        for name in ("health_max_bytes", "schema_max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if not self.health_url:
            object.__setattr__(self, "health_url", self.route_url(Route.HEALTH))

    @classmethod
    def for_agent(
        cls, uri: str, secret: str, *, url_prefix: str = DEFAULT_URL_PREFIX, **options: object
    ) -> AgentEndpoint:
        """The endpoint of the agent at `uri`: its base URI (`http://host:port`, to which
        `url_prefix` is added), or a URI that already ends in the health route."""
        if urlsplit(uri).path.rstrip("/").endswith(Route.HEALTH.path):
            return cls.from_health_url(uri, secret, **options)
        root = uri.rstrip("/") + normalised_url_prefix(url_prefix)
        return cls(root, secret, **options)  # type: ignore[arg-type]

    @classmethod
    def from_health_url(cls, url: str, secret: str, **options: object) -> AgentEndpoint:
        """The endpoint of an agent given its health URL (`.../forest/health`)."""
        root = url.rstrip("/").removesuffix(Route.HEALTH.path)
        return cls(root, secret, health_url=url, **options)  # type: ignore[arg-type]

    @property
    def schema_url(self) -> str:
        return self.route_url(Route.SCHEMA)

    @property
    def secret_is_short(self) -> bool:
        return len(self.secret.encode("utf-8")) < MIN_SECRET_BYTES

    def route_url(self, route: Route) -> str:
        """The full URL of one agent route, e.g. `route_url(Route.SSE)`."""
        return self.root_url.rstrip("/") + route.path

    def signed_headers(self, url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Fresh `X-Timestamp` / `X-Signature` for a GET of `url`, plus `extra` headers."""
        headers = signed_headers(self.secret, target=url_target(url), scheme=self.scheme)
        headers.update(extra or {})
        return headers
