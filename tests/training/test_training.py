import warnings

import numpy as np
import pytest
import torch
import yaml
from conftest import CONFIGS, small_config

from protomdm import load_model
from protomdm.cli import main
from protomdm.config import to_dict
from protomdm.data.images import model_input
from protomdm.data.synthetic import SyntheticLesions
from protomdm.errors import ConfigError, UserError
from protomdm.training import train
from protomdm.training.config import load_train_config


def test_synthetic_data_is_deterministic_with_exact_ground_truth():
    ds = SyntheticLesions(("disk", "square", "cross"), n=10, size=48, seed=3)
    a, b = ds.sample(4), SyntheticLesions(("disk", "square", "cross"), n=10, size=48, seed=3).sample(4)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.image, SyntheticLesions(("disk", "square", "cross"), n=10, size=48, seed=4).sample(4).image)
    for i in range(10):
        s = ds.sample(i)
        k = int(s.labels.argmax())
        assert s.labels.sum() == 1 and s.masks[k].sum() > 20 and s.masks.sum() == s.masks[k].sum()
        x0, y0, x1, y1 = s.boxes()[k]
        assert s.masks[k][y0:y1, x0:x1].sum() == s.masks[k].sum()
    ml = SyntheticLesions(("disk", "blob"), n=20, size=32, channels=1, multilabel=True)
    labels = np.stack([ml.sample(i).labels for i in range(20)])
    assert 0 < labels.mean() < 1 and ml[0][0].shape == (1, 32, 32)
    with pytest.raises(ConfigError, match="hexagon"):
        SyntheticLesions(("disk", "hexagon"))


def test_push_projects_every_prototype_onto_a_patch_of_its_class(tmp_path):
    cfg = small_config(warm_epochs=1, joint_epochs=1, last_layer_epochs=0)
    train(cfg, tmp_path, progress=False)
    ckpt = torch.load(tmp_path / "push_epoch2.pt", weights_only=True)
    model = load_model(tmp_path / "push_epoch2.pt")
    records = ckpt["extra"]["push"]
    ds = SyntheticLesions(cfg.model.class_names, n=48, size=32, seed=0)
    assert len(records) == model.num_prototypes
    for j, rec in enumerate(records):
        img, label, _ = ds[rec["image"]]
        assert label == model.prototype_class(j) == rec["class_index"]
        with torch.no_grad():
            z = model.conv_features(model_input(img[None], model.config))
        h, w = rec["patch"]
        # a training patch's latent vector (up to the rounding of a batch-of-1 vs batch-of-16 forward pass)
        assert torch.allclose(model.prototype_vectors[j, :, 0, 0], z[0, :, h, w], rtol=0, atol=1e-6)
        x0, y0, x1, y1 = rec["receptive_field_box"]
        assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32 and rec["activation_box"] is not None
        assert rec["distance"] >= 0  # the pre-push prototype's distance to the patch it moved onto


def test_xprotonet_push_uses_occurrence_weighted_features(tmp_path):
    cfg = small_config("xprotonet", warm_epochs=1, joint_epochs=1, last_layer_epochs=0)
    train(cfg, tmp_path, progress=False)
    model = load_model(tmp_path / "push_epoch2.pt")
    records = torch.load(tmp_path / "push_epoch2.pt", weights_only=True)["extra"]["push"]
    ds = SyntheticLesions(cfg.model.class_names, n=48, size=32, seed=0, channels=1, multilabel=True)
    for j, rec in enumerate(records):
        img, labels, _ = ds[rec["image"]]
        assert labels[model.prototype_class(j)] == 1
        with torch.no_grad():
            sim = model.prototype_scores(model_input(img[None], model.config), [j])
        # the prototype now *is* that image's pooled feature: distance 0, the log similarity's largest value
        assert float(sim) == pytest.approx(float(np.log(1 / model.config.epsilon)), abs=1e-3)


def test_resume_equals_training_straight(tmp_path):
    cfg = small_config(warm_epochs=1, joint_epochs=2)
    train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "split", progress=False, stop_after=2)
    assert len((tmp_path / "split" / "log.csv").read_text().splitlines()) == 3  # header + 2 epochs
    train(cfg, tmp_path / "split", resume=tmp_path / "split" / "last.pt", progress=False)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert (tmp_path / "straight" / "log.csv").read_text().count("\n") == (tmp_path / "split" / "log.csv").read_text().count("\n")
    assert (tmp_path / "straight" / "best.pt").exists()


def test_shipped_configs_load_and_the_demo_uses_the_synthetic_one():
    from protomdm.jobs.demo import demo_config

    for name in ("synthetic_protopnet", "synthetic_xprotonet", "cub_protopnet", "nih_xprotonet", "nih_protopnet"):
        load_train_config(CONFIGS / f"{name}.yaml")
    assert to_dict(demo_config()) == to_dict(load_train_config(CONFIGS / "synthetic_protopnet.yaml"))


@pytest.mark.parametrize("patch,message", [
    ({"optim": {"warm_lr": -0.1}}, "warm_lr must be > 0"),
    ({"optim": {"warmup": 3}}, "unknown key"),
    ({"learning_rate": 3}, "unknown key"),
    ({"model": {"class_names": ["disk", "hexagon"]}}, "hexagon are not in the synthetic data"),
    ({"data": {"dataset": "cub", "root": "/does/not/exist", "batch_size": 8}}, "dataset folder not found"),
    ({"data": {"dataset": "cub", "root": "/x", "num_train": 9}}, "num_train is not an option of the cub dataset"),
])
def test_bad_configs_fail_before_training(tmp_path, capsys, patch, message):
    data = yaml.safe_load((CONFIGS / "synthetic_protopnet.yaml").read_text())
    for k, v in patch.items():
        if k == "data":  # a data section is the dataset's own: the synthetic options do not carry over
            data[k] = v
        elif isinstance(v, dict):
            data[k].update(v)
        else:
            data[k] = v
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    code = main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_finished_run_is_not_overwritten(tmp_path):
    cfg = small_config(warm_epochs=1, joint_epochs=0, last_layer_epochs=0)
    train(cfg, tmp_path, progress=False)
    with pytest.raises(UserError, match="already holds a training run"):
        train(cfg, tmp_path, progress=False)


KILL_AFTER = """
import os, signal, sys
import yaml
import protomdm.training.trainer as trainer
from protomdm.training.config import load_train_config

name, nth, out, config = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
seen = {}

def killing(write, path_arg):
    def wrapped(*args, **kwargs):
        result = write(*args, **kwargs)
        target = os.path.basename(str(args[path_arg]))
        seen[target] = seen.get(target, 0) + 1
        if target == name and seen[target] == nth:
            os.kill(os.getpid(), signal.SIGKILL)  # a real kill, right after that file is complete
        return result
    return wrapped

trainer.save_checkpoint = killing(trainer.save_checkpoint, 1)
trainer.write_csv = killing(trainer.write_csv, 0)
trainer.train(load_train_config(config), out, progress=False)
"""


def _log_without_times(path):
    import csv

    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


@pytest.mark.parametrize("name,nth", [("best.pt", 1), ("log.csv", 3), ("last.pt", 3), ("push_epoch3.pt", 1)])
def test_a_kill_between_the_outputs_resumes_to_the_uninterrupted_run(tmp_path, name, nth):
    import subprocess
    import sys

    cfg = small_config(warm_epochs=1, joint_epochs=2)  # one push, at the last epoch: the only best.pt
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(to_dict(cfg)))
    train(cfg, tmp_path / "straight", progress=False)
    run = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER, name, str(nth), str(run), str(config)],
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to repair that cannot be repaired
        train(cfg, run, resume=run / "last.pt", progress=False)
    for file in ("last.pt", "best.pt"):
        a = torch.load(tmp_path / "straight" / file, weights_only=True)
        b = torch.load(run / file, weights_only=True)
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]), file
    # the seconds column differs between any two runs; every other cell is the same
    assert len(_log_without_times(run / "log.csv")) == 3
    assert _log_without_times(run / "log.csv") == _log_without_times(tmp_path / "straight" / "log.csv")


def test_a_best_model_older_than_the_state_is_said_on_resume(tmp_path):
    cfg = small_config(warm_epochs=1, joint_epochs=2)
    train(cfg, tmp_path, progress=False, stop_after=3)
    (tmp_path / "best.pt").unlink()  # as an earlier protomdm left it after a kill between last.pt and best.pt
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    ckpt["extra"]["train_state"]["epoch"] = 2  # one more epoch to run, so that train goes through resume
    ckpt["extra"]["train_state"]["log"] = ckpt["extra"]["train_state"]["log"][:2]
    torch.save(ckpt, tmp_path / "last.pt")
    with pytest.warns(UserWarning, match=r"best.pt does not hold the run's best model \(epoch 3"):
        train(cfg, tmp_path, resume=tmp_path / "last.pt", progress=False)


def test_training_without_thumbnails_keeps_no_copy_of_a_training_image(tmp_path):
    cfg = small_config(warm_epochs=1, joint_epochs=0, last_layer_epochs=0)
    cfg.thumbnails = False
    train(cfg, tmp_path, progress=False)
    records = torch.load(tmp_path / "best.pt", weights_only=True)["extra"]["push"]
    assert records and all("thumbnail" not in r and r["source"] for r in records)
    assert main(["prototypes", "--ckpt", str(tmp_path / "best.pt"), "--out", str(tmp_path / "g"), "--method",
                 "upsample", "--quiet"]) == 0
