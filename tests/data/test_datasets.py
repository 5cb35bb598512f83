"""A dataset is one module: its source and its own options, read flat from a config's data: section."""

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import yaml

from protomdm.cli import main
from protomdm.config import ModelConfig, from_dict, to_dict
from protomdm.data import DatasetSource, dataset_source, list_datasets, register_dataset
from protomdm.data.config import _OPTIONS, DataConfig, NoOptions, options_class
from protomdm.data.manifests import Check
from protomdm.data.sources import _DATASETS, EvalOptions
from protomdm.data.synthetic import SyntheticLesions
from protomdm.errors import ConfigError


@dataclass
class ShelfOptions:
    labels: str = "labels.csv"
    shelves: int = 1


class ShelfSource(DatasetSource):
    """A toy source whose check reports its own options."""

    def training(self, model):
        raise NotImplementedError

    def evaluation(self, model, options, shard=(0, 1)):
        return iter(())

    def check(self):
        return [Check(self.data.labels, "ok", f"{self.data.shelves} shelves under {self.root()}")]


@pytest.fixture
def shelf():
    register_dataset("shelf", options=ShelfOptions)(ShelfSource)
    yield
    _DATASETS.pop("shelf")
    _OPTIONS.pop("shelf")


def test_a_registered_dataset_reads_its_own_options_from_the_config(shelf, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"data": {"dataset": "shelf", "labels": "mine.csv", "shelves": 3,
                                                              "batch_size": 4}}))
    assert main(["check-data", "--dataset", "shelf", "--root", str(tmp_path), "--config", str(tmp_path / "c.yaml")]) == 0
    assert f"mine.csv: 3 shelves under {tmp_path}" in capsys.readouterr().out
    cfg = from_dict(DataConfig, {"dataset": "shelf", "root": "r", "shelves": 2})
    assert isinstance(cfg.options, ShelfOptions) and (cfg.labels, cfg.shelves) == ("labels.csv", 2)
    assert dataset_source(cfg).data.shelves == 2
    # another dataset's option, or a wrong type, is refused in one line that names what this one takes
    with pytest.raises(ConfigError, match=r"num_train is not an option of the shelf dataset \(its options: labels, "
                                          r"shelves; every dataset's: dataset, root"):
        from_dict(DataConfig, {"dataset": "shelf", "root": "r", "num_train": 5})
    with pytest.raises(ConfigError, match="shelves: expected an integer"):
        from_dict(DataConfig, {"dataset": "shelf", "root": "r", "shelves": "many"})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"data": {"dataset": "shelf", "table": "t.csv"}}))
    assert main(["check-data", "--dataset", "shelf", "--root", str(tmp_path), "--config",
                 str(tmp_path / "bad.yaml")]) == 2
    assert "table is not an option of the shelf dataset" in capsys.readouterr().err


@pytest.mark.parametrize("name", list_datasets())
def test_every_registered_dataset_declares_its_options_and_round_trips(name):
    cls = options_class(name)
    assert dataclasses.is_dataclass(cls)
    cfg = DataConfig(dataset=name, root="somewhere")
    assert isinstance(cfg.options, cls)
    assert from_dict(DataConfig, to_dict(cfg)) == cfg  # flat, as configs and run.json hold it
    assert set(to_dict(cfg)) == {"dataset", "root", "seed", "flip", "batch_size", "num_workers", "cache_dir",
                                 *(f.name for f in dataclasses.fields(cls))}
    assert dataclasses.replace(cfg, batch_size=7).options == cfg.options
    with pytest.raises(AttributeError):
        cfg.not_a_setting  # noqa: B018
    other = [f.name for n in list_datasets() if n != name for f in dataclasses.fields(options_class(n))
             if f.name not in {g.name for g in dataclasses.fields(cls)}]
    if other:
        with pytest.raises(ConfigError, match=f"{other[0]} is not an option of the {name} dataset"):
            DataConfig(dataset=name, root="somewhere", **{other[0]: None})


def test_the_synthetic_options_keep_their_meaning():
    cfg = DataConfig()
    assert cfg.root is None and (cfg.num_train, cfg.num_test, cfg.multilabel) == (600, 300, False)
    small = dataclasses.replace(cfg, num_train=48, multilabel=True)
    assert (small.num_train, small.multilabel, small.num_test) == (48, True, 300)
    assert options_class("nih") is NoOptions
    with pytest.raises(ConfigError, match="data.root is required for dataset nih"):
        DataConfig(dataset="nih")


def test_synthetic_objects_keep_a_fixed_size_on_larger_images_when_asked():
    cfg = DataConfig.from_mapping({"object_size": [10, 16], "multilabel": True})
    assert cfg.object_size == (10, 16) and DataConfig.from_mapping(cfg.to_mapping()) == cfg
    model = ModelConfig(class_names=("disk", "square", "cross"), img_size=(128, 128))
    train, test, _ = dataset_source(cfg).training(model)
    for data in (train, test):
        for i in range(6):
            for m in data.sample(i).masks:
                if m.any():  # the footprint's bounding box lies within the object's square
                    rows, cols = m.any(1).nonzero()[0], m.any(0).nonzero()[0]
                    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= 16
    evaluated = [f.truth for s in dataset_source(cfg).evaluation(model, EvalOptions(limit=6, multilabel=True))
                 for f in s.findings]
    assert evaluated and all(1 <= max(np.ptp(np.nonzero(t.any(a))[0]) + 1 for a in (0, 1)) <= 16 for t in evaluated)
    default = SyntheticLesions(size=128)
    assert default.object_size == (21, 32)  # in proportion to the image
    for bad in ([3, 8], [12, 10], [10]):
        with pytest.raises(ConfigError, match="data.object_size"):
            DataConfig.from_mapping({"object_size": bad})
    with pytest.raises(ConfigError, match="half the image side"):
        SyntheticLesions(size=32, object_size=(10, 20))
