"""The ``protomdm`` command: argument parsing only; each subcommand calls one library function.

A user mistake (missing file, bad index, invalid setting) prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import warnings
from typing import Callable, Sequence

from .errors import UserError
from .runtime import keep_freed_memory

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


def _parse_classes(text: str) -> list[str]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one class name, comma-separated")
    return names


def _add_mdm_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method-config", metavar="[METHOD=]YAML", action="append", help="a method's settings from a "
                   "YAML file (the fields of its settings, e.g. masks: 2000 for rise); METHOD= names the method when "
                   "it is not --method (evaluate: rise=rise.yaml); repeatable")
    g = p.add_argument_group("MDM settings (defaults: configs/mdm.yaml; the paper's masks, optimiser and 2000-step "
                             "schedule, in 400 Adam steps)")
    g.add_argument("--mdm-config", metavar="YAML", help="read MDM settings from a YAML file; flags below override it "
                   "(the same as --method-config mdm=YAML)")
    g.add_argument("--steps", type=int, help="schedule length per mask (default 2000, the paper's)")
    g.add_argument("--adam-steps", type=int, metavar="N", help="Adam steps per mask, each standing for --steps / N "
                   "of the schedule's (default 400; 0: one per schedule step)")
    g.add_argument("--extrapolate-after", type=int, metavar="N", help="take at most N Adam steps, then extrapolate "
                   "each mask's trajectory linearly to the schedule's end (default: no cap)")
    g.add_argument("--tol", type=float, help="stop an image's masks once their projected p90 mask changes by at most "
                   "this (1 - Dice) over two checks (default: no adaptive stop)")
    g.add_argument("--full-schedule", action="store_true", help="take every step of --steps, as the paper does (no "
                   "adaptive stop, no extrapolation): slow, the reference")
    g.add_argument("--lambda", dest="lambda_l1", type=float, help="weight of the L1 mask-area term (default 3)")
    g.add_argument("--loss", choices=("normalised", "paper"), help="normalised (default: the reconstruction term "
                   "divided by the effect of masking everything, weighted against --lambda) or paper (Algorithm 1 as "
                   "written: --lambda1 x the squared change + --lambda2 x mean|d|)")
    g.add_argument("--lambda1", type=float, help="--loss paper: weight of the squared change (default 1e-3; the "
                   "paper: 1e-2 CUB, 1e-3 NIH)")
    g.add_argument("--lambda2", type=float, help="--loss paper: weight of mean|d| (default 1)")
    g.add_argument("--time-scale", type=float, metavar="K", help="each Adam step stands for K of the schedule's "
                   "(lr x K, Adam's decay rates ^ K): --steps / K steps taken (default --steps / --adam-steps)")
    g.add_argument("--gamma", type=float, help="heatmap = sum of masks, zero where the sum < gamma (default 5)")
    g.add_argument("--lr", type=float, help="Adam learning rate (default 3e-3)")
    g.add_argument("--baseline", choices=("zero", "blur", "mean"), help="what masked-out pixels become (default zero)")
    g.add_argument("--batch-masks", type=int, help="most masked images per forward pass (halved on out-of-memory)")
    g.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="autocast precision of the forward passes")


def _add_explained_options(p: argparse.ArgumentParser, methods: list[str]) -> None:
    """--model, --ckpt, --prototype | --class, --method and --percentile: what a LocalizeJob explains and how."""
    from .jobs.localize import LocalizeJob
    from .models import list_architectures

    p.add_argument("--model", choices=list_architectures(), help="refuse a checkpoint of another architecture")
    p.add_argument("--ckpt", required=True, help="protomdm checkpoint (see init-model / train)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--prototype", type=int, help="prototype index (default: the most activated prototype of "
                     "--class, or of the predicted class)")
    who.add_argument("--class", dest="class_name", help="class name: explain its most activated prototype")
    p.add_argument("--method", metavar="METHOD", help="a registered localizer: " + ", ".join(methods)
                   + f" (default {LocalizeJob.method}; upsample is the network's own search)")
    p.add_argument("--percentile", type=float, help="keep the top (100-p)%% of the heatmap (default "
                   f"{LocalizeJob.percentile:g})")


def _job_settings(args: argparse.Namespace, **more) -> dict:
    """The LocalizeJob settings given on the command line (what was not given keeps the job's default)."""
    given = dict(architecture=args.model, method=args.method, prototype=args.prototype, class_name=args.class_name,
                 percentile=args.percentile, method_configs=_method_configs(args), device=args.device,
                 keep_phi=args.keep_phi,
                 **more)
    return {k: v for k, v in given.items() if v is not None}


def _add_job_options(p: argparse.ArgumentParser, resume: str | None = None) -> None:
    """--device, --out, --overwrite, [--resume] and --quiet, and the MDM settings: what every job command takes."""
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU if there is one, else the CPU), cpu, cuda "
                   "or cuda:N (default auto)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace outputs already in --out")
    if resume:
        p.add_argument("--resume", action="store_true", help=resume)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_mdm_options(p)


def _method_configs(args: argparse.Namespace) -> dict:
    """Each method's settings from --method-config (a method without METHOD= is --method's, else MDM's), MDM's
    with its own flags applied."""
    from .explain.registry import list_localizers, method_settings

    configs = {}
    for spec in args.method_config or []:
        name, sep, path = spec.partition("=")
        if not sep or name not in list_localizers():
            name, path = getattr(args, "method", None) or "mdm", spec
        configs[name] = method_settings(name, path)
    configs["mdm"] = _mdm_config(args, configs.get("mdm"))
    return configs


def _mdm_config(args: argparse.Namespace, base=None):
    from .config import MDMConfig, load_mdm_config

    cfg = load_mdm_config(args.mdm_config) if args.mdm_config else (base or MDMConfig())
    overrides = {k: getattr(args, k) for k in ("steps", "loss", "lambda_l1", "lambda1", "lambda2", "time_scale", "gamma",
                                                "lr", "baseline", "batch_masks", "precision")
                 if getattr(args, k) is not None}
    if args.tol is not None:
        overrides["tol"] = args.tol if args.tol > 0 else None
    if args.extrapolate_after is not None:
        overrides["extrapolate_after"] = args.extrapolate_after if args.extrapolate_after > 0 else None
    if args.adam_steps is not None:
        overrides["adam_steps"] = args.adam_steps if args.adam_steps > 0 else None
    if args.full_schedule:
        overrides.update(tol=None, extrapolate_after=None, time_scale=1.0)
    return dataclasses.replace(cfg, **overrides)


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from .jobs.localize import LocalizeJob
    from .jobs.serve import Destination, NodeSettings, serve

    settings = NodeSettings(
        queue_dir=Path(args.queue), port=args.port, host=args.host, ae_title=args.ae_title,
        allowed_aets=tuple(a for a in (args.allow_aet or "").split(",") if a),
        destination=Destination.parse(args.send) if args.send else None,
        out_dir=Path(args.out) if args.out else None, max_associations=args.max_associations,
        max_queue=args.max_queue, keep_phi=args.keep_phi)
    settings.check()  # before the checkpoint is read
    job = LocalizeJob.load(args.ckpt, **_job_settings(args))
    if not args.quiet:
        logging.basicConfig(level=logging.INFO, format="protomdm serve: %(message)s")
    return serve(job, settings)


def _cmd_prototypes(args: argparse.Namespace) -> int:
    from .report.gallery import make_gallery

    g = make_gallery(args.ckpt, args.out, method=args.method, method_configs=_method_configs(args), device=args.device,
                     percentile=args.percentile, overwrite=args.overwrite, progress=not args.quiet)
    for note in g.notes:
        print(f"note: {note}")
    shown = sum(e.pixels is not None for e in g.entries)
    print(f"{len(g.entries)} prototypes, {shown} with their source image; open {g.files['html']}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .jobs.case_report import case_reports

    run = case_reports(args.ckpt, args.out, image=args.image, input_dir=args.input, top_k=args.top_k,
                       method=args.method or "mdm", method_configs=_method_configs(args), class_name=args.class_name,
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


def _cmd_localize(args: argparse.Namespace) -> int:
    from .jobs.localize import LocalizeJob, localize_file

    if args.report:
        return _cmd_report(args)
    settings = _job_settings(args, trust_pickle=args.trust_pickle, code_dir=args.code_dir)
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
    from .device import resolve_device
    from .distributed import init_distributed
    from .jobs.folder import FAILURES, RESULTS, localize_folder

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


def _cmd_explain(args: argparse.Namespace) -> int:
    from .device import resolve_device
    from .jobs.explain_classifier import build_classifier, explain_classifier

    model = build_classifier(args.arch, args.ckpt, args.pretrained, args.img_size).to(resolve_device(args.device))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rec = explain_classifier(model, args.image, args.out, class_index=args.class_index, methods=methods,
                             img_size=args.img_size, method_configs=_method_configs(args), title=f"{args.arch}",
                             overwrite=args.overwrite, progress=not args.quiet)
    print(f"{args.arch}: class {rec['class_index']} (logit {rec['logit']:.4g}); "
          + ", ".join(f"{m} {v['seconds']:.1f}s" for m, v in rec["methods"].items()))
    for f in rec["files"]:
        print(f"wrote {f}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .device import resolve_device
    from .distributed import init_distributed
    from .evaluation.runner import EvalSettings, evaluate

    dist = init_distributed(resolve_device(args.device))
    methods = args.methods if args.methods is not None or args.maps is None else ""  # --maps alone: only the maps
    given = {"data": _data_config(args), "methods": methods, "percentiles": args.percentiles,
             "limit": args.limit, "prototype_policy": args.prototype_policy, "seed": args.seed, "truth": args.truth,
             "part_half_width": args.part_half_width, "deletion_steps": args.deletion_steps,
             "baseline": args.faithfulness_baseline, "batch_images": args.batch_images,
             "method_configs": _method_configs(args),
             "maps": args.maps, "export": args.export and [args.export]}
    settings = EvalSettings(**{k: v for k, v in given.items() if v is not None},
                            faithfulness=not args.no_faithfulness)
    res = evaluate(args.ckpt, args.out, settings, device=args.device, resume=args.resume, overwrite=args.overwrite,
                   progress=not args.quiet, dist=dist)
    if not dist.is_main:
        return 0
    print((res.out_dir / "summary.md").read_text())
    if res.skipped:
        print(f"skipped {len(res.skipped)} image(s), listed with reasons in {res.out_dir / 'skipped.txt'}")
    names = ("results.csv", "curves.csv", "summary.csv", "differences.csv", "summary.md", "metrics_vs_percentile.png",
             "deletion_insertion.png", "skipped.txt", "chexlocalize")
    print(f"results in {res.out_dir}: " + ", ".join(n for n in names if (res.out_dir / n).exists()))
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from .evaluation.tuning import MDMGrid, tune

    def numbers(text: str, what: str) -> tuple[float, ...]:
        try:
            return tuple(float(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise UserError(f"{what} must be numbers separated by commas, got {text!r}") from None

    def pairs(text: str, what: str, sep: str) -> tuple[tuple[float, ...], ...]:
        parts = [p for p in text.split(",") if p.strip()]
        if any(len(p.split(sep)) != 2 for p in parts):
            raise UserError(f"{what} must be A{sep}B pairs separated by commas, got {text!r}")
        return tuple(numbers(p.replace(sep, ","), what) for p in parts)

    grid = MDMGrid(lambdas=numbers(args.lambdas, "--lambdas"), paper=pairs(args.paper, "--paper", ":"),
                   gammas=numbers(args.gammas, "--gammas"), sizes=pairs(args.sizes, "--sizes", "-"))
    res = tune(args.ckpt, args.out, _data_config(args), grid, base=_mdm_config(args), limit=args.limit,
               seed=args.seed, folds=args.folds, metric=args.metric, percentile=args.percentile,
               batch_images=args.batch_images, device=args.device, overwrite=args.overwrite, progress=not args.quiet)
    print((res.out_dir / "summary.md").read_text())
    print(f"wrote {res.out_dir / 'mdm.yaml'} (use it with --mdm-config), folds.csv, settings.csv, scores.csv")
    return 0


def _data_config(args: argparse.Namespace):
    """The data config of --config (its data: section), with --dataset and --root over it."""
    from .config import DataConfig, from_dict, load_yaml

    section = {}
    if args.config:
        raw = load_yaml(args.config)
        section = raw["data"] if "data" in raw else raw
        if not isinstance(section, dict):
            raise UserError(f"{args.config}: its data: section is not a mapping")
    section = {**section, "dataset": args.dataset}
    if args.root:
        section["root"] = args.root
    if getattr(args, "split", None):
        section["split"] = args.split
    if args.dataset != "synthetic" and not section.get("root"):
        raise UserError(f"the {args.dataset} dataset needs `root` (the folder of your copy), or a `config` naming it")
    return from_dict(DataConfig, section, where=f"{args.config}: data" if args.config else "data")


def _cmd_check_data(args: argparse.Namespace) -> int:
    from .data import dataset_source

    checks = dataset_source(_data_config(args)).check()
    for c in checks:
        print(f"{c.status:>9}  {c.item}: {c.detail}")
    bad = [c for c in checks if c.status in ("missing", "malformed")]
    print(f"{args.dataset} at {_data_config(args).root}: " + ("complete" if all(c.status in ("ok", "optional") for c in checks)
                                                 else f"{len(bad)} problem(s)" if bad else "usable, partial copy"))
    return 1 if bad else 0


def _cmd_init_model(args: argparse.Namespace) -> int:
    from .models.checkpoint import init_model

    path = init_model(args.out, args.model, args.backbone, args.classes, args.prototypes_per_class, args.img_size,
                      args.prototype_dim, 1 if args.grey else 3, args.pretrained, args.overwrite, args.seed)
    print(f"wrote {path}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .config import load_train_config
    from .training import train

    cfg = load_train_config(args.config)
    out = args.out or str(Path("runs") / Path(args.config).stem)
    res = train(cfg, out, resume=args.resume, device=args.device, stop_after=args.stop_after,
                progress=not args.quiet)
    print(f"{res.metric_name}: last {res.last_metric:.4f}, best {res.best_metric:.4f}; "
          f"checkpoints and log.csv in {res.out_dir}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .jobs.demo import run_demo

    res = run_demo(args.out, args.images, _mdm_config(args), progress=not args.quiet, overwrite=args.overwrite)
    print("\nmethod     mean Dice  mean IoU  s/image   (top 10% of the heatmap vs the planted object)")
    for m, v in res["means"].items():
        print(f"{m:<10} {v['dice']:>9.3f} {v['iou']:>9.3f} {v['seconds']:>8.2f}")
    me = res["measures"]
    print(f"\nthe demo model: test accuracy {me['test_accuracy']:.3f}; prototypes pushed onto an object of their own "
          f"class {me['prototypes_on_own_object']:.0%}; MDM pointing game {me['mdm_pointing_game']:.2f} (the "
          "heatmap's maximum on the explained object)")
    print(f"\nreport: {res['figure']} and {res['table']} (model: {res['model']})")
    print(f"prototype gallery: {res['gallery']}\ncase report: {res['case_report']}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .jobs.bench import format_table, rows_record, run_bench

    mdm = _mdm_config(args)
    rows, what = run_bench(args.model, args.backbone, args.img_size, args.device, args.images, args.ref_steps, mdm,
                           args.seed, progress=not args.quiet, ckpt=args.ckpt, batch_images=args.batch_images)
    note = (f"MDM bench: {what}, {args.images} synthetic image(s), each image's top prototype score, precision "
            f"{mdm.precision}. The paper's schedule (each mask alone, {mdm.steps} steps) was timed over "
            f"{args.ref_steps} steps and projected; the batched full schedule is the reference for agreement; ours: "
            f"{mdm.steps_taken} Adam steps of {mdm.step_scale:.3g} schedule steps each"
            f"{f', adaptive stop (tol {mdm.tol})' if mdm.tol else ''}. "
            "passes: forward + backward passes of one masked image per localization; overhead: seconds over as many "
            "bare passes of the model")
    print(format_table(rows, note))
    if args.json:
        from .files import write_json

        print(f"wrote {write_json(args.json, rows_record(rows, note))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .config import BASELINES
    from .data import list_datasets
    from .evaluation.runner import EXPORTS, POLICIES, EvalSettings
    from .evaluation.tuning import OBJECTIVES
    from .explain.registry import list_localizers
    from .models import list_architectures
    from .version import __version__

    methods = list_localizers()

    parser = argparse.ArgumentParser(
        prog="protomdm", description="Where does a prototype network look? ProtoPNet/XProtoNet with Multiple "
        "Dynamic Mask (MDM) localisation.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"protomdm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("localize", help="localize a prototype in an image with MDM or the upsampling search",
                       description="Localize one prototype in one image (--image) or in every image of a folder "
                       "(--input). Writes an overlay PNG, the binary mask PNG and a JSON with the box in the original "
                       "image's pixels; for DICOM inputs also DICOM Segmentations of the mask and the heatmap and a "
                       "structured report, which viewers overlay on the source image. Output names of DICOM inputs "
                       "are hashes of the SOP Instance UID, never patient data.")
    _add_explained_options(p, methods)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="one PNG, JPEG, TIFF, NPY or DICOM image")
    src.add_argument("--input", metavar="DIR", help="a folder: every image below it (recursively; DICOM, PNG, JPEG "
                     "mixed), one output subfolder each, plus results.csv and failures.txt")
    p.add_argument("--trust-pickle", action="store_true", help="--ckpt is a whole model pickled by another codebase "
                   "(e.g. the original ProtoPNet's torch.save(model)); loading it runs code from the file")
    p.add_argument("--code-dir", metavar="DIR", help="with --trust-pickle: the repository defining the pickled "
                   "classes, importable during the load only")
    p.add_argument("--batch-images", type=int, metavar="N", help="--input runs: images localized in one search "
                   "(default 8 on a GPU, 4 on the CPU)")
    p.add_argument("--keep-phi", action="store_true", help="copy patient and study attributes (name, ID, dates, "
                   "accession number) into the DICOM outputs; by default they are left empty")
    p.add_argument("--report", action="store_true", help="write a case report instead: the predicted classes and, "
                   "for the --top-k prototypes that contribute most, each one's region in the scan beside the "
                   "training image region it stands for (HTML, PNG, JSON; with --input one per image and an index)")
    p.add_argument("--top-k", type=int, default=5, help="--report: prototypes shown (default 5)")
    _add_job_options(p, resume="--input runs: skip images already done in --out's results.csv (reports.csv with "
                     "--report), retry the failed ones")
    p.set_defaults(func=_cmd_localize)

    p = sub.add_parser("serve", help="a DICOM node: receive images by C-STORE, localize each, send SEG + SR on",
                       description="Listen as a DICOM Storage SCP. Each received single-frame image is queued on disk "
                       "before it is acknowledged, localized with --ckpt, and its mask SEG, heatmap SEG and structured "
                       "report are sent to --send (C-STORE) and/or written under --out. A restart resumes the queue; "
                       "a bad instance fails alone (QUEUE/failed/); SIGTERM stops cleanly. Logs and queue carry no "
                       "patient data unless --keep-phi.")
    _add_explained_options(p, methods)
    p.add_argument("--queue", required=True, metavar="DIR", help="the node's queue folder (received instances, "
                   "failures, node.log); kept across restarts")
    p.add_argument("--port", type=int, default=11112, help="port to listen on (default 11112)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--ae-title", default="PROTOMDM", help="this node's AE title (default PROTOMDM)")
    p.add_argument("--allow-aet", metavar="AET[,AET...]", help="calling AE titles accepted (default: any)")
    p.add_argument("--send", metavar="HOST:PORT:AET", help="send the outputs there by C-STORE")
    p.add_argument("--out", help="also (or instead) write each instance's outputs to OUT/<id>/")
    p.add_argument("--max-associations", type=int, default=4, help="concurrent associations (default 4)")
    p.add_argument("--max-queue", type=int, default=1000, help="instances waiting before C-STOREs are answered "
                   "'out of resources' (default 1000)")
    p.add_argument("--keep-phi", action="store_true", help="keep patient and study attributes in the queue and the "
                   "outputs; by default they are never written")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--quiet", action="store_true", help="no log lines on the terminal (QUEUE/node.log keeps them)")
    _add_mdm_options(p)
    p.set_defaults(func=_cmd_serve)

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
    _add_job_options(p)
    p.set_defaults(func=_cmd_prototypes)

    p = sub.add_parser("demo", help="train a small synthetic ProtoPNet (once) and compare MDM with upsampling",
                       description="The built-in demo: no downloads, no data needed. Trains the synthetic ProtoPNet "
                       "of configs/synthetic_protopnet.yaml into OUT/model (reused on later runs), localizes test "
                       "images' prototypes with MDM and with the upsampling search, and writes OUT/report.png and "
                       "OUT/report.csv.")
    p.add_argument("--out", default="protomdm-demo", help="output folder (default protomdm-demo)")
    p.add_argument("--images", type=int, default=4, help="test images to localize (default 4)")
    p.add_argument("--overwrite", action="store_true", help="replace the report already in --out (the trained "
                   "model there is reused either way)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_mdm_options(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("train", help="train ProtoPNet or XProtoNet from a YAML config",
                       description="Warm-up, joint, push and last-layer stages; writes last.pt, best.pt, "
                       "push_epochN.pt and log.csv.")
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/synthetic_protopnet.yaml")
    p.add_argument("--out", help="output folder (default runs/CONFIG_NAME)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the config's `device`, auto if it has none)")
    p.add_argument("--resume", metavar="CKPT", help="continue an interrupted run from its last.pt")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop after N more epochs (resume later)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("bench", help="time the paper's MDM schedule against ours and measure their agreement",
                       description="Runs, in one process on the same images and model, one image at a time as "
                       "`localize` does: the paper's schedule (each mask alone, 2000 steps; timed over --ref-steps "
                       "and projected), the same schedule batched (run in full: the reference for agreement) and ours "
                       "(400 Adam steps covering the 2000-step schedule). Prints seconds per image, speed-up, peak memory and agreement "
                       "(Dice of the p90 masks, Pearson r of the heatmaps). The default is the demo's trained "
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
    p.add_argument("--batch-images", type=int, metavar="N", help="images per search in the folder-run row (default: "
                   "all --images)")
    p.add_argument("--json", metavar="FILE", help="also write the table as JSON")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_mdm_options(p)
    p.set_defaults(func=_cmd_bench)

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
    _add_job_options(p)
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("evaluate", help="score prototype localisation against ground truth (NIH, CUB, synthetic)",
                       description="For each image and ground-truth finding, localize the prototypes of its class "
                       "with every method and write results.csv (long format), summary.csv/.md (the paper's "
                       "tables), metrics_vs_percentile.png and deletion_insertion.png.")
    p.add_argument("--dataset", required=True, choices=list_datasets())
    p.add_argument("--root", help="your copy of the dataset (nih, cub, table); check it with protomdm check-data")
    p.add_argument("--config", help="YAML with a data: section (a training config will do): a table's files, "
                   "columns and split; --dataset and --root override it")
    p.add_argument("--split", choices=("val", "test"), help="chexlocalize: which of its sets (default val)")
    p.add_argument("--ckpt", required=True, help="protomdm checkpoint trained on that dataset's classes")
    d = EvalSettings()
    p.add_argument("--methods", help="comma-separated, of " + ", ".join(methods) + f" (default {','.join(d.methods)})")
    p.add_argument("--percentiles", help=f"comma-separated (default {','.join(f'{v:g}' for v in d.percentiles)})")
    p.add_argument("--limit", type=int, help="at most N images (synthetic: default 50)")
    p.add_argument("--prototype-policy", choices=POLICIES,
                   help="which of the class's prototypes (default: best-dice on nih, first otherwise)")
    p.add_argument("--seed", type=int, help=f"picks the synthetic images (default {d.seed}: the shipped configs' "
                   "test set, as their training data uses seed 0) and the stability noise")
    p.add_argument("--truth", choices=("segmentation", "parts", "bbox"), help=f"CUB ground truth (default {d.truth})")
    p.add_argument("--part-half-width", type=int, help="CUB part squares' half side, original pixels (default "
                   f"{d.part_half_width})")
    p.add_argument("--no-faithfulness", action="store_true", help="skip Average Drop/Increase and "
                   "deletion/insertion (faster)")
    p.add_argument("--batch-images", type=int, metavar="N", help="images localized in one search (MDM trains all "
                   "their masks together; default 8 on a GPU, 4 on the CPU)")
    p.add_argument("--deletion-steps", type=int, help=f"deletion/insertion curve steps (default {d.deletion_steps})")
    p.add_argument("--faithfulness-baseline", choices=BASELINES, help="what removed pixels become in "
                   f"deletion/insertion (default {d.baseline}; zero = the normalisation mean)")
    p.add_argument("--maps", metavar="DIR", help="also score heatmaps made elsewhere, as method `maps`: one "
                   "<image id>_<finding>_map.pkl (CheXlocalize's gradcam_maps layout) or .npy per image and finding, "
                   "ids and findings as results.csv names them; alone (no --methods), only these are scored")
    p.add_argument("--export", choices=EXPORTS, help="chexlocalize: also write each method's maps (_map.pkl) and "
                   "masks (segmentations.json, at p90) under --out/chexlocalize/METHOD/, for CheXlocalize's eval.py")
    _add_job_options(p, resume="continue an interrupted run in --out")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("tune", help="choose MDM's lambda, gamma and mask sizes against ground truth by k-fold "
                       "cross-validation (the paper's selection); writes an mdm.yaml for --mdm-config",
                       description="Explain each ground-truth finding's most activated prototype of its class on "
                       "the first --limit images of a dataset with boxes or masks, with every setting of the grid in "
                       "one batched search per --batch-images images (the base settings, from --mdm-config and the "
                       "flags, always among them), and pick the setting with the best mean --metric by --folds-fold "
                       "cross-validation over images. Writes mdm.yaml (the base settings with the chosen loss, "
                       "lambda, gamma and sizes), folds.csv (per fold: the setting chosen without it, its score on "
                       "it, the base setting's score there), settings.csv, scores.csv and summary.md.")
    p.add_argument("--dataset", default="synthetic", choices=list_datasets(), help="default synthetic")
    p.add_argument("--root", help="your copy of the dataset (all but synthetic)")
    p.add_argument("--config", help="YAML with a data: section (a training config will do); --dataset and --root "
                   "override it")
    p.add_argument("--split", choices=("val", "test"), help="chexlocalize: which of its sets (default val)")
    p.add_argument("--ckpt", required=True, help="protomdm checkpoint trained on that dataset's classes")
    p.add_argument("--limit", type=int, default=20, help="images used (default 20: a labelled subset, as the paper "
                   "uses part of the dataset)")
    p.add_argument("--seed", type=int, default=1, help="picks the synthetic images and the folds (default 1)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5, the paper's)")
    p.add_argument("--lambdas", default="0.3,1,3,10", help="lambda values of the normalised loss (default "
                   "0.3,1,3,10)")
    p.add_argument("--paper", default="", metavar="L1:L2,...", help="(lambda1:lambda2) pairs of the paper's loss, "
                   "e.g. 0.01:1,0.001:1 (default none)")
    p.add_argument("--gammas", default="2,5,10", help="heatmap thresholds (default 2,5,10)")
    p.add_argument("--sizes", default="6-32", metavar="A-B,...", help="ranges of mask sizes (default 6-32, the "
                   "paper's 27 masks), e.g. 6-32,6-20,12-32")
    p.add_argument("--metric", default="dice", choices=OBJECTIVES, help="what is maximised (default dice)")
    p.add_argument("--percentile", type=float, default=90.0, help="of --metric dice or iou: the top-(100-p)%% mask "
                   "(default 90; the other metrics have none)")
    p.add_argument("--batch-images", type=int, metavar="N", help="images in one search (default 8 on a GPU, 4 on "
                   "the CPU)")
    _add_job_options(p)
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("check-data", help="check a copy of NIH ChestX-ray14 or CUB-200-2011 against its manifest, "
                       "or your own table",
                       description="NIH and CUB: compares the files, columns and row counts of your copy with the "
                       "manifest shipped inside protomdm (protomdm/data/manifests/DATASET.yaml). table: reads the "
                       "table, boxes and masks as training would and says what they hold and what is wrong. Exit 1 "
                       "if something needed is missing.")
    p.add_argument("--dataset", required=True, choices=[d for d in list_datasets() if d != "synthetic"])
    p.add_argument("--root", help="the folder you unpacked the dataset into (table: the folder the paths are "
                   "relative to)")
    p.add_argument("--config", help="table: YAML with a data: section (a training config will do)")
    p.add_argument("--split", choices=("val", "test"), help="chexlocalize: which of its sets (default val)")
    p.set_defaults(func=_cmd_check_data)

    p = sub.add_parser("init-model", help="write an untrained checkpoint (smoke tests, your own training loop)",
                       description="Write a checkpoint of an untrained ProtoPNet or XProtoNet (random weights, or an "
                       "ImageNet backbone with --pretrained): a starting point for your own training loop, or a "
                       "model to try the other commands on.")
    p.add_argument("--model", required=True, choices=list_architectures(), help="the architecture")
    p.add_argument("--backbone", default="resnet18", help="resnet18/34/50, vgg11/16/19, densenet121/161, "
                   "monai_densenet121, tiny (default resnet18)")
    p.add_argument("--classes", required=True, type=_parse_classes, help="comma-separated class names")
    p.add_argument("--prototypes-per-class", type=int, default=10, help="prototypes of each class (default 10)")
    p.add_argument("--prototype-dim", type=int, default=None, help="prototype depth D (default 128)")
    p.add_argument("--img-size", type=int, default=224, help="input side in pixels (default 224)")
    p.add_argument("--grey", action="store_true", help="one input channel (chest X-rays)")
    p.add_argument("--pretrained", action="store_true", help="ImageNet backbone weights (downloads once)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=_cmd_init_model)
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


if __name__ == "__main__":
    sys.exit(main())
