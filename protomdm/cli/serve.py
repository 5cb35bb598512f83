"""``protomdm serve``."""

from __future__ import annotations

import argparse

from .options import add_explained_options, add_mdm_options, job_settings


def add_parser(sub, methods: list[str]) -> None:
    p = sub.add_parser("serve", help="a DICOM node: receive images by C-STORE, localize each, send SEG + SR on",
                       description="Listen as a DICOM Storage SCP. Each received single-frame image is queued on disk "
                       "before it is acknowledged, localized with --ckpt, and its mask SEG, heatmap SEG and structured "
                       "report are sent to --send (C-STORE) and/or written under --out. A restart resumes the queue; "
                       "a bad instance fails alone (QUEUE/failed/); SIGTERM stops cleanly. Logs and queue carry no "
                       "patient data unless --keep-phi.")
    add_explained_options(p, methods)
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
    add_mdm_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from ..jobs.localize import LocalizeJob
    from ..jobs.serve import Destination, NodeSettings, serve

    settings = NodeSettings(
        queue_dir=Path(args.queue), port=args.port, host=args.host, ae_title=args.ae_title,
        allowed_aets=tuple(a for a in (args.allow_aet or "").split(",") if a),
        destination=Destination.parse(args.send) if args.send else None,
        out_dir=Path(args.out) if args.out else None, max_associations=args.max_associations,
        max_queue=args.max_queue, keep_phi=args.keep_phi)
    settings.check()  # before the checkpoint is read
    job = LocalizeJob.load(args.ckpt, **job_settings(args))
    if not args.quiet:
        logging.basicConfig(level=logging.INFO, format="protomdm serve: %(message)s")
    return serve(job, settings)
