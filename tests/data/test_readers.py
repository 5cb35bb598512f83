import pytest
from conftest import shared_data

from protomdm.data.cub import CUBDataset
from protomdm.data.nih import NIHDataset, read_data_entry
from protomdm.errors import UserError


def test_cub_reader_on_the_publishers_files():
    root = shared_data("cub-sample")
    names = ("001.Black_footed_Albatross", "005.Crested_Auklet", "017.Cardinal")
    train, test = CUBDataset(root, "train", names, (32, 32)), CUBDataset(root, "test", names, (32, 32))
    assert len(train) + len(test) == 3
    img, label, mask = (train if len(train) else test)[0]
    assert img.shape == (3, 32, 32) and 0 <= img.min() and img.max() <= 1 and label in (0, 1, 2)
    with pytest.raises(UserError, match="999.Dodo"):
        CUBDataset(root, "train", ("999.Dodo",), (32, 32))


def test_nih_reader_on_a_miniature_copy(tmp_path):
    src = shared_data("nih-sample")
    (tmp_path / "images_001" / "images").mkdir(parents=True)
    for p in (src / "images").glob("*.png"):
        (tmp_path / "images_001" / "images" / p.name).symlink_to(p)
    (tmp_path / "Data_Entry_2017.csv").write_text((src / "data_entry_v2020_rows_for_images.csv").read_text())
    (tmp_path / "train_val_list.txt").write_text("00001933_000.png\n00004296_000.png\n")
    (tmp_path / "test_list.txt").write_text("00008386_000.png\n00009745_000.png\n")
    labels = read_data_entry(tmp_path / "Data_Entry_2017.csv")
    assert labels["00004296_000.png"] == ["Atelectasis", "Fibrosis", "Nodule"]
    ds = NIHDataset(tmp_path, "train", ("Atelectasis", "Nodule", "Pneumonia"), (64, 64))
    img, y, _ = ds[1]
    assert img.shape == (1, 64, 64) and y.tolist() == [1.0, 1.0, 0.0]
    assert ds[0][1].tolist() == [0.0, 0.0, 1.0]  # Consolidation|Pneumonia
    with pytest.raises(UserError, match="Infiltrate"):
        NIHDataset(tmp_path, "train", ("Infiltrate",), (64, 64))
