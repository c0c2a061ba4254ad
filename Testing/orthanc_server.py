"""A real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) started on loopback for the PACS tests.

Each server has its own storage folder, free ports, no DICOM network listener, and HTTP authentication on, so
the tests go through the credentials path a hospital archive needs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from XAIViewer.cli import free_port

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGINS = Path("/usr/share/orthanc/plugins")
USER, PASSWORD = "radiologist", "not-on-the-command-line"


@dataclass
class OrthancServer:
    process: subprocess.Popen
    port: int
    folder: Path

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.root}/dicom-web"

    @property
    def credentials_env(self) -> dict:
        return {"SLICER_XAI_PACS_USER": USER, "SLICER_XAI_PACS_PASSWORD": PASSWORD}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def orthanc_available() -> bool:
    return Path(ORTHANC).is_file() and (PLUGINS / "libOrthancDicomWeb.so").is_file()


def start_orthanc(folder: Path) -> OrthancServer:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port("127.0.0.1")
    config = {
        "Name": "SLICERXAI-TEST", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "HttpPort": port, "DicomServerEnabled": False, "DicomPort": free_port("127.0.0.1"),
        "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(PLUGINS / "libOrthancDicomWeb.so")], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (folder / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")
    log = open(folder / "orthanc.log", "wb")
    process = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    server = OrthancServer(process, port, folder)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited: {(folder / 'orthanc.log').read_text(errors='replace')[-800:]}")
        try:
            if requests.get(f"{server.root}/system", auth=(USER, PASSWORD), timeout=2).ok:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError("Orthanc did not answer within 60 s")
