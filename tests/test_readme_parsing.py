"""How the README's examples are found, what their readme-test comments say, and that the
README names everything the packages export (pure)."""

from __future__ import annotations

import importlib
import textwrap

import pytest

from tests.support.readme import readme_examples
from tests.support.warehouse import REPO_ROOT

README = REPO_ROOT / "README.md"

FENCE = "```"


def _markdown(text: str) -> str:
    return textwrap.dedent(text).replace("~~~", FENCE)


def test_every_python_block_is_found_with_its_line_and_nothing_else() -> None:
    text = _markdown(
        """\
        # Title

        ~~~python
        print("one")
        ~~~

        ~~~sh
        echo not python
        ~~~

        ~~~python
        print("two")
        ~~~
        """
    )

    examples = readme_examples(text)

    assert [(each.line, each.code) for each in examples] == [
        (3, 'print("one")\n'),
        (11, 'print("two")\n'),
    ]
    assert examples[0].before == examples[0].after == ""
    assert examples[0].agent_port is None and examples[0].serves_port is None


def test_a_comment_right_before_a_block_gives_its_before_after_and_ports() -> None:
    text = _markdown(
        """\
        <!-- readme-test
        agent: 5001
        before:
            import os
            secret = os.environ["S"]
        after:
            client.stop()
        -->
        ~~~python
        client = connect("http://127.0.0.1:5001", secret)
        ~~~
        """
    )

    (example,) = readme_examples(text)

    assert example.before == 'import os\nsecret = os.environ["S"]'
    assert example.after == "client.stop()"
    assert example.agent_port == 5001
    assert example.script(port=40123) == (
        'import os\nsecret = os.environ["S"]\n'
        'client = connect("http://127.0.0.1:40123", secret)\n\n'
        "client.stop()"
    )


def test_a_comment_binds_only_to_the_block_right_after_it() -> None:
    text = _markdown(
        """\
        <!-- readme-test
        serves: 5001
        -->
        ~~~python
        serve(5001)
        ~~~

        Some prose.

        ~~~python
        print(5001)
        ~~~
        """
    )

    first, second = readme_examples(text)

    assert first.serves_port == 5001 and first.script(port=0) == "serve(0)\n"
    assert second.serves_port is None and second.script(port=0) == "print(5001)\n"


def test_a_line_under_no_key_is_refused() -> None:
    text = _markdown(
        """\
        <!-- readme-test
        secret = 1
        -->
        ~~~python
        pass
        ~~~
        """
    )

    with pytest.raises(ValueError, match="under no key"):
        readme_examples(text)


@pytest.mark.parametrize("package", ["rpc_agent", "rpc_datasource"])
def test_every_name_a_package_exports_is_in_the_readme(package: str) -> None:
    module = importlib.import_module(package)
    readme = README.read_text(encoding="utf-8")

    undocumented = [name for name in module.__all__ if f"`{name}" not in readme]

    assert undocumented == []
