"""The deployment manifests, alert rules and dashboards: they parse, and everything they name exists."""

from __future__ import annotations

import click
import pytest

from tests import manifests as m


@pytest.mark.parametrize("path", m.yaml_files(), ids=lambda p: str(p.relative_to(m.ROOT)))
def test_every_manifest_parses(path):
    assert m.documents(path), f"{path} is empty"


def test_every_dashboard_parses_and_has_panels():
    found = m.dashboards()
    assert found
    for dash in found:
        assert dash["panels"] and all(p["targets"] for p in dash["panels"]), dash["title"]
        assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


@pytest.mark.parametrize("where,expr", m.expressions(), ids=lambda v: v if len(v) < 60 else None)
def test_every_promql_expression_parses_and_names_a_metric(where, expr):
    assert m.metric_names(expr), f"{where}: no metric in {expr!r}"


def test_a_broken_expression_is_refused():
    import promql_parser

    with pytest.raises(Exception, match="parenthesis"):
        promql_parser.parse("sum(rate(flywheel_gateway_requests_total[5m])")


def test_external_metrics_have_their_exporter_deployed():
    names = set().union(*(m.metric_names(e) for _, e in m.expressions()))
    external = {n for n in names if not n.startswith(("flywheel_", "vllm:"))}
    services = set(m.compose()["services"])
    k8s = (m.OBSERVABILITY / "monitoring.yaml").read_text()
    for name in external:
        prefix = next((p for p in m.EXTERNAL if name.startswith(p)), None)
        assert prefix is not None, f"{name} is neither Flywheel's nor a declared exporter's"
        assert m.EXTERNAL[prefix] in services and f"name: {m.EXTERNAL[prefix]}" in k8s, name


def _resolve(argv: list[str]) -> click.Command:
    """Parse argv as `flywheel` would (choices, options, arguments) without running anything."""
    from deploy.cli import main

    ctx = main.make_context("flywheel", list(argv), resilient_parsing=False)
    command: click.Command = main
    while isinstance(command, click.Group):
        name, command, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        ctx = command.make_context(name, rest, parent=ctx)
    return command


@pytest.mark.parametrize("where,argv", list(m.flywheel_commands()), ids=lambda v: v if isinstance(v, str) else None)
def test_every_service_command_is_a_flywheel_command(where, argv):
    assert _resolve(argv).name


def test_a_wrong_command_is_refused():
    with pytest.raises(click.UsageError):
        _resolve(["serve", "gatewy"])
    with pytest.raises(click.UsageError):
        _resolve(["serve", "gateway", "--port", "1"])


def test_every_setting_named_exists():
    from deploy.cli_config import rows

    known = {var for _, var, _, _ in rows()}
    unknown = sorted({f"{where}: {var}" for where, var in m.settings_named() if var not in known})
    assert not unknown


def test_compose_gpu_services_reserve_a_gpu_and_healthchecks_exist():
    services = m.compose()["services"]
    for name in ("vllm-0", "vllm-1", "retrain"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"], name
    for name in ("kafka", "clickhouse", "redis", "vllm-0", "vllm-1", "gateway", "nginx", "prometheus", "grafana"):
        assert "healthcheck" in services[name], name


def test_kustomizations_name_files_that_exist():
    import yaml

    for path in [*m.K8S.rglob("kustomization.yaml"), m.OBSERVABILITY / "kustomization.yaml"]:
        spec = yaml.safe_load(path.read_text())
        for resource in spec.get("resources", []):
            assert (path.parent / resource).exists(), f"{path}: {resource}"
        for generator in spec.get("configMapGenerator", []):
            for entry in generator.get("files", []):
                assert (path.parent / entry.split("=")[-1]).is_file(), f"{path}: {entry}"
