"""A data server whose schema provider misbehaves on demand, for tests: `python -m
tests.support.provider_app PORT MODE_FILE` serves it on the project's runner. The provider reads
MODE_FILE at each call: `a` or `b` (two schemas), `raise`, `hang` (10 s), `set`."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask

from rpc_agent import RpcAgent
from rpc_agent.servers.runner import serve_agent_until_signalled

SCHEMAS = {
    "a": {"collections": [{"name": "products", "fields": [{"name": "id"}]}], "charts": []},
    "b": {"collections": [{"name": "products", "fields": [{"name": "sku"}]}], "charts": []},
}


def provider_reading(mode_file: Path) -> Any:
    def provider() -> Mapping[str, Any] | set[str]:
        mode = mode_file.read_text().strip()
        if mode == "raise":
            raise RuntimeError("database is locked")
        if mode == "hang":
            threading.Event().wait(10)
        if mode == "set":
            return {"collections"}
        return SCHEMAS.get(mode, SCHEMAS["a"])

    return provider


def main() -> None:
    port, mode_file = int(sys.argv[1]), Path(sys.argv[2])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = Flask("provider_app")
    agent = RpcAgent(app, schema_provider=provider_reading(mode_file))
    serve_agent_until_signalled(app, agent, "127.0.0.1", port)


if __name__ == "__main__":
    main()
