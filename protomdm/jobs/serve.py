"""``protomdm serve``: a DICOM node for research pipelines (pynetdicom).

It listens as a Storage SCP; each received instance is written to a queue on disk *before* the C-STORE is
answered, so what was acknowledged survives a crash or a kill. One worker localizes the queued single-frame images
one at a time (bounded memory) with a :class:`~protomdm.jobs.localize.LocalizeJob` and sends the SEG, the heatmap's SEG
and the SR to a destination (C-STORE SCU), or writes them to a folder, or both.

The queue folder::

    QUEUE/incoming/<id>.dcm    received, acknowledged, waiting
    QUEUE/work/<id>.dcm        being localized (moved back to incoming/ at the next start: a kill loses nothing)
    QUEUE/failed/<id>.dcm      could not be localized, beside <id>.txt with the reason (one bad instance fails alone)
    QUEUE/outbox/<id>/         outputs waiting to be sent, when there is no output folder
    QUEUE/node.log             one line per event; ids are hashes of the SOP Instance UID, never patient data

Without ``keep_phi`` the queue holds only what the outputs and the image reader need (the references and geometry
of :data:`~protomdm.report.dicom.KEPT_KEYWORDS`, the Image Pixel group 0028 and the pixel data), so no patient
attribute is ever written to disk. An instance the node cannot store (queue full, disk error) is answered
``0xA700`` (out of resources) and so stays the sender's to retry.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..files import atomic_write
from .localize import LocalizeJob

LOG = logging.getLogger("protomdm.serve")
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class Destination:
    """Where outputs are sent by C-STORE: ``host:port:AE_TITLE``."""

    host: str
    port: int
    ae_title: str

    @classmethod
    def parse(cls, text: str) -> "Destination":
        try:
            host, port, aet = text.rsplit(":", 2)
            port_n = int(port)
        except ValueError:
            raise UserError(f"`send` {text!r} is not HOST:PORT:AE_TITLE") from None
        if not host or not aet or not 0 < port_n < 65536 or len(aet) > 16:
            raise UserError(f"`send` {text!r} is not HOST:PORT:AE_TITLE (port 1-65535, AE title of 1-16 "
                            "characters)")
        return cls(host, port_n, aet)


@dataclass
class NodeSettings:
    """How the node listens and where its results go (at least one of ``destination`` and ``out_dir``)."""

    queue_dir: Path
    port: int = 11112
    host: str = "127.0.0.1"
    ae_title: str = "PROTOMDM"
    allowed_aets: tuple[str, ...] = ()  # calling AE titles accepted; empty: any
    destination: Destination | None = None
    out_dir: Path | None = None
    max_associations: int = 4
    max_queue: int = 1000  # instances waiting; beyond it C-STOREs are answered 0xA700
    retry_seconds: float = 10.0  # wait after a destination refused, before trying again
    keep_phi: bool = False

    def check(self) -> None:
        import importlib.util

        if importlib.util.find_spec("pynetdicom") is None:
            raise UserError("the DICOM node needs pynetdicom: pip install 'protomdm[serve]'")
        if self.destination is None and self.out_dir is None:
            raise UserError("give a destination (`send` HOST:PORT:AE_TITLE) or an `out` folder, or both")
        if not 0 <= self.port < 65536:
            raise UserError(f"`port` must be 0-65535, got {self.port}")
        if not 1 <= len(self.ae_title) <= 16:
            raise UserError(f"`ae_title` must be 1-16 characters, got {self.ae_title!r}")
        if self.max_associations < 1 or self.max_queue < 1:
            raise UserError("`max_associations` and `max_queue` must be at least 1")


def instance_id(sop_instance_uid: str) -> str:
    """A queue and log id for an instance: a hash of its SOP Instance UID (as output names are)."""
    return "dcm-" + hashlib.sha256(sop_instance_uid.encode()).hexdigest()[:16]


def queued_copy(ds, keep_phi: bool):
    """What the queue stores of a received dataset: all of it with ``keep_phi``, else the outputs' whitelist, the
    Image Pixel group (0028: pixel description, rescale, windows, LUTs) and the pixel data."""
    from ..report.dicom import deidentified

    if keep_phi:
        return ds
    out = deidentified(ds)
    for elem in ds:
        if elem.tag.group in (0x0028, 0x7FE0) and elem.tag not in out:
            out.add(elem)
    out.file_meta = ds.file_meta
    return out


@dataclass
class Node:
    """The DICOM node: :meth:`start` listens and works in background threads, :meth:`stop` ends both cleanly."""

    job: LocalizeJob
    settings: NodeSettings
    processed: int = 0
    failed: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _wake: threading.Event = field(default_factory=threading.Event)
    _log_lock: threading.Lock = field(default_factory=threading.Lock)
    _server = None
    _worker: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.settings.check()
        q = Path(self.settings.queue_dir)
        self.incoming, self.work, self.failed_dir, self.outbox = (q / "incoming", q / "work", q / "failed",
                                                                   q / "outbox")
        for d in (self.incoming, self.work, self.failed_dir, self.outbox):
            d.mkdir(parents=True, exist_ok=True)
        if self.settings.out_dir is not None:
            Path(self.settings.out_dir).mkdir(parents=True, exist_ok=True)
        self._log_path = q / "node.log"

    # ---- the log: ids and statuses only
    def log(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}"
        LOG.info(message)
        with self._log_lock, open(self._log_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    # ---- receiving
    def _on_store(self, event) -> int:
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            uid = str(ds.get("SOPInstanceUID", "")) or str(event.request.AffectedSOPInstanceUID)
        except Exception as e:  # noqa: BLE001 - a dataset pynetdicom cannot decode
            self.log(f"refused an instance that does not decode ({type(e).__name__})")
            return CANNOT_UNDERSTAND
        ident = instance_id(uid)
        if len(list(self.incoming.iterdir())) >= self.settings.max_queue:
            self.log(f"{ident} refused: queue full ({self.settings.max_queue})")
            return OUT_OF_RESOURCES
        try:
            copy = queued_copy(ds, self.settings.keep_phi)
            atomic_write(self.incoming / f"{ident}.dcm", lambda tmp: _save_synced(copy, tmp))
        except Exception as e:  # noqa: BLE001 - a full disk, an unwritable queue: the sender keeps it
            self.log(f"{ident} refused: cannot queue it ({type(e).__name__})")
            return OUT_OF_RESOURCES
        self.log(f"{ident} received from {event.assoc.requestor.ae_title}")
        self._wake.set()
        return 0x0000

    # ---- working
    def recover(self) -> int:
        """Move instances a previous run left in ``work/`` back to the queue; returns how many."""
        left = sorted(self.work.glob("*.dcm"))
        for p in left:
            os.replace(p, self.incoming / p.name)
            self.log(f"{p.stem} requeued (the previous run stopped while localizing it)")
        return len(left)

    def process_one(self) -> bool:
        """Localize and deliver the oldest queued instance; False when the queue is empty or delivery must wait."""
        waiting = sorted(self.incoming.glob("*.dcm"), key=lambda p: p.stat().st_mtime)
        if not waiting:
            return False
        item = self.work / waiting[0].name
        os.replace(waiting[0], item)
        ident = item.stem
        start = time.perf_counter()
        try:
            files = self._localize(item, ident)
        except Exception as e:  # noqa: BLE001 - one bad instance is that instance's failure, never the node's
            reason = " ".join(str(e).replace(str(item), ident).split())[:300]
            os.replace(item, self.failed_dir / item.name)
            (self.failed_dir / f"{ident}.txt").write_text(f"{type(e).__name__}: {reason}\n", encoding="utf-8")
            self.failed += 1
            self.log(f"{ident} failed: {reason}")
            return True
        if self.settings.destination is not None:
            try:
                self._send([files[k] for k in ("seg", "heatmap", "sr") if k in files])
            except Exception as e:  # noqa: BLE001 - the destination is down: keep the instance and try again
                os.replace(item, self.incoming / item.name)
                self.log(f"{ident} not delivered, will retry in {self.settings.retry_seconds:g} s: {e}")
                self._stop.wait(self.settings.retry_seconds)
                return False
        item.unlink()
        if self.settings.out_dir is None:
            shutil.rmtree(self.outbox / ident, ignore_errors=True)
        self.processed += 1
        self.log(f"{ident} done in {time.perf_counter() - start:.1f} s: {', '.join(sorted(files))}")
        return True

    def _localize(self, item: Path, ident: str) -> dict[str, Path]:
        """The instance's DICOM outputs, in ``out_dir/<id>/`` or (sent, then removed) ``QUEUE/outbox/<id>/``."""
        from ..data.images import read_image

        image = read_image(item)
        base = Path(self.settings.out_dir) if self.settings.out_dir is not None else self.outbox
        out = base / ident
        out.mkdir(parents=True, exist_ok=True)
        return self._outputs(image, out, ident)

    def _outputs(self, image, out: Path, ident: str) -> dict[str, Path]:
        res = self.job.run(image, out, ident)
        if not res.localization.ok:
            self.log(f"{ident} empty: {res.localization.reason}")
        return {k: p for k, p in res.files.items() if p.suffix == ".dcm"}

    def _send(self, paths: list[Path]) -> None:
        import pydicom
        from pynetdicom import AE

        dest = self.settings.destination
        if dest is None or not paths:
            return
        datasets = [pydicom.dcmread(p) for p in paths]
        ae = AE(ae_title=self.settings.ae_title)
        for uid in sorted({str(d.SOPClassUID) for d in datasets}):
            ae.add_requested_context(uid)
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if not assoc.is_established:
            raise ConnectionError(f"destination {dest.ae_title}@{dest.host}:{dest.port} refused the association")
        try:
            for d in datasets:
                status = assoc.send_c_store(d)
                code = getattr(status, "Status", None)
                if code != 0x0000:
                    raise ConnectionError(f"destination answered status {code!r} to a C-STORE")
        finally:
            assoc.release()

    def _work(self) -> None:
        while not self._stop.is_set():
            if not self.process_one():
                self._wake.wait(1.0)
                self._wake.clear()

    # ---- lifecycle
    def start(self) -> "Node":
        """Requeue what a previous run left, listen, and start the worker (both in background threads)."""
        from pynetdicom import AE, StoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined] # made at import time

        self.recover()
        ae = AE(ae_title=self.settings.ae_title)
        ae.supported_contexts = StoragePresentationContexts
        ae.add_supported_context(Verification)
        ae.maximum_associations = self.settings.max_associations
        if self.settings.allowed_aets:
            ae.require_calling_aet = list(self.settings.allowed_aets)
        try:
            self._server = ae.start_server((self.settings.host, self.settings.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        except OSError as e:
            raise UserError(f"cannot listen on {self.settings.host}:{self.settings.port} ({e.strerror or e})") from None
        self._worker = threading.Thread(target=self._work, name="protomdm-worker", daemon=True)
        self._worker.start()
        self.log(f"listening as {self.settings.ae_title} on {self.settings.host}:{self.port}")
        return self

    @property
    def port(self) -> int:
        """The port listened on (the one the system chose for ``port=0``)."""
        return self._server.server_address[1] if self._server else self.settings.port

    def stop(self, timeout: float = 60.0) -> None:
        """Stop listening, let the worker finish the instance in hand, and return."""
        self._stop.set()
        self._wake.set()
        if self._server is not None:
            self._server.shutdown()
        if self._worker is not None:
            self._worker.join(timeout)
        self.log(f"stopped: {self.processed} done, {self.failed} failed this run")


def _save_synced(ds, path: str) -> None:
    ds.save_as(path, enforce_file_format=True)  # preamble and file meta, as a file on disk has
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def serve(job: LocalizeJob, settings: NodeSettings) -> int:
    """Run a node until SIGTERM or SIGINT, then stop it cleanly; returns 0."""
    import signal

    node = Node(job, settings).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    node.stop()
    return 0
