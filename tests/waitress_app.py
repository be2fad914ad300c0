"""The warehouse on waitress with the agent's graceful stop, for tests: `python -m
tests.waitress_app PORT DB` (the README's waitress recipe, with the example app)."""

from __future__ import annotations

import logging
import sys

from examples.warehouse.app import create_app
from rpc_agent import waitress
from rpc_agent.extension import EXTENSION_KEY


def main() -> None:
    port, db = int(sys.argv[1]), sys.argv[2]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = create_app(db)
    waitress.serve(app, agent=app.extensions[EXTENSION_KEY], port=port, threads=4)


if __name__ == "__main__":
    main()
