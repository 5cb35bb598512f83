from protomdm.bench import format_table, run_bench
from protomdm.cli import main
from protomdm.config import MDMConfig


def test_bench_compares_the_schedules_and_they_agree(tmp_path):
    # a trained model: a random-weight model's gradients are so flat that Adam, which normalises them, amplifies the
    # rounding differences of batch-of-27 vs batch-of-1 forward passes
    from test_training import small_config

    from protomdm.training import train

    train(small_config(), tmp_path / "m", progress=False)
    rows, what = run_bench(images=1, ref_steps=30, mdm=MDMConfig(extrapolate_after=None), progress=False,
                     ckpt=str(tmp_path / "m" / "best.pt"))
    paper, ours = rows
    assert paper.steps == 30 and ours.steps == 30
    assert ours.dice_p90 > 0.98 and ours.pearson_r > 0.98
    assert paper.seconds_per_image > 0 and ours.seconds_per_image > 0
    table = format_table(rows, "note")
    assert "speed-up" in table and "Dice p90" in table and "paper (sequential)" in table


def test_bench_command_says_what_it_shortened(capsys):
    code = main(["bench", "--img-size", "32", "--images", "1", "--ref-steps", "5", "--quiet"])  # random weights
    out = capsys.readouterr().out
    assert code == 0 and "it has 2000" in out and "ours (batched, extrapolated)" in out and "timing only" in out
    ours = next(line.split() for line in out.splitlines() if line.startswith("ours"))
    assert ours[-3] == "1"  # 1 of the paper's 5 steps taken: the same share as 400 of 2000


def test_demo_runs_end_to_end(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path), "--images", "1", "--steps", "10", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert (tmp_path / "report.png").stat().st_size > 10_000 and (tmp_path / "model" / "best.pt").exists()
    rows = (tmp_path / "report.csv").read_text().splitlines()
    assert rows[0].startswith("image,prototype,method") and len(rows) == 3
    assert "report:" in out and "mdm" in out and "upsample" in out
    # a second run reuses the trained model
    mtime = (tmp_path / "model" / "best.pt").stat().st_mtime
    assert main(["demo", "--out", str(tmp_path), "--images", "1", "--steps", "5", "--quiet"]) == 0
    assert (tmp_path / "model" / "best.pt").stat().st_mtime == mtime
