"""Publishing a converted checkpoint: jobs that convert the embedded model at the same time must not undo each
other's work."""
from saefw.lm.embedded import _publish


def _folder(path, marker):
    path.mkdir()
    (path / "config.json").write_text(marker)
    (path / "model.safetensors").write_text(marker)
    return path


def test_first_conversion_is_moved_into_place(tmp_path):
    _publish(_folder(tmp_path / "t.partial-1", "one"), tmp_path / "t")
    assert (tmp_path / "t" / "config.json").read_text() == "one" and not (tmp_path / "t.partial-1").exists()


def test_a_later_identical_conversion_leaves_the_published_one_alone(tmp_path):
    _publish(_folder(tmp_path / "t.partial-1", "one"), tmp_path / "t")
    _publish(_folder(tmp_path / "t.partial-2", "two"), tmp_path / "t")
    assert (tmp_path / "t" / "config.json").read_text() == "one" and not (tmp_path / "t.partial-2").exists()


def test_an_incomplete_folder_in_the_way_is_replaced(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "config.json").write_text("left over")
    _publish(_folder(tmp_path / "t.partial-1", "one"), tmp_path / "t")
    assert (tmp_path / "t" / "model.safetensors").read_text() == "one"
