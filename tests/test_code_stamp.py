"""A persisted checkpoint is resumed only by the code that wrote it (pipeline.stages.code_stamp)."""

from pipeline.stages import code_stamp


def test_checkpoint_of_other_code_is_discarded(tmp_path, capsys):
    out = tmp_path / "run"
    code_stamp(out, ["report.py"], ["checkpoint.pt"])
    assert not out.exists()  # nothing to resume: bad input still writes nothing
    out.mkdir()
    (out / "checkpoint.pt").write_text("killed before the first stamp")
    code_stamp(out, ["report.py"], ["checkpoint.pt"])
    assert (out / "checkpoint.pt").is_file()  # resumed
    code_stamp(out, ["report.py", "config.py"], ["checkpoint.pt"])  # other code
    assert not (out / "checkpoint.pt").exists()
    assert "written by other code" in capsys.readouterr().err
