"""The metrics as Prometheus and Grafana see them: a real Prometheus scrapes a running daemon and answers
queries with what it learned, promtool finds nothing to lint in a scrape, every metric the Grafana dashboard
queries is one the daemon serves, and a metrics endpoint bound beyond the loopback interface is warned about.

The Prometheus tests need Debian's ``prometheus`` package (``prometheus`` and ``promtool``; ``.ci/run``
installs it where apt is available) and skip without it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from service_support import PATIENCE, REPO, Daemon, metrics_url, scrape, write_config

from streammas.service.metrics import ServiceMetrics
from streammas.service.telemetry import Tally, Telemetry

DASHBOARD = REPO / "examples" / "grafana" / "streammas-dashboard.json"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
NO_PROMETHEUS = "Prometheus is not installed (Debian: apt-get install prometheus; .ci/run installs it)"
ROWS = 96
#: Grafana's variables, as the dashboard would fill them in for every instance.
GRAFANA_VARIABLES = {"$instance": ".*", "$__rate_interval": "1m"}

CONFIG = """
[source]
uri = "csv:data.csv"
options = {follow = true}
batch_size = 16
[state]
dir = "state"
[metrics]
port = 0
every_batches = 1
[log]
status_every_seconds = 0
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """A daemon following a CSV file, once it learned all of it, and the URL of its metrics."""
    directory = tmp_path_factory.mktemp("daemon")
    x = np.random.default_rng(0).random((ROWS, 4))
    (directory / "data.csv").write_text("a,b,c,d\n" + "".join(",".join(f"{v:.4f}" for v in row) + "\n" for row in x))
    running = Daemon(write_config(directory / "streammas.toml", CONFIG), directory)
    try:
        url = metrics_url(running)
        deadline = time.monotonic() + PATIENCE
        while scrape(url).get("streammas_samples_total") != ROWS:
            assert time.monotonic() < deadline and running.proc.poll() is None, running.log()
            time.sleep(0.1)
        yield running, url
        assert running.stop() == 0, running.log()
    finally:
        running.kill()


def dashboard_expressions() -> list[str]:
    """Every query of the dashboard: the panels' targets and the annotations' (PromQL), the variables'
    (Grafana's ``label_values`` around a metric)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "query") and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(DASHBOARD.read_text()))
    return found


def metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\b(?:streammas|process)_[A-Za-z0-9_]+", expression))


def balanced(expression: str) -> bool:
    """Brackets nest and close, outside string literals."""
    stack: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for char in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


def promql(expression: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expression = expression.replace(variable, value)
    return expression


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(base: str, expression: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:  # a bad query: Prometheus says why in the body
        return json.loads(e.read())


@pytest.mark.slow
def test_every_metric_of_the_dashboard_is_served(daemon):
    running, url = daemon
    expressions = dashboard_expressions()
    assert all(balanced(e) for e in expressions), [e for e in expressions if not balanced(e)]
    wanted = set().union(*map(metric_names, expressions))
    assert {"streammas_samples_total", "streammas_prequential_loss", "streammas_consolidations_total",
            "streammas_rejected_samples_total", "streammas_skipped_updates_total", "streammas_step_seconds_bucket",
            "streammas_seconds_since_checkpoint"} <= wanted
    served = {key.partition("{")[0] for key in scrape(url)}
    assert wanted <= served, sorted(wanted - served)
    assert running.events("metrics_exposed") == []  # bound to 127.0.0.1: nothing to warn about


@pytest.mark.slow
@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMETHEUS)
def test_promtool_finds_nothing_to_lint(daemon):
    _, url = daemon
    with urllib.request.urlopen(url, timeout=10) as response:
        page = response.read()
    assert b"streammas_build_info{" in page and b"process_cpu_seconds_total" in page
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=page, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert not (result.stdout + result.stderr).strip(), result.stdout.decode() + result.stderr.decode()


@pytest.mark.slow
@pytest.mark.skipif(PROMETHEUS is None, reason=NO_PROMETHEUS)
def test_prometheus_scrapes_what_was_learned(daemon, tmp_path):
    _, url = daemon
    target = urllib.parse.urlsplit(url).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
                      f"  - job_name: streammas\n    static_configs:\n      - targets: ['{target}']\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "prometheus.log", "w+") as log:
        prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            # Three scrapes at least: rate() over the dashboard's range needs two points.
            deadline = time.monotonic() + PATIENCE
            while True:
                assert prometheus.poll() is None, Path(log.name).read_text()
                try:
                    answer = query(base, "count_over_time(streammas_samples_total[1m])")
                except OSError:  # not listening yet
                    answer = {}
                if answer.get("data", {}).get("result") and float(answer["data"]["result"][0]["value"][1]) >= 3:
                    break
                assert time.monotonic() < deadline, f"no scrapes of {url}:\n{Path(log.name).read_text()}"
                time.sleep(0.2)

            samples = query(base, "streammas_samples_total")["data"]["result"]
            assert [float(s["value"][1]) for s in samples] == [ROWS]
            assert samples[0]["metric"]["job"] == "streammas"
            build = query(base, "streammas_build_info")["data"]["result"]
            assert build and build[0]["metric"]["device"] == "cpu", build

            # Prometheus parses and evaluates each PromQL query of the dashboard, as Grafana would send it.
            for expression in dashboard_expressions():
                if expression.startswith("label_values("):
                    continue  # Grafana's own function (around streammas_build_info, queried above)
                answer = query(base, promql(expression))
                assert answer["status"] == "success", (expression, answer)
                if not expression.startswith("changes("):  # the annotation: no consolidation in this short run
                    assert answer["data"]["result"], expression
        finally:
            prometheus.terminate()
            try:
                prometheus.wait(timeout=30)
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.wait()


def test_an_endpoint_beyond_loopback_is_warned_about(caplog):
    for host, warned in (("127.0.0.1", False), ("0.0.0.0", True)):
        metrics = ServiceMetrics()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="streammas.service"):
            _, port = metrics.serve(host, 0)
        metrics.close()
        messages = [r.getMessage() for r in caplog.records if r.name == "streammas.service"]
        assert bool(messages) == warned, (host, messages)
        if warned:
            assert messages == [f"{host}:{port}: unauthenticated metrics endpoint bound beyond the loopback "
                                f"interface; anyone who can reach it can read it (set [metrics] host = \"127.0.0.1\" "
                                f"unless a firewall or an authenticating proxy guards the port)"]


def test_telemetry_publishes_sink_failures_and_consolidation_age():
    import torch

    from streammas.learner import OnlineMAS
    from streammas.models import MLPAutoencoder

    learner = OnlineMAS(MLPAutoencoder(in_features=4, hidden=(8,), latent=2))
    telemetry = Telemetry(ServiceMetrics())
    telemetry.losses.add(learner.learn_many(torch.rand(16, 4)))
    telemetry.refresh(learner, Tally(batches=1, received=16, sink_failed=3), source=None)
    values = {k: v for k, _, v in (line.rpartition(" ") for line in telemetry.metrics.render().splitlines())
              if not k.startswith("#")}
    assert float(values["streammas_sink_failed_records_total"]) == 3
    assert float(values['streammas_skipped_updates_total{cause="nonfinite_loss"}']) == 0
    assert float(values["streammas_clipped_samples_total"]) == 0
    assert math.isnan(float(values["streammas_seconds_since_consolidation"]))
    assert 'device="cpu"' in next(k for k in values if k.startswith("streammas_build_info"))

    telemetry.log_event({"kind": "consolidation", "samples_seen": 16, "value": None})  # what the learner emits
    age = float(telemetry.metrics.render().split("\nstreammas_seconds_since_consolidation ")[1].split()[0])
    assert 0 <= age < 60
