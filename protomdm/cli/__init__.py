"""The ``protomdm`` command: argument parsing only; each subcommand (one module here: ``add_parser`` and ``run``)
calls one library function.

A user mistake (missing file, bad index, invalid setting) prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import warnings
from typing import Callable, Sequence

from ..errors import UserError
from ..runtime import keep_freed_memory
from . import bench, check_data, demo, evaluate, explain, init_model, localize, prototypes, serve, train, tune

# the commands in the order --help lists them
COMMANDS = (localize, serve, prototypes, demo, train, bench, explain, evaluate, tune, check_data, init_model)

EXAMPLES = """examples:
  protomdm demo                                   # train a small synthetic ProtoPNet and compare MDM with upsampling
  protomdm init-model --model protopnet --backbone resnet18 --classes cat,dog --out model.pt
  protomdm localize --model protopnet --ckpt model.pt --image bird.jpg --prototype 3 --out results/
  protomdm localize --model xprotonet --ckpt cxr.pt --image scan.dcm --class Effusion --out results/
  protomdm localize --model xprotonet --ckpt cxr.pt --input dicom_folder/ --out results/ [--resume]
  protomdm serve --ckpt cxr.pt --queue q/ --port 11112 --send pacs.local:104:PACS   # a DICOM node
  protomdm evaluate --dataset nih --root NIH/ --ckpt cxr.pt --methods upsample,mdm,gradcam --out eval/
  protomdm tune --dataset nih --root NIH/ --ckpt cxr.pt --limit 50 --out tuned/   # then --mdm-config tuned/mdm.yaml
  protomdm check-data --dataset cub --root CUB_200_2011/
  protomdm explain --arch resnet50 --pretrained --image bird.jpg --methods mdm,gradcam,scorecam --out results/
"""


def build_parser() -> argparse.ArgumentParser:
    from ..explain.registry import list_localizers
    from ..version import __version__

    methods = list_localizers()

    parser = argparse.ArgumentParser(
        prog="protomdm", description="Where does a prototype network look? ProtoPNet/XProtoNet with Multiple "
        "Dynamic Mask (MDM) localization.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"protomdm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for module in COMMANDS:
        module.add_parser(sub, methods)
    return parser


def with_flags(message: str, parser: argparse.ArgumentParser) -> str:
    """The library names a setting by its keyword in backticks (`` `overwrite` ``); on the command line it is a flag
    (``--overwrite``). Keywords without a flag lose their backticks."""
    flags = {opt for sub in parser._subparsers._group_actions[0].choices.values()  # noqa: SLF001 - argparse's tree
             for action in sub._actions for opt in action.option_strings}  # noqa: SLF001
    def flag(m: re.Match) -> str:
        name = "--" + m.group(1).replace("_", "-")
        return name if name in flags else m.group(1)
    return re.sub(r"`(\w+)`", flag, message)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    func: Callable[[argparse.Namespace], int] = args.func
    for name in ("out", "ckpt", "image", "input", "config", "root"):
        if getattr(args, name, None) == "":
            print(f"protomdm {args.command}: error: --{name} is empty", file=sys.stderr)
            return 2
    keep_freed_memory()
    # what the library logs for the user (protomdm.data: skipped images, notes) goes to stdout, one line each
    shown = logging.StreamHandler(sys.stdout)
    shown.setFormatter(logging.Formatter("%(message)s"))
    data_log = logging.getLogger("protomdm.data")
    data_log.addHandler(shown)
    data_log.setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    try:
        return _run(func, args, parser)
    finally:
        data_log.removeHandler(shown)


def _run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    # a library's complaint about an input is not a traceback; the filters stay the default ones, so what Python
    # would not have shown (deprecations inside libraries) is not shown either
    with warnings.catch_warnings(record=True) as caught:
        try:
            code = func(args)
        except UserError as e:  # the error names the problem; the warnings that led to it are noise
            print(f"protomdm {args.command}: error: {with_flags(str(e), parser)}", file=sys.stderr)
            return 2
        except OSError as e:  # the machine, not the user: a full disk, a vanished mount, a permission
            where = f"{e.filename}: " if e.filename else ""
            print(f"protomdm {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"protomdm {args.command}: interrupted", file=sys.stderr)
            return 130
    if not getattr(args, "quiet", False):
        for message in dict.fromkeys(str(w.message).splitlines()[0] for w in caught):
            print(f"protomdm {args.command}: warning: {message}", file=sys.stderr)
    return code


