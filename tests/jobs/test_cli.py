import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from protomdm.cli import main


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("method", ["mdm", "upsample", "gradcampp"])
def test_localize_end_to_end(capsys, tmp_path, architecture, ckpt_path, png_path, method):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(capsys, "localize", "--model", architecture, "--ckpt", ckpt_path, "--image", png_path,
                              "--method", method, "--steps", 50, "--out", out, "--quiet")
    assert code == 0, stdout
    rec = json.loads((out / "scan_localization.json").read_text())
    assert rec["method"] == method and rec["image_size"] == [70, 90] and rec["input_size"] == [48, 48]
    assert rec["model"]["architecture"] == architecture and 0 <= rec["prototype"] < 6
    assert rec["class_name"] in ("a", "b", "c") and isinstance(rec["score"], float)
    x0, y0, x1, y1 = rec["box"]
    assert 0 <= x0 < x1 <= 90 and 0 <= y0 < y1 <= 70  # in the original image's pixels
    if method == "mdm":
        assert rec["steps"] == 50 and rec["settings"]["steps"] == 50
    mask = np.asarray(Image.open(out / "scan_mask.png"))
    assert mask.shape == (70, 90) and set(np.unique(mask)) <= {0, 255}
    overlay = Image.open(out / "scan_overlay.png")
    assert overlay.size[0] > 100
    assert "wrote" in stdout


def test_localize_by_class_picks_a_prototype_of_that_class(capsys, tmp_path, ckpt_path, png_path):
    code, _, _ = run_cli(capsys, "localize", "--ckpt", ckpt_path, "--image", png_path, "--class", "c",
                         "--method", "upsample", "--out", tmp_path / "o")
    rec = json.loads((tmp_path / "o" / "scan_localization.json").read_text())
    assert code == 0 and rec["class_name"] == "c" and rec["prototype"] in (4, 5)


def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, ckpt_path, png_path):
    (tmp_path / "not_image.png").write_text("this is text")
    cases = [
        (["--image", tmp_path / "missing.png"], "image not found"),
        (["--image", tmp_path / "not_image.png"], "not a readable image"),
        (["--ckpt", png_path], "not a PyTorch checkpoint"),
        (["--prototype", 99], "out of range"),
        (["--percentile", 100], "between 0 and 100"),
        (["--percentile", 0], "between 0 and 100"),
        (["--class", "zebra"], "not one of this model's classes"),
        (["--steps", 0], "steps must be >= 1"),
    ]
    for extra, message in cases:
        args = {"--ckpt": ckpt_path, "--image": png_path, "--out": tmp_path / "o", "--steps": 2}
        for k, v in zip(extra[::2], extra[1::2]):
            args[k] = v
        flat = [a for kv in args.items() for a in kv] + ["--quiet"]
        code, _, err = run_cli(capsys, "localize", *flat)
        assert code == 2, (extra, err)
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_wrong_kind_of_checkpoint(capsys, tmp_path, ckpt_path, png_path, architecture):
    other = "xprotonet" if architecture == "protopnet" else "protopnet"
    code, _, err = run_cli(capsys, "localize", "--model", other, "--ckpt", ckpt_path, "--image", png_path,
                           "--out", tmp_path / "o")
    assert code == 2 and f"not {other}" in err


def test_existing_outputs_are_not_overwritten(capsys, tmp_path, ckpt_path, png_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "scan_mask.png").write_text("precious")
    code, _, err = run_cli(capsys, "localize", "--ckpt", ckpt_path, "--image", png_path, "--out", out,
                           "--method", "upsample")
    assert code == 2 and "--overwrite" in err
    assert (out / "scan_mask.png").read_text() == "precious"
    code, _, _ = run_cli(capsys, "localize", "--ckpt", ckpt_path, "--image", png_path, "--out", out,
                         "--method", "upsample", "--overwrite")
    assert code == 0 and (out / "scan_mask.png").read_bytes()[:4] == b"\x89PNG"


def test_init_model_writes_a_loadable_checkpoint(capsys, tmp_path):
    path = tmp_path / "m.pt"
    code, out, _ = run_cli(capsys, "init-model", "--model", "xprotonet", "--backbone", "tiny", "--classes",
                           "Mass,Nodule", "--prototypes-per-class", 3, "--img-size", 64, "--grey", "--out", path)
    assert code == 0 and path.exists()
    import protomdm

    m = protomdm.load_model(path)
    assert m.config.class_names == ("Mass", "Nodule") and m.num_prototypes == 6 and m.config.in_channels == 1
    code, _, err = run_cli(capsys, "init-model", "--model", "xprotonet", "--backbone", "tiny", "--classes", "a",
                           "--out", path)
    assert code == 2 and "already exists" in err
    code, _, err = run_cli(capsys, "init-model", "--model", "protopnet", "--backbone", "nope", "--classes", "a",
                           "--out", tmp_path / "n.pt")
    assert code == 2 and "unknown backbone" in err


def test_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "protomdm.cli", "localize", "--ckpt", str(tmp_path / "none.pt"),
                           "--image", str(tmp_path / "none.png"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert "checkpoint not found" in proc.stderr


def test_every_command_prints_its_help():
    """argparse formats each help with ``%``: a literal ``%`` in a help text is a traceback at ``--help``."""
    from protomdm.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse's tree
    assert {"localize", "evaluate", "tune", "bench", "demo"} <= set(commands)
    for name, sub in commands.items():
        text = sub.format_help()
        assert text.startswith("usage: protomdm " + name), name
    assert "50% of its free memory" in " ".join(commands["localize"].format_help().split())
