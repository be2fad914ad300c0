"""`forest-rpc` (also `python -m rpc_datasource`): probe, watch, read the schema of, or sign a
request for, an agent from the command line, with the `FOREST_*` settings of the datasource.

The secret comes from `FOREST_AUTH_SECRET` only, never from an argument (arguments show in
`ps`). Every error is one line on stderr and an exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from rpc_common.settings import AuthSecretSettings, ConfigurationError
from rpc_common.signing import signed_headers
from rpc_datasource.cli.report import ProbeExit, ProbeReport, state_change_lines
from rpc_datasource.health.events import ProbeEvent
from rpc_datasource.health_client import HealthCheckClient
from rpc_datasource.runtime.engine import new_session
from rpc_datasource.schema.diff import diff_schemas
from rpc_datasource.schema.fetch import SchemaFetchError, fetch_schema
from rpc_datasource.settings import DatasourceSettings
from rpc_datasource.transport.probe import probe_health

PROGRAM = "forest-rpc"
SCHEMA_UNREADABLE = 2


class CommandError(Exception):
    """A one-line error of the command, with its exit code."""

    def __init__(self, message: str, code: int = ProbeExit.USAGE) -> None:
        super().__init__(message)
        self.code = code


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error exits 1 (the contract's code) with one line."""

    def error(self, message: str) -> NoReturn:
        raise CommandError(f"{message} (see '{PROGRAM} --help')")


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    def agent_command(name: str, summary: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=summary, description=summary)
        command.add_argument("uri", help="the agent's base URI, e.g. http://127.0.0.1:5001")
        command.add_argument("--prefix", help="the agent routes' prefix (FOREST_URL_PREFIX)")
        command.add_argument(
            "--timeout", type=float, help="seconds per request (FOREST_HEALTH_CHECK_TIMEOUT)"
        )
        return command

    probe = agent_command("probe", "one signed health probe; the exit code says the outcome")
    probe.add_argument("--json", action="store_true", help="print one JSON object")
    watch = agent_command("watch", "one line per probe and per change of state, until interrupted")
    watch.add_argument(
        "--interval", type=float, help="seconds between probes (FOREST_HEALTH_CHECK_INTERVAL)"
    )
    schema = agent_command("schema", "print the agent's schema as JSON")
    schema.add_argument("--diff", type=Path, metavar="FILE", help="print what changed from FILE")
    sign = commands.add_parser("sign", help="print X-Timestamp and X-Signature lines for curl")
    sign.add_argument("method", help="e.g. GET")
    sign.add_argument("target", help="the path and query as sent, e.g. /forest/health")
    return parser


# How each option's value is named when refused, so the line names what the user typed.
OPTION_OF_SETTING = {
    "rpc_uri": "URI",
    "url_prefix": "--prefix",
    "health_check_timeout": "--timeout",
    "health_check_interval": "--interval",
}


def _settings(args: argparse.Namespace) -> DatasourceSettings:
    """The datasource settings: the options given, the `FOREST_*` environment for the rest."""
    given: dict[str, Any] = {"rpc_uri": args.uri}
    if args.prefix is not None:
        given["url_prefix"] = args.prefix
    if args.timeout is not None:
        given["health_check_timeout"] = args.timeout
    if getattr(args, "interval", None) is not None:
        given["health_check_interval"] = args.interval
    return DatasourceSettings.given_as(OPTION_OF_SETTING, **given)


def probe(args: argparse.Namespace) -> int:
    """One probe: its line (or JSON) on stdout, its outcome as the exit code."""
    endpoint = _settings(args).endpoint()

    async def probe_once() -> ProbeReport:
        async with new_session() as session:
            outcome = await probe_health(session, endpoint)
        return ProbeReport(outcome.result, outcome.latency_s)

    report = asyncio.run(probe_once())
    print(report.json_line() if args.json else report.line())
    return report.exit_code


def watch(args: argparse.Namespace) -> int:
    """Probe with the library's own client until SIGINT or SIGTERM: one line per probe, and
    one per change of state (DOWN, RECOVERED, RESTARTED)."""
    settings = _settings(args)
    stopped = threading.Event()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        stopped.set()

    def print_probe(event: ProbeEvent) -> None:
        report = ProbeReport(event.result, event.latency_s)
        moment = datetime.now(UTC).strftime("%H:%M:%S")
        print(f"{moment} {event.state_after} {report.line()}", flush=True)
        for line in state_change_lines(event):
            print(f"{moment} {line}", flush=True)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    client = HealthCheckClient(
        endpoint=settings.endpoint(),
        policy=dataclasses.replace(settings.policy(), jitter=0.0),
        hooks=(print_probe,),
    )
    client.start()
    try:
        while not stopped.wait(0.5):
            pass
    finally:
        client.stop()
    return 0


def schema(args: argparse.Namespace) -> int:
    """The schema as JSON on stdout, or with `--diff FILE` what changed since FILE's."""
    endpoint = _settings(args).endpoint()
    before = _read_schema_file(args.diff) if args.diff is not None else None

    async def read() -> dict[str, Any]:
        async with new_session() as session:
            fetched = await fetch_schema(session, endpoint)
        assert fetched is not None, "an unconditional GET never answers 304"
        return fetched.schema

    try:
        current = asyncio.run(read())
    except SchemaFetchError as error:
        raise CommandError(str(error), SCHEMA_UNREADABLE) from None
    if before is not None:
        print(diff_schemas(before, current).describe())
    else:
        print(json.dumps(current, indent=2, sort_keys=True, ensure_ascii=False))
    return 0


def _read_schema_file(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CommandError(f"cannot read {path}: {error}") from None
    if not isinstance(loaded, dict):
        raise CommandError(f"{path} does not hold a JSON object")
    return loaded


def sign(args: argparse.Namespace) -> int:
    """The two headers (v2, now) for a request, as `curl -H` takes them."""
    secret = AuthSecretSettings().auth_secret.get_secret_value()
    if not args.target.startswith("/"):
        raise CommandError(f"TARGET must be the path and query, starting with '/': {args.target}")
    headers = signed_headers(secret, method=args.method.upper(), target=args.target)
    for name, value in headers.items():
        print(f"{name}: {value}")
    return 0


COMMANDS = {"probe": probe, "watch": watch, "schema": schema, "sign": sign}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; errors are one line on stderr."""
    try:
        args = _parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except CommandError as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return error.code
    except ConfigurationError as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return ProbeExit.USAGE
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `forest-rpc schema URI | head`: the reader had enough
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python's own recipe for this
        return 0
