"""docs/cookbook/web-service.md, run as it is on the page, with real HTTP on 127.0.0.1.

The page's two files (model.py, service.py) are saved in an empty folder and the service
is started with PORT=0; the test reads the port from its log, then checks what the page
promises: sessions stick, a request past request_timeout is a 504, no free worker is a
503, a worker killed with SIGKILL under load costs only its own request (502) and its
session's next one (409), /metrics and /healthz answer, and SIGTERM lets a request in
flight finish before the service exits 0 without leaving a process behind.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.test_docs import ROOT, blocks

pytest.importorskip("hypercorn")
pytest.importorskip("prometheus_client")

PAGE = "docs/cookbook/web-service.md"


class Service:
    def __init__(self, folder: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(PORT="0", PYTHONPATH=str(ROOT / "src"), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "service.py"],
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = int(self.wait_for(r"service: serving on http://127\.0\.0\.1:(\d+)").group(1))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        pytest.fail(f"no line matching {pattern!r} in the service's log:\n{self.log}")

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, session: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            headers = {"x-session": session} if session else {}
            conn.request(method, path, body=json.dumps(body) if body else None, headers=headers)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def generate(self, prompt: str, max_tokens: int = 4, session: str | None = None) -> tuple[int, Any]:
        request = {"prompt": prompt, "max_tokens": max_tokens}
        status, _, body = self.request("POST", "/generate", request, session)
        return status, json.loads(body)

    def metric(self, name: str) -> float:
        status, _, body = self.request("GET", "/metrics")
        assert status == 200
        m = re.search(rf"^{re.escape(name)} (\S+)$", body.decode(), re.MULTILINE)
        assert m, (name, body.decode())
        return float(m.group(1))

    def wait_metric(self, name: str, value: float, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.metric(name) != value:
            assert time.monotonic() < deadline, (name, value, self.metric(name))
            time.sleep(0.02)

    def worker_pids(self) -> set[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return {int(pid) for pid in children}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    for b in blocks(PAGE):
        if b.saved_as:
            (tmp_path / b.saved_as).write_text(b.code, encoding="utf-8")
    svc = Service(tmp_path)
    try:
        yield svc
    finally:
        if svc.proc.poll() is None:
            svc.proc.send_signal(signal.SIGTERM)
            try:
                svc.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                svc.proc.kill()
                svc.proc.wait()
        svc._reader.join(timeout=5)
        assert svc.proc.stdout is not None
        svc.proc.stdout.close()


READY = 'corral_pool_workers{pool="model",state="ready"}'
BUSY = 'corral_pool_workers{pool="model",state="busy"}'


def test_the_web_service_recipe(service: Service) -> None:
    # start-up: the model's progress lines reached logging, then the pool opened
    assert "loading model: warm-up done" in service.log and "corral.pool: [model] open" in service.log
    assert service.request("GET", "/healthz")[0] == 200

    # sessions stick: the same worker, the turn counts up
    status, first = service.generate("hi", session="alice")
    status2, second = service.generate("more", session="alice")
    assert (status, status2) == (200, 200) and second["turn"] == first["turn"] + 1
    assert second["pid"] == first["pid"]

    # past request_timeout: 504, and the worker is replaced
    t0 = time.monotonic()
    status, error = service.generate("long", max_tokens=5000)
    assert status == 504 and error["error"] == "RequestTimeout", error
    assert time.monotonic() - t0 < 4.0
    service.wait_metric(READY, 2.0)

    # no worker free within checkout_timeout: 503 with Retry-After
    with ThreadPoolExecutor(2) as slow:
        busy = [slow.submit(service.generate, "slow", 1500) for _ in range(2)]
        service.wait_metric(BUSY, 2.0)
        status, headers, body = service.request("POST", "/generate", {"prompt": "x"})
        assert status == 503 and json.loads(body)["error"] == "CheckoutTimeout", body
        assert headers.get("retry-after") == "1"
        assert [f.result()[0] for f in busy] == [200, 200]

    # a worker killed under load: its request fails (502), its session's next request
    # is a 409 (once), every other request is served, and a new worker comes up
    _, before = service.generate("who", session="bob")
    results: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            results.append(service.generate("load", max_tokens=20)[0])

    with ThreadPoolExecutor(3) as pool:
        loaders = [pool.submit(load) for _ in range(3)]
        time.sleep(0.3)
        os.kill(before["pid"], signal.SIGKILL)
        time.sleep(0.5)
        stop.set()
        for f in loaders:
            f.result()
    assert results.count(200) > 10 and set(results) <= {200, 502}, results
    assert results.count(502) <= 1, results  # only the request that was on the killed worker
    status, error = service.generate("again", session="bob")
    assert status == 409 and error["error"] == "SessionLost", error
    status, after = service.generate("again", session="bob")
    assert status == 200 and after["turn"] == 1 and after["pid"] != before["pid"]
    service.wait_metric(READY, 2.0)
    assert before["pid"] not in service.worker_pids()
    assert service.metric('corral_pool_restarts_total{pool="model"}') == 2.0

    # Prometheus counted the calls by outcome
    assert service.metric('corral_calls_total{name="generate",outcome="RequestTimeout",pool="model"}') == 1.0

    # SIGTERM with a request in flight: it gets its answer, then everything stops
    workers = service.worker_pids()
    with ThreadPoolExecutor(1) as one:
        inflight = one.submit(service.generate, "last", 800)
        service.wait_metric(BUSY, 1.0)
        service.proc.send_signal(signal.SIGTERM)
        assert inflight.result()[0] == 200
    assert service.proc.wait(timeout=15) == 0, service.log
    service._reader.join(timeout=5)
    assert "SIGTERM: finishing the requests in flight" in service.log
    assert "corral.pool: [model] closed" in service.log
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
