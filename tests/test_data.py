import numpy as np
import pytest
from PIL import Image

from schemas.labels import CLASSES
from training import synthetic
from training.data import DataError, has_split, load_split

from .conftest import FER2013, needs_fer2013


def pixels_text(side: int = 48, value: int = 7) -> str:
    return " ".join([str(value)] * side * side)


def write(path, text):
    path.write_text(text)
    return str(path)


def test_synthetic_is_deterministic_balanced_and_in_canonical_order():
    first, second = load_split("synthetic:140", "train"), load_split("synthetic:140", "train")
    assert first.images.shape == (140, 48, 48) and first.images.dtype.__str__() == "torch.uint8"
    assert (first.images == second.images).all() and (first.labels == second.labels).all()
    assert set(first.class_counts().values()) == {20}
    assert not (load_split("synthetic:140", "val").images[:7] == first.images[:7]).all()


def test_synthetic_expressions_differ_in_features():
    rng = np.random.default_rng(0)
    face, mask = synthetic.render_face("happy", rng)
    assert face.shape == mask.shape == (48, 48) and 0.02 < mask.mean() < 0.3


def test_fer2013_csv_splits_by_usage(tmp_path):
    rows = ["emotion,pixels,Usage", f"3,{pixels_text()},Training", f"6,{pixels_text(value=9)},PublicTest",
            f"0,{pixels_text()},PrivateTest", f"4,{pixels_text(side=24)},Training"]
    path = write(tmp_path / "fer2013.csv", "\n".join(rows) + "\n")
    train = load_split(path, "train")
    assert train.labels.tolist() == [3, 4] and train.images.shape == (2, 48, 48)
    val = load_split(path, "val")
    assert val.labels.tolist() == [6] and int(val.images[0, 0, 0]) == 9
    assert load_split(path, "test").labels.tolist() == [0]
    assert has_split(path, "val")


def test_course_csv_is_one_training_split(tmp_path):
    path = write(tmp_path / "train.csv", f"label,feature\n5,{pixels_text()}\n1,{pixels_text()}\n")
    assert load_split(path, "train").labels.tolist() == [5, 1]
    assert not has_split(path, "val")
    with pytest.raises(DataError, match="holds one split"):
        load_split(path, "val")


def test_image_folders_with_any_case_size_and_mode(tmp_path):
    for split, name, size, mode in (("train", "Happy", (64, 64), "RGB"), ("train", "SAD", (48, 48), "L"),
                                    ("val", "neutral", (30, 40), "RGBA")):
        folder = tmp_path / split / name
        folder.mkdir(parents=True)
        Image.new(mode, size, "white").save(folder / "a.png")
        (folder / "notes.txt").write_text("not an image, ignored by suffix")
    train = load_split(str(tmp_path), "train")
    assert sorted(train.labels.tolist()) == [CLASSES.index("happy"), CLASSES.index("sad")]
    assert train.images.shape == (2, 48, 48)
    assert load_split(str(tmp_path), "val", size=32).images.shape == (1, 32, 32)


@pytest.mark.parametrize("row, message", [
    (f"3,{' '.join(['1'] * 2000)},Training", r"fer2013.csv:3: wrong pixel count 2000"),
    (f"3,{pixels_text()[:-1]}x,Training", r"fer2013.csv:3: non-numeric pixel 'x'"),
    (f"9,{pixels_text()},Training", r"fer2013.csv:3: unknown label '9'"),
    (f"happy,{pixels_text()},Training", r"fer2013.csv:3: unknown label 'happy'"),
    (f"3,{pixels_text(value=300)},Training", r"fer2013.csv:3: pixel value out of range"),
    (f"3,{pixels_text()},Validation", r"fer2013.csv:3: unknown Usage 'Validation'"),
])
def test_bad_csv_rows_name_file_and_line(tmp_path, row, message):
    path = write(tmp_path / "fer2013.csv", f"emotion,pixels,Usage\n0,{pixels_text()},Training\n{row}\n")
    with pytest.raises(DataError, match=message):
        load_split(path, "train")


def test_unknown_csv_header(tmp_path):
    with pytest.raises(DataError, match="unknown CSV header"):
        load_split(write(tmp_path / "x.csv", "a,b\n1,2\n"), "train")


def test_unknown_class_folder(tmp_path):
    (tmp_path / "train" / "contempt").mkdir(parents=True)
    with pytest.raises(DataError, match="unknown class folder 'contempt'"):
        load_split(str(tmp_path), "train")


def test_unreadable_image_is_named(tmp_path):
    folder = tmp_path / "train" / "fear"
    folder.mkdir(parents=True)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg: unreadable image"):
        load_split(str(tmp_path), "train")


def test_empty_and_missing_splits(tmp_path):
    (tmp_path / "train" / "angry").mkdir(parents=True)
    with pytest.raises(DataError, match="split 'train' is empty"):
        load_split(str(tmp_path), "train")
    with pytest.raises(DataError, match="no val/ folder"):
        load_split(str(tmp_path), "val")
    with pytest.raises(DataError, match="split 'train' is empty"):
        load_split(write(tmp_path / "e.csv", "emotion,pixels,Usage\n"), "train")
    with pytest.raises(DataError, match="no such file"):
        load_split(str(tmp_path / "nowhere"), "train")


@needs_fer2013
def test_fer2013_image_folders_load_in_canonical_order():
    val = load_split(str(FER2013), "val")
    assert len(val) == 3589
    assert val.class_counts() == {"angry": 467, "disgust": 56, "fear": 496, "happy": 895, "sad": 653,
                                  "surprise": 415, "neutral": 607}
