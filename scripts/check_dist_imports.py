"""The checks `scripts/check-dist` runs on the built distributions.

    python -I check_dist_imports.py installed EXTRA   # inside a fresh venv holding the install
    python check_dist_imports.py archives DIST_DIR SOURCE_DIR  # the wheel's and sdist's contents

`installed` imports what the extra must make importable, checks the distributions it must not
pull in are absent, and checks the license metadata; it prints one summary line, or the
failures on stderr and exits 1. Standard library only: it runs in venvs that hold nothing else.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import importlib.util
import pkgutil
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

DIST = "forest-rpc-pair"
PACKAGES = ("rpc_common", "rpc_agent", "rpc_datasource")

# Imported, in addition to the walked packages below, by [all] (and the sdist's [all]): the
# modules that need more than one extra. Edit this list as such modules come and go.
ALL_EXTRA_MODULES = [
    "rpc_datasource.instrumentation.metrics",
    "rpc_agent.metrics",
]

# Shipped but never imported here, as each needs a distribution no extra installs (gunicorn
# and waitress are the user's choice of server): only their presence is checked, with find_spec.
PRESENT_ONLY = [
    "rpc_agent.gunicorn",
    "rpc_agent.servers.gunicorn",
    "rpc_agent.servers.uvicorn_worker",
    "rpc_agent.servers.waitress",
]

# Run, not imported: `python -m rpc_datasource` is the forest-rpc command.
ENTRY_POINTS = ["rpc_datasource.__main__"]

# Left out when a profile imports every module of a package.
NOT_WALKED = {*PRESENT_ONLY, *ALL_EXTRA_MODULES, *ENTRY_POINTS}

# Distributions no profile may install: gunicorn and waitress are the user's choice of server.
NEVER = ["gunicorn", "waitress", "uvicorn-worker"]


@dataclass
class Profile:
    walk: list[str]  # packages whose every module (but NOT_WALKED) is imported
    imports: list[str] = field(default_factory=list)  # "module" or "module:name,name"
    absent: list[str] = field(default_factory=list)  # distribution names, also not importable
    report: list[str] = field(default_factory=list)  # distributions named in the summary


PROFILES = {
    "": Profile(
        walk=["rpc_common"],
        imports=["rpc_common.signing:sign_bound,verify_request"],
        absent=["aiohttp", "flask", "werkzeug", "uvicorn", "a2wsgi", "prometheus-client"],
        report=["pydantic-settings"],
    ),
    "datasource": Profile(
        walk=["rpc_common", "rpc_datasource"],
        imports=["rpc_datasource:RpcDatasource,HealthCheckClient"],
        absent=["flask", "werkzeug", "uvicorn", "a2wsgi", "prometheus-client"],
        report=["aiohttp"],
    ),
    "agent": Profile(
        walk=["rpc_common", "rpc_agent"],
        imports=[
            "rpc_agent:RpcAgent",
            "rpc_agent.wsgi",
            "rpc_agent.asgi",
            "rpc_agent.servers.runner",
        ],
        absent=["prometheus-client"],
        report=["flask", "uvicorn", "a2wsgi", "aiohttp"],
    ),
    "metrics": Profile(
        walk=["rpc_common"],
        imports=["prometheus_client"],
        absent=["aiohttp", "flask", "werkzeug", "uvicorn", "a2wsgi"],
        report=["prometheus-client"],
    ),
    "all": Profile(
        walk=list(PACKAGES),
        imports=[
            "rpc_common.signing:sign_bound,verify_request",
            "rpc_datasource:RpcDatasource,HealthCheckClient",
            "rpc_agent:RpcAgent",
            "prometheus_client",
            *ALL_EXTRA_MODULES,
        ],
        report=["aiohttp", "flask", "prometheus-client"],
    ),
}

# The distribution name -> top-level module, where they differ.
MODULE_OF = {"prometheus-client": "prometheus_client", "pydantic-settings": "pydantic_settings"}


def installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def module_names(package: str) -> list[str]:
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(root.__path__, prefix=package + "."):
        if info.name not in NOT_WALKED:
            names.append(info.name)
    return names


def check_installed(extra: str) -> list[str]:
    """Run one profile's checks in this interpreter; the summary's parts. Raises on failure."""
    profile = PROFILES[extra]
    failures: list[str] = []
    imported: set[str] = set()
    venv = Path(sys.prefix).resolve()

    def load(name: str) -> None:
        try:
            module = importlib.import_module(name)
        except Exception as error:
            failures.append(f"import {name}: {type(error).__name__}: {error}")
            return
        imported.add(name)
        origin = Path(getattr(module, "__file__", None) or "/").resolve()
        if name.split(".")[0] in PACKAGES and not origin.is_relative_to(venv):
            failures.append(f"{name} imported from {origin}, not from this venv ({venv})")

    for package in profile.walk:
        try:
            names = module_names(package)
        except Exception as error:
            failures.append(f"import {package}: {type(error).__name__}: {error}")
            continue
        for name in names:
            load(name)
        if not (Path(sys.modules[package].__path__[0]) / "py.typed").is_file():
            failures.append(f"{package}/py.typed is not installed")
    for spec in profile.imports:
        module_name, _, attributes = spec.partition(":")
        load(module_name)
        if module_name in imported:
            module = sys.modules[module_name]
            for attribute in filter(None, attributes.split(",")):
                if not hasattr(module, attribute):
                    failures.append(f"{module_name} has no {attribute}")
    for name in [*PRESENT_ONLY, *ENTRY_POINTS]:
        if name.split(".")[0] in imported and importlib.util.find_spec(name) is None:
            failures.append(f"{name} is not installed")

    if "rpc_common.signing" in imported:
        failures += check_signing()

    for dist in [*profile.absent, *NEVER]:
        version = installed_version(dist)
        top_level = MODULE_OF.get(dist, dist)
        if version is not None:
            failures.append(f"{dist} {version} is installed, and [{extra}] must not install it")
        elif importlib.util.find_spec(top_level) is not None:
            failures.append(f"{top_level} is importable, and [{extra}] must not provide it")

    failures += check_license()

    if failures:
        raise CheckFailed(failures)
    parts = [f"{len(imported)} modules imported"]
    for dist in profile.report:
        version = installed_version(dist)
        parts.append(f"{dist} {version}" if version else f"no {dist}")
    if profile.absent:
        parts.append("absent: " + ", ".join([*profile.absent, *NEVER]))
    parts.append(f"{len(list(importlib.metadata.distributions()))} distributions")
    return parts


def check_signing() -> list[str]:
    from rpc_common.signing import sign_bound, verify_request

    timestamp = "2026-01-02T03:04:05.000Z"
    signature = sign_bound("secret", timestamp, "get", "/forest/health", b"")
    if not signature.startswith("v2=") or len(signature) != 3 + 64:
        return [f"sign_bound gave {signature!r}"]
    failure = verify_request(
        timestamp,
        signature,
        method="GET",
        target="/forest/health",
        body=b"",
        secrets=["other", "secret"],
        now=datetime.datetime(2026, 1, 2, 3, 4, 6, tzinfo=datetime.UTC),
    )
    return [] if failure is None else [f"verify_request refused sign_bound's signature: {failure}"]


def check_license() -> list[str]:
    failures = []
    metadata = importlib.metadata.metadata(DIST)
    expression = " ".join(metadata.get_all("License-Expression") or [])
    legacy = " ".join(metadata.get_all("License") or [])
    if expression != "MIT" and "MIT" not in legacy:
        failures.append(f"license metadata: License-Expression {expression!r}, License {legacy!r}")
    files = importlib.metadata.files(DIST) or []
    licenses = [f for f in files if f.name == "LICENSE" and ".dist-info" in str(f)]
    if not licenses:
        failures.append("no LICENSE in the dist-info")
    elif "MIT License" not in licenses[0].read_text(encoding="utf-8"):
        failures.append(f"{licenses[0]} is not the MIT license")
    return failures


def check_archives(dist_dir: Path, source_dir: Path) -> list[str]:
    """The wheel holds the three packages and its dist-info only; the sdist holds the
    packages, README.md, LICENSE, pyproject.toml and docs/*.md, and no tests, examples or
    benchmarks. The summary's parts. Raises on failure."""
    failures = []
    (wheel,) = dist_dir.glob("*.whl")
    (sdist,) = dist_dir.glob("*.tar.gz")

    sources = set()
    for package in PACKAGES:
        for path in [*source_dir.glob(f"{package}/**/*.py"), source_dir / package / "py.typed"]:
            sources.add(path.relative_to(source_dir).as_posix())

    with zipfile.ZipFile(wheel) as archive:
        wheel_names = set(archive.namelist())
        metadata = archive.read(next(n for n in wheel_names if n.endswith(".dist-info/METADATA")))
    for name in sorted(sources - wheel_names):
        failures.append(f"wheel: {name} is missing")
    for name in sorted(wheel_names):
        top = PurePosixPath(name).parts[0]
        unexpected = top not in PACKAGES and not top.endswith(".dist-info")
        if unexpected or "__pycache__" in name or name.endswith((".pyc", ".pyo")):
            failures.append(f"wheel: unexpected {name}")
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel_names):
        failures.append("wheel: no dist-info/licenses/LICENSE")
    headers, _, body = metadata.decode("utf-8").partition("\n\n")
    readme = (source_dir / "README.md").read_text(encoding="utf-8")
    if "Description-Content-Type: text/markdown" not in headers or body.strip() != readme.strip():
        failures.append("wheel METADATA: the long description is not README.md (text/markdown)")
    for extra in [name for name in PROFILES if name]:
        if f"Provides-Extra: {extra}" not in headers:
            failures.append(f"wheel METADATA: no Provides-Extra: {extra}")

    with tarfile.open(sdist) as archive:  # names are <name>-<version>/<path>
        sdist_names = {name.partition("/")[2] for name in archive.getnames()} - {""}
    wanted = {"README.md", "LICENSE", "pyproject.toml", "PKG-INFO", *sources}
    wanted |= {p.relative_to(source_dir).as_posix() for p in source_dir.glob("docs/*.md")}
    for name in sorted(wanted - sdist_names):
        failures.append(f"sdist: {name} is missing")
    for name in sorted(sdist_names):
        top = PurePosixPath(name).parts[0]
        if top in {"tests", "examples", "bench", "scripts", ".ci"} or "__pycache__" in name:
            failures.append(f"sdist: unexpected {name}")

    if failures:
        raise CheckFailed(failures)
    docs = len(list(source_dir.glob("docs/*.md")))
    return [
        f"{wheel.name}: {len(wheel_names)} files, README long description, "
        f"extras {', '.join(name for name in PROFILES if name)}",
        f"{sdist.name}: {len(sdist_names)} entries, README, LICENSE, {docs} docs/*.md, no tests",
    ]


class CheckFailed(Exception):
    def __init__(self, failures: list[str]) -> None:
        super().__init__("\n".join(failures))
        self.failures = failures


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["installed"] and len(argv) == 2 and argv[1] in PROFILES:
            print("; ".join(check_installed(argv[1])))
        elif argv[:1] == ["archives"] and len(argv) == 3:
            print("\n".join(check_archives(Path(argv[1]), Path(argv[2]))))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except CheckFailed as error:
        for failure in error.failures:
            print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
