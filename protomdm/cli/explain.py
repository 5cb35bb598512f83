"""``protomdm explain``."""

from __future__ import annotations

import argparse

from ..explain.registry import list_localizers
from .options import add_job_options, method_configs


def add_parser(sub, methods: list[str]) -> None:
    p = sub.add_parser("explain", help="MDM and the Grad-CAM family on a plain torchvision classifier",
                       description="Explain one class logit of a torchvision classifier (CNN or Transformer) with MDM "
                       "and Grad-CAM methods, side by side in one figure.")
    p.add_argument("--arch", required=True, help="torchvision model name: resnet50, vgg19, densenet121, vit_b_16, "
                   "swin_b, ...")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--ckpt", help="a state_dict file for --arch (loaded with weights_only=True)")
    w.add_argument("--pretrained", action="store_true", help="torchvision's ImageNet weights (downloads once)")
    p.add_argument("--image", required=True, help="PNG, JPEG, TIFF, NPY or DICOM image")
    p.add_argument("--class", dest="class_index", type=int, help="class index to explain (default: the predicted)")
    p.add_argument("--methods", default="mdm,gradcam,gradcampp,scorecam",
                   help="comma-separated, of " + ", ".join(list_localizers(for_logits=True)) + " (default mdm,gradcam,"
                   "gradcampp,scorecam)")
    p.add_argument("--img-size", type=int, default=224, help="input side (default 224)")
    add_job_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..device import resolve_device
    from ..jobs.explain_classifier import build_classifier, explain_classifier

    model = build_classifier(args.arch, args.ckpt, args.pretrained, args.img_size).to(resolve_device(args.device))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rec = explain_classifier(model, args.image, args.out, class_index=args.class_index, methods=methods,
                             img_size=args.img_size, method_configs=method_configs(args), title=f"{args.arch}",
                             overwrite=args.overwrite, progress=not args.quiet)
    print(f"{args.arch}: class {rec['class_index']} (logit {rec['logit']:.4g}); "
          + ", ".join(f"{m} {v['seconds']:.1f}s" for m, v in rec["methods"].items()))
    for f in rec["files"]:
        print(f"wrote {f}")
    return 0
