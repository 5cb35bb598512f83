"""torch.distributed on CPU with Gloo, two processes: sharded localization and evaluation merge to the single-process
result, a killed rank is redone by --resume, and DDP training (push included) equals one process."""

from __future__ import annotations

import csv
import dataclasses
import socket

import dist_workers
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import tiny_model
from PIL import Image

from protomdm import save_checkpoint
from protomdm.config import to_dict
from protomdm.jobs.folder import localize_folder
from protomdm.jobs.localize import LocalizeJob

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with Gloo is not available")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, *args, world=2):
    mp.spawn(fn, args=(world, _port(), *args), nprocs=world, join=True)


def _rows(path):
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


@pytest.fixture
def setup(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for i in range(7):
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(folder / ("sub" if i % 2 else "") / f"img{i}.png")
    (folder / "broken.png").write_text("not an image")
    ckpt = save_checkpoint(tiny_model(), tmp_path / "m.pt")
    return folder, ckpt


def test_sharded_localization_merges_to_the_single_process_csv(tmp_path, setup):
    folder, ckpt = setup
    localize_folder(LocalizeJob.load(ckpt, method="upsample"), folder, tmp_path / "single", progress=False)
    _spawn(dist_workers.localize, str(ckpt), str(folder), str(tmp_path / "two"))
    single, merged = _rows(tmp_path / "single" / "results.csv"), _rows(tmp_path / "two" / "results.csv")
    assert len(single) == 8 and merged == single  # row for row
    assert not list((tmp_path / "two").glob("results.rank*.csv"))
    assert (tmp_path / "two" / "failures.txt").read_text() == (tmp_path / "single" / "failures.txt").read_text()


def test_a_killed_rank_is_redone_by_resume(tmp_path, setup):
    folder, ckpt = setup
    out = tmp_path / "out"
    with pytest.raises(mp.ProcessExitedException):
        _spawn(dist_workers.localize, str(ckpt), str(folder), str(out), False, 1, 1)  # rank 1 dies at its 2nd image
    assert not (out / "results.csv").exists() and list(out.glob("results.rank*.csv"))
    _spawn(dist_workers.localize, str(ckpt), str(folder), str(out), True)
    rows = _rows(out / "results.csv")
    inputs = [r["input"] for r in rows]
    assert sorted(inputs) == sorted(set(inputs)) and len(inputs) == 8  # every image exactly once
    assert sum(r["status"] == "ok" for r in rows) == 7 and not list(out.glob(".tmp-*"))


def test_sharded_evaluation_equals_one_process(tmp_path):
    ckpt = save_checkpoint(tiny_model(class_names=("disk", "square", "cross")), tmp_path / "s.pt")
    from protomdm.evaluation.runner import evaluate

    evaluate(ckpt, tmp_path / "one", dataset="synthetic", methods=["upsample"], limit=5, deletion_steps=4,
             progress=False)
    _spawn(dist_workers.evaluate, str(ckpt), str(tmp_path / "two"))
    two, one = (_by_key(_rows(tmp_path / d / "results.csv")) for d in ("two", "one"))
    assert two.keys() == one.keys()
    for k, v in one.items():  # shards batch differently: float sums agree to the CSV's 6th digit, not bitwise
        assert float(two[k]) == pytest.approx(float(v), abs=2e-6), k
    # the summary rounds to 3 digits, so it is the same text
    assert (tmp_path / "two" / "summary.md").read_text() == (tmp_path / "one" / "summary.md").read_text()


def _by_key(rows):
    """{every column but the value: the value} of a results table."""
    return {tuple((c, x) for c, x in r.items() if c != "value"): r["value"] for r in rows}


def test_ddp_training_equals_one_process(tmp_path):
    from conftest import small_config

    from protomdm.training import train

    cfg = small_config(warm_epochs=0, joint_epochs=1)  # one joint epoch, then push and one last-layer epoch
    cfg.model = dataclasses.replace(cfg.model, backbone="tiny_gn")  # GroupNorm: exact on CPUs (see TinyCNN)
    # one global batch per epoch: two ranks' gradients of 8 images sum in another order than one process's 16
    # (oneDNN picks kernels by batch size on some CPUs), and from the second Adam step on, a ReLU that this 1e-7
    # difference switches moves its weights by a learning-rate-sized step; one step per optimiser stays within 2e-6
    cfg.data = dataclasses.replace(cfg.data, num_train=16, batch_size=16)
    train(cfg, tmp_path / "one", progress=False)
    _spawn(dist_workers.train, to_dict(cfg), str(tmp_path / "two"))
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, atol=2e-5, rtol=1e-4, msg=k)
    pa, pb = a["extra"]["push"], b["extra"]["push"]
    assert [(r["image"], r.get("patch")) for r in pa] == [(r["image"], r.get("patch")) for r in pb]
    assert a["extra"]["test_accuracy"] == b["extra"]["test_accuracy"]
