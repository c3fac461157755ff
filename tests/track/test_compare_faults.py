"""segexp compare over a folder with a corrupt run (issue 29): that run is skipped with a
warning naming it, the others are compared."""

from __future__ import annotations

from segexp.cli.compare import main
from tests.track.test_compare import make_run


def test_corrupt_metrics_json_is_skipped_with_a_warning(tmp_path, capsys):
    make_run(tmp_path, "0", ["optimizer.lr=0.1"], {"val/mIoU": 0.5})
    make_run(tmp_path, "1", ["optimizer.lr=0.01"], {"val/mIoU": 0.7})
    broken = make_run(tmp_path, "2", ["optimizer.lr=0.001"], {"val/mIoU": 0.9})
    (broken / "metrics.json").write_text('{"val/mIoU": 0.9')  # cut short by a full disk
    assert main([str(tmp_path), "--no-plots"]) == 0
    captured = capsys.readouterr()
    assert f"warning: skipping {broken}" in captured.err and "metrics.json" in captured.err
    assert "0.7" in captured.out and "0.5" in captured.out
    assert "0.001" not in captured.out and "0.9" not in captured.out
