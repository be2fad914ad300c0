"""`__version__` of both packages comes from the installed distribution's metadata."""

from __future__ import annotations

from importlib import metadata

import rpc_agent
import rpc_datasource


def test_both_packages_report_the_distributions_version() -> None:
    installed = metadata.version("forest-rpc-pair")
    assert rpc_agent.__version__ == installed
    assert rpc_datasource.__version__ == installed
