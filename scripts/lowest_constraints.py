"""Write a pip constraints file that pins every declared floor (``>=``) with ``==``.

Reads ``[project] dependencies`` and the ``test`` extra of pyproject.toml, following the
extra's references to this project's own extras (``flask-tokenguard[redis,memcached,demo]``),
so CI can install the lowest versions the project claims to support and run the tests there:

    python scripts/lowest_constraints.py > constraints.txt
    pip install -c constraints.txt -e ".[test]"

A requirement without a ``>=`` floor (``types-requests``) is left free. Python 3.11+ (tomllib).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
#: ``name[extras] >=1.2, <2 ; marker``: the name, its extras, and the rest.
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?\s*([^;]*)(;.*)?$")
_FLOOR = re.compile(r">=\s*([^\s,]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(project: dict, extras: list[str]) -> list[str]:
    """The project's dependencies plus those of ``extras``, self-references expanded."""
    own = canonical(project["name"])
    optional = project.get("optional-dependencies", {})
    found = list(project.get("dependencies", []))
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        if extra not in optional:
            raise SystemExit(f"pyproject.toml has no extra {extra!r}")
        for requirement in optional[extra]:
            match = _REQUIREMENT.match(requirement)
            if match and canonical(match.group(1)) == own:
                todo.extend(e.strip() for e in (match.group(2) or "").split(",") if e.strip())
            else:
                found.append(requirement)
    return found


def _release(version: str) -> tuple[int, ...]:
    """``"1.7.2"`` -> ``(1, 7, 2)``, enough to compare plain release floors."""
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("."))


def floors(reqs: list[str]) -> dict[str, str]:
    """``{name: lowest version}`` for every requirement with a ``>=`` floor."""
    pins: dict[str, str] = {}
    for requirement in reqs:
        match = _REQUIREMENT.match(requirement)
        if match is None:
            raise SystemExit(f"cannot parse requirement {requirement!r}")
        if match.group(4):
            raise SystemExit(f"markers are not handled: {requirement!r}")
        floor = _FLOOR.search(match.group(3))
        if floor is None:
            continue
        name = canonical(match.group(1))
        version = floor.group(1)
        if name not in pins or _release(version) > _release(pins[name]):
            pins[name] = version  # of two floors, the higher one is the lowest installable
    return pins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    parser.add_argument("--extra", action="append", default=None, help="default: test")
    parser.add_argument("-o", "--output", type=Path, help="default: standard output")
    args = parser.parse_args(argv)
    project = tomllib.loads(args.pyproject.read_text(encoding="utf-8"))["project"]
    pins = floors(requirements(project, args.extra or ["test"]))
    text = "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
