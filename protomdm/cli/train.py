"""``protomdm train``."""

from __future__ import annotations

import argparse


def add_parser(sub, methods: list[str]) -> None:
    p = sub.add_parser("train", help="train ProtoPNet or XProtoNet from a YAML config",
                       description="Warm-up, joint, push and last-layer stages; writes last.pt, best.pt, "
                       "push_epochN.pt and log.csv.")
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/synthetic_protopnet.yaml")
    p.add_argument("--out", help="output folder (default runs/CONFIG_NAME)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the config's `device`, auto if it has none)")
    p.add_argument("--resume", metavar="CKPT", help="continue an interrupted run from its last.pt")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop after N more epochs (resume later)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..training import train
    from ..training.config import load_train_config

    cfg = load_train_config(args.config)
    out = args.out or str(Path("runs") / Path(args.config).stem)
    res = train(cfg, out, resume=args.resume, device=args.device, stop_after=args.stop_after,
                progress=not args.quiet)
    print(f"{res.metric_name}: last {res.last_metric:.4f}, best {res.best_metric:.4f}; "
          f"checkpoints and log.csv in {res.out_dir}")
    return 0
