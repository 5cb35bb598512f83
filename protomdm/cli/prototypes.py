"""``protomdm prototypes``."""

from __future__ import annotations

import argparse

from .options import add_job_options, method_configs


def add_parser(sub, methods: list[str]) -> None:
    p = sub.add_parser("prototypes", help="the prototype gallery: each prototype's source image and region, with "
                       "the network's own region and MDM's, in one HTML page",
                       description="For every prototype of the checkpoint: the training image it was pushed to "
                       "(recorded in the checkpoint at push), the network's own region (upsampled similarity or "
                       "occurrence map) and the --method region on it, its class and last-layer weight. Writes a PNG "
                       "per prototype, index.csv and gallery.html (self-contained: opens without a network).")
    p.add_argument("--ckpt", required=True, help="protomdm checkpoint (trained with protomdm: the sources are "
                   "recorded at push; without them the prototypes are listed with a note)")
    p.add_argument("--method", default="mdm", metavar="METHOD", help="the localizer drawn beside the network's own "
                   "region: " + ", ".join(methods) + " (default mdm)")
    p.add_argument("--percentile", type=float, default=95.0, help="the box drawn: the top (100-p)%% (default 95, as "
                   "ProtoPNet's prototype crops)")
    add_job_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..report.gallery import make_gallery

    g = make_gallery(args.ckpt, args.out, method=args.method, method_configs=method_configs(args), device=args.device,
                     percentile=args.percentile, overwrite=args.overwrite, progress=not args.quiet)
    for note in g.notes:
        print(f"note: {note}")
    shown = sum(e.pixels is not None for e in g.entries)
    print(f"{len(g.entries)} prototypes, {shown} with their source image; open {g.files['html']}")
    return 0
