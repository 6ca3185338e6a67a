"""The "Role Variables" section of each Ansible role's README, from its defaults/main.yml.

    .venv/bin/python scripts/role_readme.py            # rewrite the sections in place
    .venv/bin/python scripts/role_readme.py --check    # exit 1 when a README is stale

Each variable's comment block above it in defaults/main.yml is its description, the
value after the colon its default; ``# --- Title ---`` lines become sub-headings. The
section sits between the BEGIN/END markers of deploy/roles/<role>/README.md; the rest of
the README is written by hand. tests/rig/test_deploy_static.py keeps both in step.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parents[1]
ROLES = ROOT / "deploy" / "roles"
BEGIN = "<!-- BEGIN variables: made by scripts/role_readme.py from defaults/main.yml -->"
END = "<!-- END variables -->"
VAR = re.compile(r"^([a-z][a-z0-9_]*):(.*)$")
HEADING = re.compile(r"^# -+ (.+?) -*$")
PLACEHOLDER = re.compile(r"[\w./*+#-]*<[\w]+>[\w./*+#<>-]*")


def variables_section(defaults: Path) -> str:
    """Markdown: every variable with its default and description, by heading."""
    out: List[str] = []
    comment: List[str] = []
    lines = defaults.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        heading = HEADING.match(line)
        if heading:
            out += ["", f"#### {heading.group(1)}", ""]
            comment = []
        elif line.startswith("#"):
            comment.append(line[2:].rstrip() if line.startswith("# ") else line[1:].strip())
        elif not line.strip() or line == "---":
            comment = []
        elif VAR.match(line):
            name, value = VAR.match(line).groups()
            value = value.strip()
            block = []
            while i < len(lines) and lines[i].startswith(("  ", "- ")):
                block.append(lines[i])
                i += 1
            out.append(_entry(name, value, comment, block))
            comment = []
    return "\n".join([BEGIN, *out, "", END])


def _entry(name: str, value: str, comment: List[str], block: List[str]) -> str:
    """One list item: prose joined; an indented part of the comment (a table of keys,
    an example) kept as laid out; a multi-line default as YAML."""
    laid = next((n for n, c in enumerate(comment) if c.startswith(" ") or c.startswith(
        "e.g. [")), len(comment))
    text = " ".join(c.strip() for c in comment[:laid] if c.strip())
    text = PLACEHOLDER.sub(lambda m: f"`{m.group(0)}`", text)  # <prefix> is no HTML tag
    head = f"- `{name}` (default `{value}`): {text}" if not block else f"- `{name}`: {text}"
    parts = [head]
    if comment[laid:]:
        body = "\n".join("  " + c for c in comment[laid:])
        parts.append(f"\n  ```text\n{body}\n  ```")
    if block:
        body = "\n".join("  " + b for b in block)
        parts.append(f"\n  Default:\n\n  ```yaml\n{body}\n  ```")
    return "\n".join(parts)


def update(readme: Path, section: str) -> str:
    text = readme.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + section + text[end:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--check", action="store_true", help="only say whether a README is stale")
    args = p.parse_args(argv)
    stale = []
    for role in sorted(r for r in ROLES.iterdir() if (r / "defaults" / "main.yml").is_file()):
        readme = role / "README.md"
        new = update(readme, variables_section(role / "defaults" / "main.yml"))
        if new != readme.read_text():
            stale.append(str(readme.relative_to(ROOT)))
            if not args.check:
                readme.write_text(new)
    if stale:
        print(("stale: " if args.check else "rewritten: ") + ", ".join(stale))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
