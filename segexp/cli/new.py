"""``segexp new PATH [--package NAME]``: start a project of your own.

Writes a small, working project: ``pyproject.toml`` (depending on segexp, with the
``[tool.segexp]`` table that makes segexp find it), a package with an example model,
dataset and loss, a ``conf/`` whose options join segexp's config groups, tests for the
example code and a README with its commands. The files come from ``project_template/``
beside this module, with ``__package__`` and ``__project__`` replaced.
"""

from __future__ import annotations

import argparse
import importlib.util
import keyword
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from segexp.cli.errors import exit_codes
from segexp.errors import UserError

TEMPLATE = Path(__file__).resolve().parent / "project_template"
SUFFIX = ".tmpl"
HIDDEN = {"gitignore": ".gitignore"}  # template names that become dot files


class ScaffoldError(UserError):
    """``segexp new`` cannot write the project as asked."""


def package_name(project: str) -> str:
    """A Python package name from a folder name: ``my-lab 2`` -> ``my_lab_2``."""
    name = re.sub(r"\W+", "_", project.strip().lower()).strip("_") or "project"
    return f"p_{name}" if name[0].isdigit() else name


def check_package(name: str) -> None:
    """Refuse a package name that is not an identifier or that something already provides."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ScaffoldError(
            f"--package {name!r} is not a Python package name; use letters, digits and _ "
            "(not starting with a digit), e.g. --package mylab"
        )
    if name in sys.stdlib_module_names or importlib.util.find_spec(name) is not None:
        raise ScaffoldError(
            f"--package {name!r} is already importable here (a standard or installed module); "
            "a project package of that name would shadow it or be shadowed. Choose another "
            "with --package NAME."
        )


def scaffold(path: str | Path, package: str | None = None) -> list[Path]:
    """Write the project into ``path`` (new or empty); return the files written."""
    root = Path(path).expanduser().resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ScaffoldError(
            f"{root} already exists and is not an empty folder; segexp new writes a project "
            "into a new folder (nothing of yours is overwritten). Give another PATH."
        )
    package = package or package_name(root.name)
    check_package(package)
    written = []
    for source in sorted(TEMPLATE.rglob(f"*{SUFFIX}")):
        relative = source.relative_to(TEMPLATE).as_posix()[: -len(SUFFIX)]
        relative = HIDDEN.get(relative, relative).replace("__package__", package)
        target = root / relative
        text = source.read_text().replace("__package__", package)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text.replace("__project__", root.name))
        written.append(target)
    return written


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``segexp new`` (the docs test parses documented commands with it)."""
    parser = argparse.ArgumentParser(
        prog="segexp new",
        description="Start a segexp project: your model, dataset and loss, with their configs.",
    )
    parser.add_argument("path", help="the new project's folder (must not exist, or be empty)")
    parser.add_argument(
        "--package", default=None, help="its Python package (default: from the folder's name)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``segexp new`` with ``argv`` (default: ``sys.argv[1:]``); the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with exit_codes():
        written = scaffold(args.path, args.package)
    root = Path(args.path).expanduser().resolve()
    print(f"wrote {len(written)} files in {root}:")
    for path in written:
        print(f"  {path.relative_to(root)}")
    print(f"\nnext:\n  cd {args.path}\n  pip install -e .\n  segexp train\n  pytest")
    return 0
