"""The README's Python examples, with what each needs around it (pure parsing).

A ```python block runs as written. What it needs around it is written in the README itself, in
an HTML comment right before the block, so readers don't see it:

    <!-- readme-test
    agent: 5001
    before:
        secret = os.environ["FOREST_AUTH_SECRET"]
    after:
        assert datasource.schema is not None
    -->

- `before:` / `after:`: code run before and after the block, in the same process (indented);
- `agent: PORT`: a warehouse agent runs where the block looks for one, on a free port that
  replaces PORT in the program;
- `serves: PORT`: the block serves for ever; it runs on a free port that replaces PORT, is
  probed until its agent answers, then stopped with SIGTERM and must exit 0.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

_BLOCK = re.compile(r"^```python\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)
_COMMENT_BEFORE = re.compile(r"<!-- readme-test\n(?P<body>(?:(?!-->).)*)-->\s*\Z", re.DOTALL)
_KEY = re.compile(r"^(?P<key>before|after|agent|serves):(?P<value>.*)$")


@dataclass(frozen=True)
class ReadmeExample:
    """One ```python block of the README and what it needs to run."""

    line: int
    code: str
    before: str = ""
    after: str = ""
    agent_port: int | None = None
    serves_port: int | None = None

    def script(self, port: int | None = None) -> str:
        """The program to run: before, the block, after; its port replaced by `port`."""
        program = "\n".join(part for part in (self.before, self.code, self.after) if part)
        replaced = self.agent_port or self.serves_port
        if replaced is not None and port is not None:
            program = program.replace(str(replaced), str(port))
        return program


def _directives(body: str) -> dict[str, str]:
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in body.splitlines():
        key = _KEY.match(raw)
        if key is not None:
            current = found.setdefault(key["key"], [])
            if key["value"].strip():
                current.append(key["value"].strip())
        elif raw.strip() and current is None:
            raise ValueError(f"readme-test comment: {raw!r} is under no key")
        elif current is not None:
            current.append(raw)
    return {key: textwrap.dedent("\n".join(lines)).strip() for key, lines in found.items()}


def readme_examples(text: str) -> list[ReadmeExample]:
    """Every ```python block of `text`, in order, with its readme-test comment if it has one."""
    examples = []
    for block in _BLOCK.finditer(text):
        before_block = text[: block.start()]
        comment = _COMMENT_BEFORE.search(before_block)
        directives = _directives(comment["body"]) if comment else {}
        examples.append(
            ReadmeExample(
                line=before_block.count("\n") + 1,
                code=block["code"],
                before=directives.get("before", ""),
                after=directives.get("after", ""),
                agent_port=int(directives["agent"]) if "agent" in directives else None,
                serves_port=int(directives["serves"]) if "serves" in directives else None,
            )
        )
    return examples
