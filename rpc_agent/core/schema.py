"""The schema an agent serves: read from the user's provider off the request path, held in
memory with its strong ETag, refreshed in the background (never on a request's path)."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from rpc_common.settings import ConfigurationError

logger = logging.getLogger(__name__)

Schema = dict[str, Any]
SchemaProvider = Callable[[], Mapping[str, Any]]

# A failure's text in the health body and the log is cut to this many characters.
MAX_ERROR_CHARS = 200


class SchemaProviderError(Exception):
    """The provider failed, hung past its timeout, or returned something that is not a schema."""


def empty_schema() -> Schema:
    """The schema of an agent that exposes nothing yet."""
    return {"collections": [], "charts": []}


def canonical_json(schema: Mapping[str, Any]) -> str:
    """JSON with sorted keys and no spaces: equal content gives equal text."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def schema_etag(schema: Mapping[str, Any]) -> str:
    """A strong ETag (quoted) from the SHA-256 of the canonical JSON."""
    digest = hashlib.sha256(canonical_json(schema).encode("utf-8")).hexdigest()
    return f'"{digest[:32]}"'


def validated_schema(result: object) -> Schema:
    """A copy of the provider's result if it is a schema: a JSON object with `collections` and
    `charts` lists; `SchemaProviderError` saying what is wrong otherwise (pure)."""
    if not isinstance(result, Mapping):
        raise SchemaProviderError(
            f"returned a {type(result).__name__}, not a JSON object with collections and charts"
        )
    for key in ("collections", "charts"):
        if not isinstance(result.get(key), list):
            raise SchemaProviderError(f"returned an object whose {key!r} is not a list")
    try:
        canonical_json(result)
    except (TypeError, ValueError) as error:
        raise SchemaProviderError(f"returned something that is not JSON: {error}") from None
    return copy.deepcopy(dict(result))


def call_provider(provider: SchemaProvider, timeout: float) -> Schema:
    """The provider's schema, called on a daemon thread of its own and waited for at most
    `timeout` seconds (a provider that hangs keeps only that thread)."""
    answer: Future[Schema] = Future()

    def call() -> None:
        try:
            answer.set_result(validated_schema(provider()))
        except SchemaProviderError as error:
            answer.set_exception(error)
        except BaseException as error:  # the user's code: whatever it raises is its failure
            message = str(error) or type(error).__name__
            answer.set_exception(SchemaProviderError(f"raised {type(error).__name__}: {message}"))

    threading.Thread(target=call, name="rpc-agent-schema-provider", daemon=True).start()
    try:
        return answer.result(timeout)
    except TimeoutError:
        raise SchemaProviderError(f"gave no answer within {timeout:g} s") from None


def short(text: str) -> str:
    """A failure's text, one line and at most `MAX_ERROR_CHARS` characters."""
    line = " ".join(text.split())
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."


class SchemaCache:
    """The last good schema, its ETag and the last refresh's error, in memory.

    The provider is called at start (its failure stops the start, as a `ConfigurationError`),
    then only by `refresh()` and, every `refresh_interval` seconds when set, by a background
    thread; one call at a time, each bounded by `timeout`. `on_change` runs after the ETag
    or the error changed.
    """

    def __init__(
        self,
        provider: SchemaProvider,
        *,
        timeout: float = 5.0,
        refresh_interval: float | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._provider = provider
        self._timeout = timeout
        self._refresh_interval = refresh_interval
        self._on_change = on_change
        self._lock = threading.Lock()
        try:
            schema = call_provider(provider, timeout)
        except SchemaProviderError as error:
            raise ConfigurationError(f"schema_provider {short(str(error))}") from None
        self._schema = schema
        self._etag = schema_etag(schema)
        self._error: str | None = None
        self._running: Future[bool] | None = None
        self._scheduler_pid: int | None = None

    @property
    def error(self) -> str | None:
        """The last refresh's failure (short), or None once a refresh succeeded."""
        with self._lock:
            return self._error

    def current(self) -> tuple[Schema, str]:
        """The schema held and its ETag (memory only: never calls the provider)."""
        if self._refresh_interval is not None and self._scheduler_pid != os.getpid():
            self._start_scheduler()
        with self._lock:
            return self._schema, self._etag

    def refresh(self) -> Future[bool]:
        """Call the provider in the background; the future says whether the schema changed.
        While a call is running, its future is returned instead of starting another."""
        with self._lock:
            if self._running is not None and not self._running.done():
                return self._running
            running = self._running = Future()
        threading.Thread(
            target=self._refresh, args=(running,), name="rpc-agent-schema", daemon=True
        ).start()
        return running

    def _refresh(self, running: Future[bool]) -> None:
        try:
            fresh: Schema | None = call_provider(self._provider, self._timeout)
            failure = None
        except SchemaProviderError as error:
            fresh, failure = None, short(str(error))
        with self._lock:
            was_failing = self._error
            self._error = failure
            changed = fresh is not None and fresh != self._schema
            if fresh is not None and changed:
                self._schema = fresh
                self._etag = schema_etag(fresh)
        if failure is not None and was_failing is None:
            logger.warning("schema provider failed, serving the last good schema: %s", failure)
        elif failure is None and was_failing is not None:
            logger.info("schema provider answers again")
        if (changed or was_failing != failure) and self._on_change is not None:
            self._on_change()
        running.set_result(changed)

    def _start_scheduler(self) -> None:
        """The periodic refresh, started in the process that serves (after a server's fork)."""
        with self._lock:
            if self._scheduler_pid == os.getpid():
                return
            self._scheduler_pid = os.getpid()
        interval = self._refresh_interval
        assert interval is not None

        def every_interval() -> None:
            pause = threading.Event()
            while not pause.wait(interval):
                self.refresh().result()

        threading.Thread(target=every_interval, name="rpc-agent-schema-timer", daemon=True).start()
