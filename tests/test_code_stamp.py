"""A persisted checkpoint is resumed only by the code that wrote it (pipeline.stages.code_stamp)."""

from pipeline.stages import code_stamp
from tests.test_dvc_deps import fake_project


def test_checkpoint_of_other_code_is_discarded(tmp_path, capsys):
    root, out = tmp_path / "src", tmp_path / "run"
    fake_project(root)
    code_stamp(out, "run", ["checkpoint.pt"], root=root)
    assert not out.exists()  # nothing to resume: bad input still writes nothing
    out.mkdir()
    (out / "checkpoint.pt").write_text("killed before the first stamp")
    code_stamp(out, "run", ["checkpoint.pt"], root=root)
    assert (out / "checkpoint.pt").is_file()  # resumed
    (root / "pipeline/unused.py").write_text("x = 1\n")  # not imported by the stage
    code_stamp(out, "run", ["checkpoint.pt"], root=root)
    assert (out / "checkpoint.pt").is_file()
    (root / "pipeline/sub/deep.py").write_text("f = 2\n")  # imported (indirectly): other code
    code_stamp(out, "run", ["checkpoint.pt"], root=root)
    assert not (out / "checkpoint.pt").exists()
    assert "written by other code" in capsys.readouterr().err


def test_a_train_checkpoint_is_stamped_with_its_own_models_code(tmp_path):
    """As the per-model train stages' deps: editing SDGM's file leaves an SS-HMVAE-kl
    checkpoint resumable, and SDGM's not."""
    import shutil

    from pipeline.imports import ROOT, code_digest

    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    before = {m: code_digest("train", tmp_path, model=m) for m in ("ss_hmvae_kl", "sdgm")}
    with (tmp_path / "pipeline/vae/sdgm.py").open("a") as f:
        f.write("# an edit\n")
    assert code_digest("train", tmp_path, model="ss_hmvae_kl") == before["ss_hmvae_kl"]
    assert code_digest("train", tmp_path, model="sdgm") != before["sdgm"]
