"""`python -m rpc_datasource`: the `forest-rpc` command."""

import sys

from rpc_datasource.cli.commands import main

sys.exit(main())
