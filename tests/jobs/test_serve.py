"""``protomdm serve`` on loopback: pynetdicom (and DCMTK's storescu, where installed) as the sending peer, a second
pynetdicom SCP as the destination; a malformed instance and a kill during processing lose nothing acknowledged."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import tiny_model
from dicom_factory import PATIENT_ID, PATIENT_NAME, make_dicom

from protomdm.jobs.localize import LocalizeJob
from protomdm.models import save_checkpoint

pynetdicom = pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")


class Receiver:
    """A destination SCP that keeps what it is sent."""

    def __init__(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.received: list = []
        ae = AE(ae_title="DEST")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(("127.0.0.1", 0), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = self.server.server_address[1]

    def _store(self, event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(ds)
        return 0x0000

    def wait(self, n: int, timeout: float = 60) -> list:
        end = time.time() + timeout
        while len(self.received) < n and time.time() < end:
            time.sleep(0.1)
        return self.received

    def close(self) -> None:
        self.server.shutdown()


def c_store(port: int, ds, calling: str = "SENDER") -> int:
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="PROTOMDM")
    if not assoc.is_established:
        return -1
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def _scan(path: Path, seed: int = 0, **kw) -> Path:
    rng = np.random.default_rng(seed)
    return make_dicom(path, (rng.random((40, 48)) * 4095).astype(np.uint16), bits_stored=12, **kw)


@pytest.fixture
def grey_model():
    return tiny_model("protopnet", in_channels=1, mean=(0.5,), std=(0.25,), img_size=(32, 32))


def _wait_until(cond, timeout: float = 60) -> bool:
    end = time.time() + timeout
    while not cond() and time.time() < end:
        time.sleep(0.1)
    return cond()


def test_an_instance_sent_comes_back_as_seg_and_sr_that_reference_it(tmp_path, grey_model):
    from protomdm.jobs.serve import Destination, Node, NodeSettings

    dest = Receiver()
    node = Node(LocalizeJob(grey_model, "m.pt", method="upsample"),
                NodeSettings(queue_dir=tmp_path / "q", port=0, destination=Destination("127.0.0.1", dest.port, "DEST"),
                             allowed_aets=("SENDER",))).start()
    try:
        src = pydicom.dcmread(_scan(tmp_path / "a.dcm"))
        assert c_store(node.port, src, calling="STRANGER") == -1  # not an allowed calling AE: rejected
        bad = pydicom.dcmread(_scan(tmp_path / "bad.dcm", 1))
        del bad.PixelData  # malformed: no pixels
        assert c_store(node.port, bad) == 0x0000  # acknowledged: queued, then fails alone
        assert c_store(node.port, src) == 0x0000
        got = dest.wait(3)
        assert sorted(d.Modality for d in got) == ["SEG", "SEG", "SR"]
        for d in got:
            assert d.StudyInstanceUID == src.StudyInstanceUID
            assert str(d.PatientName) == "" and d.PatientID == ""
        sr = next(d for d in got if d.Modality == "SR")
        refs = {r.ReferencedSOPInstanceUID for e in sr.CurrentRequestedProcedureEvidenceSequence
                for s in e.ReferencedSeriesSequence for r in s.ReferencedSOPSequence}
        assert src.SOPInstanceUID in refs and {d.SOPInstanceUID for d in got if d.Modality == "SEG"} <= refs
        assert _wait_until(lambda: node.failed == 1 and node.processed == 1)
        (reason,) = (tmp_path / "q" / "failed").glob("*.txt")
        assert "pixel data" in reason.read_text()
        assert not list((tmp_path / "q" / "incoming").iterdir()) and not list((tmp_path / "q" / "work").iterdir())
    finally:
        node.stop()
        dest.close()
    # no patient data in the node's log, its queue or what it sent
    for p in (tmp_path / "q").rglob("*"):
        if p.is_file():
            blob = p.read_bytes()
            assert PATIENT_ID.encode() not in blob and PATIENT_NAME.split("^")[0].encode() not in blob, p
    assert "done" in (tmp_path / "q" / "node.log").read_text()


def test_a_destination_that_is_down_keeps_the_instance_queued(tmp_path, grey_model):
    from protomdm.jobs.serve import Destination, Node, NodeSettings

    dest = Receiver()
    port = dest.port
    dest.close()  # nobody listens there now
    node = Node(LocalizeJob(grey_model, "m.pt", method="upsample"),
                NodeSettings(queue_dir=tmp_path / "q", port=0, destination=Destination("127.0.0.1", port, "DEST"),
                             retry_seconds=0.2))
    shutil.copy(_scan(tmp_path / "a.dcm"), tmp_path / "q" / "incoming" / "x.dcm")
    assert node.process_one() is False  # not delivered: back in the queue, nothing lost
    assert (tmp_path / "q" / "incoming" / "x.dcm").is_file() and node.failed == 0


SERVE = [sys.executable, "-m", "protomdm.cli", "serve", "--method", "mdm", "--full-schedule", "--steps", "1000",
         "--quiet", "--device", "cpu"]


def _start(tmp_path, ckpt, port, out) -> subprocess.Popen:
    return subprocess.Popen([*SERVE, "--ckpt", str(ckpt), "--queue", str(tmp_path / "q"), "--port", str(port),
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connectable(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_kill_during_processing_loses_nothing_and_sigterm_stops_cleanly(tmp_path, grey_model):
    ckpt = save_checkpoint(grey_model, tmp_path / "m.pt")
    port, out = _free_port(), tmp_path / "out"
    proc = _start(tmp_path, ckpt, port, out)
    try:
        assert _wait_until(lambda: _connectable(port), 60), proc.stderr.read1().decode() if proc.poll() else ""
        src = pydicom.dcmread(_scan(tmp_path / "a.dcm"))
        assert c_store(port, src) == 0x0000
        assert _wait_until(lambda: any((tmp_path / "q" / "work").glob("*.dcm")), 30)  # being localized
        proc.kill()  # SIGKILL mid-search
        proc.wait(10)
        assert not list(out.rglob("*_sr.dcm"))
        proc = _start(tmp_path, ckpt, port, out)  # the restart finds it and finishes it
        assert _wait_until(lambda: bool(list(out.rglob("*_sr.dcm"))), 240)
        assert "requeued" in (tmp_path / "q" / "node.log").read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK's storescu not installed (apt-get install dcmtk)")
def test_storescu_from_dcmtk_is_accepted(tmp_path, grey_model):
    from protomdm.jobs.serve import Node, NodeSettings

    node = Node(LocalizeJob(grey_model, "m.pt", method="upsample"),
                NodeSettings(queue_dir=tmp_path / "q", port=0, out_dir=tmp_path / "out")).start()
    try:
        run = subprocess.run(["storescu", "-aet", "DCMTK", "-aec", "PROTOMDM", "127.0.0.1", str(node.port),
                              str(_scan(tmp_path / "a.dcm"))], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert _wait_until(lambda: node.processed == 1)
        assert {p.name.split("_", 1)[1] for p in (tmp_path / "out").rglob("*.dcm")} == {"seg.dcm", "heatmap.dcm",
                                                                                        "sr.dcm"}
    finally:
        node.stop()


@pytest.mark.parametrize("extra, message", [
    ([], "give a destination (--send HOST:PORT:AE_TITLE) or an --out folder"),
    (["--send", "pacs:104"], "is not HOST:PORT:AE_TITLE"),
    (["--send", "pacs:99999:PACS"], "port 1-65535"),
    (["--out", "o", "--ae-title", "A" * 17], "--ae-title must be 1-16 characters"),
])
def test_bad_node_settings_are_one_line(tmp_path, capsys, extra, message):
    from protomdm.cli import main

    code = main(["serve", "--ckpt", str(tmp_path / "absent.pt"), "--queue", str(tmp_path / "q"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
