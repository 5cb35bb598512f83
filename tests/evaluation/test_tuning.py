"""`protomdm tune`: MDM's settings chosen by k-fold cross-validation against ground truth (the paper's section 3.2)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_model

from protomdm import MDMConfig, save_checkpoint
from protomdm.cli import main
from protomdm.evaluation.tuning import MDMGrid, cross_validate, setting_of, with_setting
from protomdm.explain.mdm import MDMLoss, load_mdm_config


def _setting(lam: float, gamma: float = 5.0) -> dict:
    return setting_of(MDMLoss("normalised", lam), gamma, (6, 32))


def _scores(values: dict[float, list[float]]) -> pd.DataFrame:
    """Dice at p90 of each lambda on images 0, 1, 2, ..."""
    return pd.DataFrame([{"image": str(i), "finding": "a", **_setting(lam), "metric": "dice", "percentile": 90.0,
                          "value": v} for lam, vs in values.items() for i, v in enumerate(vs)])


def test_cross_validation_picks_on_the_other_folds_and_scores_on_the_held_out_one():
    # lambda 1 is better on images 0-3, lambda 3 on 4-5 by more: on all images lambda 3 wins (mean 0.5 vs 0.4)
    scores = _scores({1.0: [0.6, 0.6, 0.6, 0.6, 0.0, 0.0], 3.0: [0.3, 0.3, 0.3, 0.3, 0.9, 0.9]})
    chosen, folds = cross_validate(scores, folds=2, seed=0, reference=_setting(1.0))
    assert chosen["lambda_l1"] == 3.0 and chosen["value"] == pytest.approx(0.5)
    order = np.random.default_rng(0).permutation(6)  # the folds, as cross_validate draws them
    for row, held in zip(folds.itertuples(), np.array_split(np.arange(6)[order], 2)):
        rest = [i for i in range(6) if i not in held]
        by_lambda = {lam: np.mean([scores[(scores.lambda_l1 == lam) & (scores.image == str(i))].value.iloc[0]
                                   for i in ids]) for lam in (1.0, 3.0) for ids in [rest]}
        best = max(by_lambda, key=by_lambda.get)
        assert row.lambda_l1 == best and row.train == pytest.approx(by_lambda[best])
        held_mean = lambda lam: np.mean([scores[(scores.lambda_l1 == lam) & (scores.image == str(i))].value.iloc[0]  # noqa: E731
                                         for i in held])
        assert row.held_out == pytest.approx(held_mean(best))
        assert row.reference == pytest.approx(held_mean(1.0))
        assert row.best_on_fold == pytest.approx(max(held_mean(1.0), held_mean(3.0)))


def test_a_reference_outside_the_grid_is_refused():
    with pytest.raises(Exception, match="not in the grid"):
        cross_validate(_scores({1.0: [0.1, 0.2]}), folds=2, reference=_setting(10.0))


def test_the_base_setting_joins_the_grid():
    grid = with_setting(MDMGrid(lambdas=(0.3,), gammas=(2.0,), sizes=((6, 20),)), MDMConfig(lambda_l1=3.0, gamma=5.0))
    assert grid.lambdas == (0.3, 3.0) and grid.gammas == (2.0, 5.0) and grid.sizes == ((6, 20), (6, 32))
    paper = with_setting(MDMGrid(), MDMConfig(loss="paper", lambda1=0.01, lambda2=1.0))
    assert paper.paper == ((0.01, 1.0),)


@pytest.fixture
def shapes_ckpt(tmp_path):
    """A tiny (untrained) ProtoPNet of three of the synthetic data's shapes."""
    return save_checkpoint(tiny_model(class_names=("disk", "square", "cross")), tmp_path / "shapes.pt")


def test_tune_writes_an_mdm_yaml_that_the_other_commands_read(tmp_path, shapes_ckpt, capsys):
    out = tmp_path / "tuned"
    args = ["tune", "--ckpt", str(shapes_ckpt), "--limit", "4", "--folds", "2", "--lambdas", "1000", "--gammas", "5",
            "--lambda", "1", "--steps", "60", "--adam-steps", "20", "--device", "cpu", "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert "Held out (the cross-validated estimate)" in capsys.readouterr().out
    settings = pd.read_csv(out / "settings.csv")
    dice = settings[(settings.metric == "dice") & (settings.percentile == 90)]
    assert set(dice.lambda_l1) == {1.0, 1000.0}  # the grid's and the base setting's
    best = dice.loc[dice.value.idxmax()]
    cfg = load_mdm_config(out / "mdm.yaml")  # what --mdm-config reads
    assert cfg.lambda_l1 == best.lambda_l1 and cfg.gamma == 5.0 and cfg.steps == 60 and cfg.adam_steps == 20
    folds = pd.read_csv(out / "folds.csv")
    assert len(folds) == 2 and folds.images.sum() == len(pd.read_csv(out / "scores.csv").image.unique())
    assert main(args) == 2  # an earlier run is not overwritten
    assert "exists from an earlier run" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--sizes", "6-40x"], "--sizes must be"),
    (["--gammas", "30"], "not below the 27 masks"),
    (["--folds", "1"], "at least 2 folds"),
])
def test_bad_tune_settings_are_one_line(tmp_path, shapes_ckpt, capsys, flags, message):
    assert main(["tune", "--ckpt", str(shapes_ckpt), "--out", str(tmp_path / "t"), "--quiet", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
