"""The README's complete example runs as written (the block under "## A complete example")."""

from __future__ import annotations

import os
import re

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _example() -> str:
    text = open(README, encoding="utf-8").read()
    section = text[text.index("\n## A complete example") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README: no python block under '## A complete example'"
    return match.group(1)


def test_readme_complete_example_runs(capsys):
    exec(compile(_example(), README, "exec"), {"__name__": "readme_example"})  # noqa: S102 - our own README
    printed = capsys.readouterr().out
    assert printed.startswith("['0', '2']") and "compression ratio" in printed
