"""``protomdm bench``."""

from __future__ import annotations

import argparse

from ..models import list_architectures
from .options import add_mdm_options, mdm_config


def add_parser(sub, methods: list[str]) -> None:
    p = sub.add_parser("bench", help="time the paper's MDM schedule against ours and measure their agreement",
                       description="Runs, in one process on the same images and model, one image at a time as "
                       "`localize` does: the paper's schedule (each mask alone, 2000 steps; timed over --ref-steps "
                       "and projected), the same schedule batched (run in full: the reference for agreement) and ours "
                       "(300 passes covering the 2000-step schedule). Prints seconds per image, speed-up, peak memory "
                       "and agreement "
                       "(Dice of the p90 masks, Pearson r of the heatmaps, the final loss over the full schedule's), "
                       "on synthetic images or your own (--input). The default is the demo's trained "
                       "ProtoPNet (protomdm-demo/model/best.pt when `protomdm demo` left one, else trained first).")
    p.add_argument("--model", default="protopnet", choices=list_architectures(),
                   help="architecture of the random-weight model (default protopnet)")
    p.add_argument("--backbone", default="tiny", help="tiny, resnet18, resnet50, densenet121, ... (default tiny)")
    p.add_argument("--img-size", type=int, default=64, help="input side in pixels (default 64)")
    p.add_argument("--images", type=int, default=2, help="number of images (default 2)")
    p.add_argument("--ref-steps", type=int, default=100, help="steps per mask of the paper's sequential schedule "
                   "actually timed (projected to --steps; default 100)")
    p.add_argument("--ckpt", help="time this checkpoint's model instead (a trained model makes the agreement "
                   "meaningful; random weights give near-flat gradients)")
    p.add_argument("--input", action="append", metavar="PATH", help="your own images instead of synthetic ones: a "
                   "file or a folder (DICOM, PNG, JPEG, ...; repeatable), the first --images of them, at the model's "
                   "input size. With your --ckpt, the agreement and loss/full columns then say whether the default "
                   "schedule reaches the full one for your model and images")
    p.add_argument("--batch-images", type=int, metavar="N", help="images per search in the folder-run row (default: "
                   "all --images)")
    p.add_argument("--json", metavar="FILE", help="also write the table as JSON")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_mdm_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..jobs.bench import format_table, rows_record, run_bench

    mdm = mdm_config(args)
    rows, what = run_bench(args.model, args.backbone, args.img_size, args.device, args.images, args.ref_steps, mdm,
                           args.seed, progress=not args.quiet, ckpt=args.ckpt, batch_images=args.batch_images,
                           inputs=args.input)
    note = (f"MDM bench: {what}, each image's top prototype score, precision "
            f"{mdm.precision} (prec: the one used). The paper's schedule (each mask alone, {mdm.steps} steps) was "
            f"timed over {args.ref_steps} steps and projected; the batched full schedule (fp32) is the reference for "
            "agreement; ours: "
            f"{mdm.steps_taken} passes, each followed by {mdm.step_scale:.3g} schedule steps "
            f"({'the gradient linearised at the pass' if mdm.between_passes == 'linear' else 'one scaled Adam step'})"
            f"{f', adaptive stop (tol {mdm.tol})' if mdm.tol else ''}. "
            "passes: forward + backward passes of one masked image per localization; overhead: seconds over as many "
            "bare passes of the model")
    print(format_table(rows, note))
    if args.json:
        from ..files import write_json

        print(f"wrote {write_json(args.json, rows_record(rows, note))}")
    return 0
