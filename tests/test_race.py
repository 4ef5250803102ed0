import pytest

from bort.errors import BortError
from data.race import read_race


def test_levels_and_labels():
    middle = read_race("RACE-M", "train", "test_data/race")
    assert [e["idx"] for e in middle] == ["middle1.txt-0", "middle1.txt-1", "middle2.txt-0"]
    assert [e["label"] for e in middle] == [0, 1, 0] and len(middle[0]["choices"]) == 4
    assert len(read_race("RACE", "dev", "test_data/race")) == 6
    assert all(e["label"] is None for e in read_race("RACE-H", "test", "test_data/race"))


def test_errors(tmp_path):
    with pytest.raises(BortError, match="directory not found"):
        read_race("RACE-H", "train", str(tmp_path))
    folder = tmp_path / "train" / "high"
    folder.mkdir(parents=True)
    (folder / "1.txt").write_text('{"article": "a", "questions": ["q"], "options": [["a","b","c","d"]], '
                                  '"answers": ["E"]}')
    with pytest.raises(BortError, match=r"1.txt: answer 0 must be one of A, B, C, D"):
        read_race("RACE-H", "train", str(tmp_path))
