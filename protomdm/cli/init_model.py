"""``protomdm init-model``."""

from __future__ import annotations

import argparse

from ..models import list_architectures
from .options import parse_classes


def add_parser(sub, methods: list[str]) -> None:
    p = sub.add_parser("init-model", help="write an untrained checkpoint (smoke tests, your own training loop)",
                       description="Write a checkpoint of an untrained ProtoPNet or XProtoNet (random weights, or an "
                       "ImageNet backbone with --pretrained): a starting point for your own training loop, or a "
                       "model to try the other commands on.")
    p.add_argument("--model", required=True, choices=list_architectures(), help="the architecture")
    p.add_argument("--backbone", default="resnet18", help="resnet18/34/50, vgg11/16/19, densenet121/161, "
                   "monai_densenet121, tiny (default resnet18)")
    p.add_argument("--classes", required=True, type=parse_classes, help="comma-separated class names")
    p.add_argument("--prototypes-per-class", type=int, default=10, help="prototypes of each class (default 10)")
    p.add_argument("--prototype-dim", type=int, default=None, help="prototype depth D (default 128)")
    p.add_argument("--img-size", type=int, default=224, help="input side in pixels (default 224)")
    p.add_argument("--grey", action="store_true", help="one input channel (chest X-rays)")
    p.add_argument("--pretrained", action="store_true", help="ImageNet backbone weights (downloads once)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models.checkpoint import init_model

    path = init_model(args.out, args.model, args.backbone, args.classes, args.prototypes_per_class, args.img_size,
                      args.prototype_dim, 1 if args.grey else 3, args.pretrained, args.overwrite, args.seed)
    print(f"wrote {path}")
    return 0
