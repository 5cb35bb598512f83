"""``protomdm localize``."""

from __future__ import annotations

import argparse

from ..errors import UserError
from .options import add_explained_options, add_job_options, images_per_search_help, job_settings, method_configs


def add_parser(sub, methods: list[str]) -> None:
    p = sub.add_parser("localize", help="localize a prototype in an image with MDM or the upsampling search",
                       description="Localize one prototype in one image (--image) or in every image of a folder "
                       "(--input). Writes an overlay PNG, the binary mask PNG and a JSON with the box in the original "
                       "image's pixels; for DICOM inputs also DICOM Segmentations of the mask and the heatmap and a "
                       "structured report, which viewers overlay on the source image. Output names of DICOM inputs "
                       "are hashes of the SOP Instance UID, never patient data.")
    add_explained_options(p, methods)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="one PNG, JPEG, TIFF, NPY or DICOM image")
    src.add_argument("--input", metavar="DIR", help="a folder: every image below it (recursively; DICOM, PNG, JPEG "
                     "mixed), one output subfolder each, plus results.csv and failures.txt")
    p.add_argument("--trust-pickle", action="store_true", help="--ckpt is a whole model pickled by another codebase "
                   "(e.g. the original ProtoPNet's torch.save(model)); loading it runs code from the file")
    p.add_argument("--code-dir", metavar="DIR", help="with --trust-pickle: the repository defining the pickled "
                   "classes, importable during the load only")
    p.add_argument("--batch-images", type=int, metavar="N", help="--input runs: images localized in one search "
                   f"({images_per_search_help()})")
    p.add_argument("--keep-phi", action="store_true", help="copy patient and study attributes (name, ID, dates, "
                   "accession number) into the DICOM outputs; by default they are left empty")
    p.add_argument("--report", action="store_true", help="write a case report instead: the predicted classes and, "
                   "for the --top-k prototypes that contribute most, each one's region in the scan beside the "
                   "training image region it stands for (HTML, PNG, JSON; with --input one per image and an index)")
    p.add_argument("--top-k", type=int, default=5, help="--report: prototypes shown (default 5)")
    add_job_options(p, resume="--input runs: skip images already done in --out's results.csv (reports.csv with "
                     "--report), retry the failed ones")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..jobs.localize import LocalizeJob, localize_file

    if args.report:
        return _report(args)
    settings = job_settings(args, trust_pickle=args.trust_pickle, code_dir=args.code_dir)
    if args.image is not None:
        if args.resume:
            raise UserError("--resume applies to --input folder runs only")
        res = localize_file(args.ckpt, args.image, args.out, overwrite=args.overwrite, progress=not args.quiet,
                            **settings)
        r = res.record
        print(f"prototype {r['prototype']} ({r['class_name']}), score {r['score']:.4g}, {r['method']} "
              + (f"box {r['box']}" if r["status"] == "ok" else f"EMPTY: {r['reason']}")
              + f" in {r['seconds']:.1f}s on {r['device']}")
        for f in res.files.values():
            print(f"wrote {f}")
        return 0 if r["status"] == "ok" else 1
    from ..device import resolve_device
    from ..distributed import init_distributed
    from ..jobs.folder import FAILURES, RESULTS, localize_folder

    dist = init_distributed(resolve_device(args.device))
    settings["device"] = str(dist.device(resolve_device(args.device)))
    job = LocalizeJob.load(args.ckpt, **settings)
    res = localize_folder(job, args.input, args.out, resume=args.resume, overwrite=args.overwrite,
                          progress=not args.quiet, dist=dist, batch_images=args.batch_images)
    if not dist.is_main:
        return 0
    print(f"{res.done} localized, {res.failed} failed, {res.skipped} already done; results in "
          f"{res.out_dir / RESULTS}")
    if res.empty:
        print(f"{len(res.empty)} image(s) with an empty result (nothing localized):")
    for rel, why in res.empty:
        print(f"  empty: {rel}: {why}")
    for rel, why in res.failures:
        print(f"  failed: {why}" if rel in why else f"  failed: {rel}: {why}")
    if res.failures:
        print(f"(listed in {res.out_dir / FAILURES})")
    return 1 if res.failed or res.empty else 0

def _report(args: argparse.Namespace) -> int:
    from ..jobs.case_report import case_reports

    run = case_reports(args.ckpt, args.out, image=args.image, input_dir=args.input, top_k=args.top_k,
                       method=args.method or "mdm", method_configs=method_configs(args), class_name=args.class_name,
                       device=args.device, overwrite=args.overwrite, resume=args.resume, progress=not args.quiet)
    for r in run.reports:
        for note in r["notes"]:
            print(f"note: {note}")
        print(f"{r['input']}: {r['top']} {r['probability']:.1%}; report {r['files']['html']}")
    for rel, why in run.failures:
        print(f"failed: {rel}: {why.removeprefix(rel + ': ')}")
    if args.input is not None:
        print(f"{len(run.reports)} report(s), {len(run.failures)} failed; index {run.out_dir / 'index.html'}")
    return 1 if run.failures else 0
