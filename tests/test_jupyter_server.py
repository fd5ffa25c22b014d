"""The README's "open" command in a real server: scripts/lab.sh starts JupyterLab, the five
notebooks are served, and a kernel started through the REST API runs a cell over the kernel
websocket (the route JupyterLab's frontend uses) in the project's environment."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import galcore

tornado_websocket = pytest.importorskip("tornado.websocket")
tornado_httpclient = pytest.importorskip("tornado.httpclient")
pytest.importorskip("jupyterlab")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
LAB_SH = ROOT / "scripts" / "lab.sh"
NOTEBOOKS = ("01_", "02_", "03_", "04_", "05_")
PROFILE = "smoke"
START_TIMEOUT_S = 180  # the machine may be loaded; an idle one answers in a few seconds
# loopback only, never a proxy (the socket guard forbids any other address)
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    token: str
    log: Path

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"})
        try:
            with OPENER.open(req, timeout=60) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def json(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = self.request(method, path, body)
        assert 200 <= status < 300, (method, path, status, payload[:500])
        return json.loads(payload) if payload else None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the server's process group (server and kernels); kill it if it hangs."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """scripts/lab.sh (setup skipped, this interpreter's environment) on a free loopback port,
    with Jupyter's and IPython's user folders in a temporary directory. lab.sh itself puts the
    repository first on the kernel's PYTHONPATH."""
    if os.name != "posix" or shutil.which("bash") is None:
        pytest.skip("scripts/lab.sh needs bash on a POSIX system")
    tmp = tmp_path_factory.mktemp("jupyter")
    startup = tmp / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    # the kernel gets the tests' network guard (as nbval's kernels do)
    shutil.copy(ROOT / "tests" / "ipython" / "profile_default" / "startup" / "00-no-network.py", startup)
    token, port = uuid.uuid4().hex, _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    env.update(
        GALCORE_SKIP_SETUP="1", GALCORE_PYTHON=sys.executable, GALCORE_PROFILE=PROFILE, MPLBACKEND="Agg",
        GALCORE_RESULTS=str(tmp / "results"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_DATA_DIR=str(tmp / "data"), IPYTHONDIR=str(tmp / "ipython"),
    )
    args = ["bash", str(LAB_SH), "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", "--LabApp.extension_manager=readonly",
            "--ServerApp.terminals_enabled=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--allow-root")  # containers and CI often run as root
    log = tmp / "server.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(args, cwd=tmp, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    srv = Server(proc, f"http://127.0.0.1:{port}", token, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"the server exited ({proc.returncode}):\n{srv.output()[-3000:]}"
            try:
                if srv.request("GET", "/api/status")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no answer in {START_TIMEOUT_S} s:\n{srv.output()[-3000:]}"
            time.sleep(0.2)
        yield srv
    finally:
        _stop(proc)


def test_lab_serves_the_five_notebooks_from_the_repository(server: Server) -> None:
    listing = server.json("GET", "/api/contents/notebooks")
    served = sorted(item["name"] for item in listing["content"] if item["type"] == "notebook")
    on_disk = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert served == on_disk
    assert sorted(n[:3] for n in served if n.startswith(NOTEBOOKS)) == list(NOTEBOOKS), served
    # one notebook opened through the contents API, as JupyterLab does
    nb = server.json("GET", f"/api/contents/notebooks/{served[0]}?type=notebook&content=1")
    assert nb["content"]["nbformat"] == 4 and nb["content"]["cells"]


def test_lab_page_opens_in_the_notebooks_folder(server: Server) -> None:
    status, page = server.request("GET", "/lab")
    assert status == 200
    text = page.decode()
    assert "JupyterLab" in text
    found = re.search(r'<script id="jupyter-config-data"[^>]*>(.*?)</script>', text, re.DOTALL)
    assert found, text[:2000]
    config = json.loads(found.group(1))
    assert config["preferredPath"].strip("/") == "notebooks"
    assert Path(config["serverRoot"]).expanduser().resolve() == ROOT
    # no news feed or update check is fetched
    assert server.json("GET", "/lab/api/update") == {"notification": None}
    assert server.json("GET", "/lab/api/news")["news"] == []


def test_lab_sh_says_where_the_executed_notebooks_are(server: Server) -> None:
    executed = server.log.parent / "results" / "notebooks"  # GALCORE_RESULTS/notebooks, as scripts/main.sh writes
    assert any(line.startswith("lab:") and str(executed) in line for line in server.output().splitlines())


async def _execute(url: str, token: str, code: str, timeout: float = 300.0) -> tuple[str, dict[str, Any]]:
    """Send one execute_request over the kernel's websocket; return its stdout and execute_reply."""
    ws = await tornado_websocket.websocket_connect(
        tornado_httpclient.HTTPRequest(url, headers={"Authorization": f"token {token}"}))
    session, msg_id = uuid.uuid4().hex, uuid.uuid4().hex
    ws.write_message(json.dumps({
        "header": {"msg_id": msg_id, "username": "test", "session": session, "msg_type": "execute_request",
                   "version": "5.3", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }))
    stdout, reply, idle = [], None, False
    deadline = time.monotonic() + timeout
    try:
        while reply is None or not idle:
            raw = await asyncio.wait_for(ws.read_message(), max(deadline - time.monotonic(), 0.1))
            assert raw is not None, "the kernel websocket closed"
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "stream" and msg["content"]["name"] == "stdout":
                stdout.append(msg["content"]["text"])
            elif kind == "error":
                raise AssertionError("\n".join(msg["content"]["traceback"]))
            elif kind == "execute_reply":
                reply = msg["content"]
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
    finally:
        ws.close()
    return "".join(stdout), reply


def test_a_kernel_started_through_the_api_runs_galcore_in_this_environment(server: Server) -> None:
    spec = server.json("GET", "/api/kernelspecs")
    assert spec["default"] == "python3"
    argv0 = spec["kernelspecs"]["python3"]["spec"]["argv"][0]
    # a bare "python" is replaced by the server's own interpreter (this one, via lab.sh)
    bare = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
    assert argv0 in bare or Path(argv0).parent == Path(sys.executable).parent, argv0

    kernel = server.json("POST", "/api/kernels", {"name": "python3", "path": "notebooks"})
    try:
        code = ("import json, os, sys, galcore, galcore.experiments as ex\n"
                "print(json.dumps({'version': galcore.__version__, 'profile': ex.get_profile(),"
                " 'prefix': sys.prefix, 'file': galcore.__file__, 'cwd': os.getcwd()}))")
        ws_url = server.url.replace("http://", "ws://") + f"/api/kernels/{kernel['id']}/channels"
        stdout, reply = asyncio.run(_execute(ws_url, server.token, code))
        assert reply["status"] == "ok", reply
        seen = json.loads(stdout.strip().splitlines()[-1])
        assert seen["version"] == galcore.__version__
        assert seen["profile"] == PROFILE
        assert Path(seen["prefix"]).resolve() == Path(sys.prefix).resolve()
        assert Path(seen["file"]).resolve().is_relative_to(ROOT)  # this checkout's galcore
        assert Path(seen["cwd"]).resolve() == ROOT / "notebooks"
    finally:
        status, _ = server.request("DELETE", f"/api/kernels/{kernel['id']}")
    assert status == 204
    assert server.json("GET", "/api/kernels") == []


def test_the_server_shuts_down_through_the_api(server: Server) -> None:
    status, _ = server.request("POST", "/api/shutdown")
    assert status == 200
    assert server.proc.wait(timeout=60) == 0
