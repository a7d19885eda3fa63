"""Render the settings tables in README.md from the settings modules, or check them.

Usage: python scripts/render_readme.py [--check]
The tables sit between `<!-- NAME -->` and `<!-- /NAME -->` markers.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from cachewire.hub.settings import settings_table as hub_table
from cachewire.sidecar.settings import settings_table as sidecar_table

README = Path(__file__).resolve().parent.parent / "README.md"
TABLES = {"hub-settings": hub_table, "sidecar-settings": sidecar_table}


def render(text: str) -> str:
    for name, table in TABLES.items():
        pattern = re.compile(rf"(<!-- {name} -->\n).*?(<!-- /{name} -->)", re.S)
        match = pattern.search(text)
        if not match:
            raise SystemExit(f"README.md has no <!-- {name} --> block")
        text = text[: match.end(1)] + table() + "\n" + text[match.start(2) :]
    return text


def main() -> int:
    current = README.read_text()
    rendered = render(current)
    if "--check" in sys.argv[1:]:
        if rendered != current:
            print("README.md settings tables are out of date: run `make readme`")
            return 1
        return 0
    README.write_text(rendered)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
