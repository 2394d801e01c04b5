"""Converting and publishing the embedded checkpoint: jobs that convert the embedded model at the same time must not
undo each other's work, and a conversion that fails says so and publishes nothing."""
import pytest

from saefw.errors import SaefwError
from saefw.lm.embedded import _convert_gguf, _publish


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


def test_a_failed_conversion_names_the_file_and_publishes_nothing(tmp_path):
    # the conversion runs in a child process: its failure must reach the user as an error, not as a missing folder
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(SaefwError, match=r"converting .*broken.gguf to .*failed \(exit status [1-9]"):
        _convert_gguf(bad, tmp_path / "model")
    assert not (tmp_path / "model").exists()
