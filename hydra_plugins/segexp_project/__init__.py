"""segexp's user-project search path for Hydra.

Inside a user project (``segexp.project``), the project's ``conf/`` is put in front of
segexp's own configs, so its options join segexp's groups (``model=mynet`` beside
``model=unet``) with no ``--config-dir``. Only segexp's apps are touched: the primary
config folder must be segexp's packaged ``conf/`` or a run folder's saved ``.hydra/``
(``reproduce=``/``resume=``).
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


def _is_segexp_app(search_path: ConfigSearchPath) -> bool:
    from segexp.configs import CONF_DIR

    for entry in search_path.get_path():
        if entry.provider != "main" or not entry.path:
            continue
        path = entry.path.removeprefix("file://")
        if path.startswith("pkg://"):
            continue
        folder = Path(path).resolve()
        if folder == CONF_DIR or folder.name == ".hydra":
            return True
    return False


class SegexpProjectSearchPath(SearchPathPlugin):
    """Prepends the user project's config folder to the search path of segexp's apps."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if not _is_segexp_app(search_path):
            return
        from segexp.project import find_project

        project = find_project()
        if project is not None and project.config_dir.is_dir():
            search_path.prepend(provider="segexp-project", path=f"file://{project.config_dir}")
