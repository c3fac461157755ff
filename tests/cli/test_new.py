"""``segexp new``: the files it writes, and the names and folders it refuses."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
import yaml

from segexp.cli.new import ScaffoldError, package_name, scaffold
from segexp.project import find_project


def test_the_scaffold_is_a_project_segexp_finds(tmp_path):
    written = scaffold(tmp_path / "My-Lab 2", package="mylab")
    root = tmp_path / "My-Lab 2"
    names = {str(p.relative_to(root)) for p in written}
    assert {"pyproject.toml", "README.md", ".gitignore", "mylab/models.py", "mylab/data.py",
            "mylab/losses.py", "conf/model/tiny.yaml", "conf/project/default.yaml",
            "tests/test_mylab.py"} <= names  # fmt: skip
    for path in written:
        text = path.read_text()
        assert "__package__" not in text and "__project__" not in text, path
        if path.suffix == ".py":
            ast.parse(text)  # every module is valid Python
        if path.suffix == ".yaml":
            yaml.safe_load(text)
    project = find_project(root / "mylab")  # from inside the project too
    assert project.package == "mylab" and project.config_dir == root / "conf"
    assert project.trusted == ["mylab"]
    assert yaml.safe_load((root / "conf/model/tiny.yaml").read_text())["_target_"] == (
        "mylab.models.TinyNet"
    )


@pytest.mark.parametrize(
    ("folder", "expected"), [("mylab", "mylab"), ("My-Lab 2", "my_lab_2"), ("3d-seg", "p_3d_seg")]
)
def test_the_package_name_comes_from_the_folder(folder, expected):
    assert package_name(folder) == expected


@pytest.mark.parametrize(
    ("package", "why"),
    [("my-lab", "not a Python package name"), ("class", "not a Python package name"),
     ("json", "already importable"), ("torch", "already importable")],
)  # fmt: skip
def test_names_that_would_clash_are_refused(tmp_path, package, why):
    with pytest.raises(ScaffoldError, match=why):
        scaffold(tmp_path / "p", package=package)
    assert not (tmp_path / "p").exists()  # nothing written


def test_an_existing_folder_is_never_written_into(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "notes.txt").write_text("mine")
    result = subprocess.run(
        [sys.executable, "-m", "segexp", "new", str(tmp_path / "p"), "--package", "mylab"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "not an empty folder" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert [p.name for p in (tmp_path / "p").iterdir()] == ["notes.txt"]
