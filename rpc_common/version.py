"""The installed distribution's version, for `__version__` and the health answer."""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "forest-rpc-pair"


def package_version() -> str:
    """The version from the package metadata, or a marker when running from a bare checkout."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"
