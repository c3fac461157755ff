"""The docs cannot rot: every command they show works, the site builds strict and loads.

``tests/docs/doccmds.py`` finds and checks the commands (what "works" means for each kind).
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import run_script
from tests.docs import doccmds
from tests.docs.doccmds import QUICK, ROOT, Command, check, commands, pages

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TRAIN_RUN = re.compile(r"outputs/\d{4}-\d{2}-\d{2}/\d{2}-\d{2}-\d{2}(-\d+)?$")


def all_commands() -> list[Command]:
    return [command for page in pages() for command in commands(page)]


def failures(found: list[Command]) -> list[str]:
    return [f"{c.where()}: {c.text}\n    -> {why}" for c in found if (why := check(c))]


def test_every_documented_command_is_valid() -> None:
    """Each command of the README and the site composes (or parses) as written."""
    found = [c for c in all_commands() if not project_block(c)]
    segexp = [c for c in found if doccmds.segexp_argv(c.words) is not None]
    print(f"\n{len(found)} documented commands, {len(segexp)} of them segexp commands, "
          f"{sum(c.run for c in found)} run as they stand")  # fmt: skip
    # The parser must find the commands: a fence-parsing bug that finds none passes nothing.
    assert len(segexp) >= 60, [c.text for c in found]
    assert not failures(found), "\n".join(failures(found))


def test_a_renamed_option_or_key_in_a_page_fails(tmp_path: Path) -> None:
    """A copy of a page with an option renamed (model=fpn -> fpnx) and a key misspelt
    fails, naming the line; the page as it stands passes."""
    page = ROOT / "docs" / "getting-started.md"
    assert not failures(commands(page))
    broken = tmp_path / "getting-started.md"
    text = page.read_text()
    assert "segexp train model=fpn\n" in text
    broken.write_text(
        text.replace("segexp train model=fpn\n", "segexp train model=fpnx\n").replace(
            "split=val", "splitt=val"
        )
    )
    found = failures(commands(broken))
    assert len(found) == 2, found
    assert "model/fpnx" in found[0] and "splitt" in found[1]
    line = text.splitlines().index("segexp train model=fpn") + 1
    assert found[0].startswith(f"{broken}:{line}:")


def test_a_removed_command_or_target_fails(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\nsegexp trian model=fpn\nmake tset\nsegxp train\nsegexp compare runs --bogus\n```\n"
    )
    found = failures(commands(page))
    assert len(found) == 4, found
    assert "no command 'trian'" in found[0] and "tset" in found[1]
    assert "unknown program 'segxp'" in found[2] and "refuses" in found[3]


def test_a_sweep_checks_every_listed_value(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```bash\nsegexp train -m model=unet,fpn loss=ce,dcie\n```\n")
    (found,) = failures(commands(page))
    assert "loss/dcie" in found


def test_no_command_hides_outside_a_bash_block() -> None:
    """A `segexp ...` line in a plain block would escape the checks: commands go in bash blocks."""
    hidden = []
    for page in pages():
        fence = None
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if line.strip().startswith("```"):
                fence = None if fence is not None else line.strip()[3:].strip()
            elif fence not in (None, "bash", "sh") and re.match(r"\s*(segexp|make) ", line):
                hidden.append(f"{page.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hidden, "\n".join(hidden)


def project_block(command: Command) -> bool:
    """Commands of a block marked `<!-- docs-test: project -->`: composed in a project."""
    return command.mark == "project"


def test_project_commands_compose_in_a_new_project(tmp_path: Path, monkeypatch) -> None:
    """Commands shown for a user project compose there (its options join segexp's groups)
    and not without it (so the marker is needed)."""
    from segexp.cli.new import scaffold

    found = [c for c in all_commands() if project_block(c)]
    assert len(found) >= 3
    monkeypatch.chdir(tmp_path)  # a project is found from the working folder too
    monkeypatch.delenv("SEGEXP_PROJECT", raising=False)
    assert failures(found), "these compose without a project: drop the marker"
    scaffold(tmp_path / "myproject", "mylab")
    monkeypatch.setenv("SEGEXP_PROJECT", str(tmp_path / "myproject"))
    assert not failures(found), "\n".join(failures(found))


def run_blocks() -> list[list[Command]]:
    blocks: dict[tuple[Path, int], list[Command]] = {}
    for command in all_commands():
        if command.run:
            blocks.setdefault((command.page, command.block), []).append(command)
    return list(blocks.values())


def newest_train_run(work: Path) -> str:
    runs = sorted(
        p.parents[1].relative_to(work).as_posix()
        for p in work.glob("outputs/*/*/.hydra/config.yaml")
    )
    runs = [r for r in runs if TRAIN_RUN.match(r)]
    assert runs, f"no training run under {work / 'outputs'} for outputs/<date>/<time>"
    return runs[-1]


@pytest.mark.slow
@pytest.mark.parametrize("block", run_blocks(), ids=lambda b: f"{b[0].page.name}:{b[0].line}")
def test_runnable_blocks_run(block: list[Command], tmp_path: Path) -> None:
    """A block marked `<!-- docs-test: run -->` runs top to bottom in a fresh folder, on tiny
    data; every command exits 0."""
    env = {**os.environ, "WANDB_MODE": "offline", "SEGEXP_PROJECT": ""}
    for command in block:
        argv = doccmds.segexp_argv(command.words)
        assert argv is not None, f"{command.where()}: only segexp commands run here"
        args = [a.replace("outputs/<date>/<time>", "{run}") for a in argv]
        if "{run}" in " ".join(args):
            args = [a.replace("{run}", newest_train_run(tmp_path)) for a in args]
        if argv[0] == "train" and not any(a.startswith(("reproduce=", "resume=")) for a in args):
            args += QUICK
        result = run_script("-m", "segexp", *args, cwd=tmp_path, env=env)
        assert result.returncode == 0, f"{command.where()}: {command.text}\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built with --strict (a broken link, anchor or API reference fails)."""
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "WARNING" not in result.stderr, result.stderr[-4000:]
    return out


def site_pages(site: Path) -> list[str]:
    return sorted(
        p.relative_to(site).as_posix()
        for p in site.rglob("index.html")
        if p.parent.name not in ("404",) and "assets" not in p.parts
    )


@pytest.mark.slow
def test_site_builds_strict_with_every_page(site: Path) -> None:
    built = site_pages(site)
    for page in [p for p in pages() if p.parent.name == "docs" or p.parent.parent.name == "docs"]:
        rel = page.relative_to(ROOT / "docs").with_suffix("")
        expected = (
            "index.html"
            if rel.name == "index" and rel.parent == Path(".")
            else (f"{rel.parent / 'index.html'}" if rel.name == "index" else f"{rel}/index.html")
        )
        assert expected in built, (page, built)
    # The README is the home page, its links turned into site links.
    home = (site / "index.html").read_text()
    assert "The two commands" in home and 'href="getting-started/"' in home


@pytest.fixture(scope="module")
def served(site: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def chromium(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=8000",
         *args, url],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_site_in_a_real_browser(site: Path, served: str, tmp_path: Path) -> None:
    """Every page loads in headless chromium with no console message (a script error or a
    missing file is one) and renders its article; the search index is served and finds a
    page by a word of it."""
    built = site_pages(site)
    assert len(built) >= 20, built
    for page in built:
        url = f"{served}/{page.removesuffix('index.html')}"
        result = chromium(url, "--dump-dom")
        console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
        assert not console, f"{url}: {console}"
        assert "<article" in result.stdout, f"{url}: no article rendered"
    # The search index the page's search box reads is served, and it finds a page by a word.
    import json
    import urllib.request

    with urllib.request.urlopen(f"{served}/search/search_index.json", timeout=30) as response:
        index = json.load(response)
    hits = {doc["location"] for doc in index["docs"] if "SLURM" in doc.get("text", "")}
    assert any(location.startswith("clusters/") for location in hits), sorted(hits)[:10]


def group_table_problems(page: Path, conf: Path) -> list[str]:
    """Rows of the config-group table (``| `group` | `option`, ... | what |``) against the
    YAML files of ``conf/<group>/``: every group with options has a row, and each row names
    exactly the group's options."""
    rows = {}
    for line in page.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"`\w+`", cells[0]):
            rows[cells[0].strip("`")] = set(re.findall(r"`([\w.]+)`", cells[1]))
    problems = []
    for group in sorted(p for p in conf.iterdir() if p.is_dir()):
        options = {f.stem for f in group.glob("*.yaml")}
        if not options:
            continue
        listed = rows.get(group.name)
        if listed is None:
            problems.append(f"group {group.name} ({', '.join(sorted(options))}) has no row")
        elif listed != options:
            missing, extra = sorted(options - listed), sorted(listed - options)
            problems.append(f"group {group.name}: not listed {missing}, no such option {extra}")
    return problems


def test_the_config_group_table_lists_every_option(tmp_path: Path) -> None:
    """docs/configuration.md's table names every option of every config group (a new YAML
    file without a row, or a row naming a removed file, fails); a copy with one option
    dropped and one group removed fails with both named."""
    from segexp.configs import CONF_DIR

    page = ROOT / "docs" / "configuration.md"
    assert group_table_problems(page, CONF_DIR) == []
    text = page.read_text()
    broken = tmp_path / "configuration.md"
    broken.write_text(
        "\n".join(
            line.replace(", `tensorboard`", "")
            for line in text.splitlines()
            if not line.startswith("| `experiment`")
        )
    )
    assert group_table_problems(broken, CONF_DIR) == [
        "group experiment (unet_r18_shapes) has no row",
        "group logger: not listed ['tensorboard'], no such option []",
    ]
