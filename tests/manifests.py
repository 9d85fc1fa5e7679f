"""What the deployment manifests, alert rules and dashboards name: files, PromQL, metrics, commands, settings."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "compose"
K8S = ROOT / "deploy" / "k8s"
OBSERVABILITY = ROOT / "deploy" / "observability"
DASHBOARDS = OBSERVABILITY / "grafana" / "dashboards"
RULES = OBSERVABILITY / "alerts.yml"

# Metrics of exporters that are not Flywheel's (they need GPUs or a Kafka cluster), by name prefix, with the
# compose service that runs each exporter.
EXTERNAL = {"DCGM_": "dcgm-exporter", "kafka_consumergroup_": "kafka-exporter"}
# Grafana's variables and macros, replaced by what Grafana would put there before a query is parsed or run.
GRAFANA_PROMQL = {"$__rate_interval": "1m", "$__interval": "1m"}
TIME_FILTER = re.compile(r"\$__timeFilter\((\w+)\)")


def yaml_files() -> list[Path]:
    return sorted(p for d in (COMPOSE, K8S, OBSERVABILITY) for p in d.rglob("*.y*ml"))


def documents(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def compose() -> dict:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def dashboards() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))]


def panel_targets(kind: str) -> Iterator[tuple[str, str]]:
    """(panel title, query) of every dashboard target of a data source type (prometheus or ClickHouse)."""
    for dash in dashboards():
        for panel in dash["panels"]:
            for target in panel["targets"]:
                if kind in target["datasource"]["type"]:
                    yield panel["title"], target["expr"] if kind == "prometheus" else target["rawSql"]


def rule_expressions() -> list[tuple[str, str]]:
    return [(r["alert"], r["expr"]) for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def promql(expr: str) -> str:
    for name, value in GRAFANA_PROMQL.items():
        expr = expr.replace(name, value)
    return expr


def clickhouse_sql(sql: str) -> str:
    return TIME_FILTER.sub(r"\1 >= now() - INTERVAL 1 DAY", sql)


def expressions() -> list[tuple[str, str]]:
    """Every PromQL expression: alert rules and dashboard panels."""
    return rule_expressions() + [(title, promql(e)) for title, e in panel_targets("prometheus")]


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (walks promql_parser's syntax tree)."""
    import promql_parser

    found: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                found.add(node.name)
            return
        for attr in ("expr", "lhs", "rhs", "param", "vector_selector"):
            child = getattr(node, attr, None)
            if child is not None and not isinstance(child, (str, int, float)):
                walk(child)
        for arg in getattr(node, "args", None) or ():
            walk(arg)

    walk(promql_parser.parse(expr))
    return found


def exported_names(text: str) -> set[str]:
    """Every sample name a Prometheus text exposition can carry, declared families included (no samples yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
        names.update(s.name for s in family.samples)
    return names


def flywheel_commands() -> Iterator[tuple[str, list[str]]]:
    """(where, argv after `flywheel`) of every Flywheel container in compose and Kubernetes."""
    for name, service in compose()["services"].items():
        if service.get("image") != "flywheel:latest":
            continue
        if "entrypoint" in service:  # sh -c "flywheel a && flywheel b"
            for part in service["entrypoint"][-1].split("&&"):
                argv = shlex.split(part)
                assert argv[0] == "flywheel", (name, part)
                yield f"compose {name}", argv[1:]
        else:
            yield f"compose {name}", list(service["command"])
    for path in sorted((K8S / "base").glob("*.yaml")):
        for doc in documents(path):
            spec = doc.get("spec", {})
            pod = spec.get("template", {}).get("spec", {})
            for container in pod.get("containers", []):
                if container["image"] == "flywheel":
                    yield f"{path.name} {container['name']}", list(container["args"])


def settings_named() -> Iterator[tuple[str, str]]:
    """(where, variable) of every FLYWHEEL_* setting the manifests set."""
    for line in (COMPOSE / ".env").read_text().splitlines():
        if line.startswith("FLYWHEEL_"):
            yield ".env", line.split("=", 1)[0]
    for name, service in compose()["services"].items():
        for var in service.get("environment") or {}:
            if var.startswith("FLYWHEEL_"):
                yield f"compose {name}", var
    for path in sorted(K8S.rglob("*.yaml")):
        text = path.read_text()
        for var in re.findall(r"\b(FLYWHEEL_[A-Z0-9_]+)\b", text):
            yield path.name, var
