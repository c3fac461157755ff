"""A user project: a folder whose ``pyproject.toml`` has a ``[tool.segexp]`` table.

    [tool.segexp]
    package = "mylab"      # the project's Python package: trusted when its checkpoints load
    config_dir = "conf"    # its Hydra configs, on top of segexp's own (default: conf)

``segexp new`` writes one. Any segexp command run inside that folder (or below it) finds
it: the project's ``conf/`` joins segexp's config groups through Hydra's search path (the
``hydra_plugins/segexp_project`` plugin), so ``model=<theirs>`` works next to ``model=unet``,
and checkpoints that build the project's own classes load without naming them. The
project is found from the working folder, or from ``$SEGEXP_PROJECT`` when that is set.
Reading it imports nothing heavy (Hydra loads the plugin for every ``--help``).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from segexp.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the tomli backport has the same API
    import tomli as tomllib

PROJECT_ENV = "SEGEXP_PROJECT"
_PACKAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ProjectError(UserError):
    """A ``[tool.segexp]`` table that cannot be used as it is."""


@dataclass(frozen=True)
class Project:
    """What segexp reads from a user project's ``[tool.segexp]``."""

    root: Path
    package: str | None
    config_dir: Path

    @property
    def trusted(self) -> list[str]:
        """Packages whose classes this project's checkpoints may build: its own."""
        return [self.package] if self.package else []


def read_project(pyproject: Path) -> Project | None:
    """The project that ``pyproject`` describes, or None when it has no ``[tool.segexp]``."""
    try:
        with open(pyproject, "rb") as file:
            table = tomllib.load(file).get("tool", {}).get("segexp")
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ProjectError(f"{pyproject}: cannot read it ({error}); fix or remove it") from None
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ProjectError(f"{pyproject}: [tool.segexp] must be a table")
    unknown = sorted(set(table) - {"package", "config_dir"})
    if unknown:
        raise ProjectError(
            f"{pyproject}: [tool.segexp] has unknown key(s) {', '.join(unknown)}; "
            "known: package, config_dir"
        )
    package = table.get("package")
    if package is not None and not (isinstance(package, str) and _PACKAGE_NAME.fullmatch(package)):
        raise ProjectError(
            f"{pyproject}: [tool.segexp] package = {package!r} is not a top-level Python "
            'package name; write it as it is imported, e.g. package = "mylab"'
        )
    config_dir = table.get("config_dir", "conf")
    if not isinstance(config_dir, str):
        raise ProjectError(f"{pyproject}: [tool.segexp] config_dir must be a folder name")
    root = pyproject.parent.resolve()
    return Project(root=root, package=package, config_dir=(root / config_dir).resolve())


def find_project(start: str | os.PathLike | None = None) -> Project | None:
    """The user project around ``start`` (default: ``$SEGEXP_PROJECT``, else the working
    folder): the nearest ``pyproject.toml`` upwards that has a ``[tool.segexp]`` table."""
    if start is None:
        named = os.environ.get(PROJECT_ENV)
        if named:
            project = read_project(Path(named).expanduser() / "pyproject.toml")
            if project is None:
                raise ProjectError(
                    f"${PROJECT_ENV}={named} has no pyproject.toml with a [tool.segexp] table"
                )
            return project
        start = Path.cwd()
    folder = Path(start).resolve()
    for candidate in (folder, *folder.parents):
        pyproject = candidate / "pyproject.toml"
        if pyproject.is_file():
            project = read_project(pyproject)
            if project is not None:
                return project
    return None
