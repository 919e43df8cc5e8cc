"""Execute the Python blocks of docs/tutorial.md in order, in one namespace.

    python scripts/run_tutorial.py [--doc docs/tutorial.md]

Run from the repository root: the blocks write their pictures under
``docs/images/tutorial``. The tests run the same blocks with tiny random
weights (``JAXSTYLE_WEIGHTS`` pointing at them) in a temporary directory.
"""

import argparse
import pathlib
import re


def code_blocks(markdown: str) -> list[str]:
    """The ```python fenced blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def run(doc: pathlib.Path) -> dict:
    """Run every block of ``doc`` in one namespace; return the namespace."""
    namespace: dict = {"__name__": "__tutorial__"}
    for i, block in enumerate(code_blocks(doc.read_text())):
        exec(compile(block, f"{doc.name}, block {i + 1}", "exec"), namespace)
    return namespace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doc", default=str(pathlib.Path(__file__).parent.parent / "docs" / "tutorial.md"))
    run(pathlib.Path(parser.parse_args().doc).resolve())


if __name__ == "__main__":
    main()
