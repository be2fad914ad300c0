"""`python -m bench <scenario> [options]`: run one benchmark scenario and print its report.

Every scenario is a module of `bench.scenarios` with `SUMMARY` (one line), `add_arguments`
(its options), `SMOKE` (the options of a run of seconds, which the test suite makes) and
`run(args) -> Report`. `--json PATH` also writes the report as JSON; the exit status is 1
when a verdict failed. `python -m bench` alone lists the scenarios.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path
from types import ModuleType

from bench import scenarios
from bench.harness.report import command_line


def scenario_modules() -> dict[str, ModuleType]:
    # A private module (`_name`) is a scenario's helper, e.g. a bench-only agent launcher.
    names = sorted(
        info.name
        for info in pkgutil.iter_modules(scenarios.__path__)
        if not info.name.startswith("_")
    )
    return {name: importlib.import_module(f"bench.scenarios.{name}") for name in names}


def main(argv: list[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    modules = scenario_modules()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="scenario", metavar="SCENARIO")
    for name, module in modules.items():
        command = commands.add_parser(name, help=module.SUMMARY, description=module.SUMMARY)
        command.add_argument("--json", type=Path, help="also write the report to this file")
        command.add_argument(
            "--smoke", action="store_true", help="a run of seconds, to see that it works"
        )
        module.add_arguments(command)
    args = parser.parse_args(arguments)
    if args.scenario is None:
        for name, module in modules.items():
            print(f"{name:16} {module.SUMMARY}")
        return 0
    module = modules[args.scenario]
    if args.smoke:
        args = parser.parse_args([args.scenario, *module.SMOKE, *arguments[1:]])
    report = module.run(args, command_line(arguments))
    print(report.markdown())
    if args.json is not None:
        args.json.write_text(report.to_json(), encoding="utf-8")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
