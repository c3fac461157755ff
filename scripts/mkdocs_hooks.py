"""MkDocs hook: the site's home page is the README, its links made relative to docs/.

The README is the landing page on the forge and on the site; keeping one text means the
two cannot drift. Its links point into ``docs/`` (``docs/getting-started.md``), which from
the site's root are plain page links.
"""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001 (mkdocs' hook API)
    if page.file.src_uri != "index.md":
        return markdown
    return README.read_text().replace("](docs/", "](")
