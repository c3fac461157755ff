"""Class-list rules that used to corrupt metrics silently (issue 29): a name repeated in
classes.txt or data.class_names, and a data.ignore_index that is a real class id."""

from __future__ import annotations

import pytest

from segexp.data.classes import ClassesError, resolve_num_classes
from segexp.data.datasets.base import DataError
from tests import fixtures_data as fixtures


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "data"
    fixtures.make_folder(root, counts={"train": 1, "val": 1})
    return root


def test_repeated_name_in_classes_txt_names_both_lines(folder, compose_cfg):
    (folder / "classes.txt").write_text("bg\ncar\n\ncar\n")
    cfg = compose_cfg(["data=folder", f"data.root={folder}"])
    with pytest.raises(DataError, match=r"line 4 repeats class name 'car' \(line 2\)"):
        resolve_num_classes(cfg.data)


def test_repeated_name_in_class_names_names_the_key(folder, compose_cfg):
    (folder / "classes.txt").unlink(missing_ok=True)
    cfg = compose_cfg(["data=folder", f"data.root={folder}", "data.class_names=[bg,car,car]"])
    with pytest.raises(ClassesError, match=r"data.class_names=.* repeats car"):
        resolve_num_classes(cfg.data)


@pytest.mark.parametrize(("ignore", "refused"), [(0, True), (2, True), (3, False), (255, False)])
def test_ignore_index_that_is_a_class_is_refused(folder, compose_cfg, ignore, refused):
    (folder / "classes.txt").write_text("bg\ncar\nroad\n")  # 3 classes: ids 0, 1, 2
    cfg = compose_cfg(["data=folder", f"data.root={folder}", f"data.ignore_index={ignore}"])
    if not refused:
        assert resolve_num_classes(cfg.data) == 3
        return
    with pytest.raises(ClassesError, match=rf"data.ignore_index={ignore} is class {ignore}"):
        resolve_num_classes(cfg.data)


def test_check_reports_a_repeated_class_name(folder, capsys):
    from segexp.data.check import check, compose

    (folder / "classes.txt").write_text("bg\ncar\ncar\n")
    code = check(compose(["data=folder", f"data.root={folder}"]))
    out = capsys.readouterr().out
    assert code == 1 and "line 3 repeats class name 'car' (line 2)" in out, out
