"""compose.yaml: valid Compose, and carried out by `make up` (scripts/up.py) key by key."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from scripts import up

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "tests" / "fixtures" / "compose" / "compose-spec.json"


def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def test_compose_yaml_is_valid_compose() -> None:
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(document())


def test_only_the_gateway_is_published_on_loopback() -> None:
    project = up.load(env={})
    published = {n: s.spec["ports"] for n, s in project.services.items() if "ports" in s.spec}
    assert published == {"gateway": ["127.0.0.1:8080:8080"]}


def test_every_container_is_hardened() -> None:
    for service in up.load(env={}).services.values():
        args = up.run_arguments(up.load(env={}), service)
        assert "--read-only" in args, service.name
        assert "--cap-drop=ALL" in args, service.name
        assert "--security-opt=no-new-privileges" in args, service.name


def test_services_start_after_their_migration_and_the_database() -> None:
    project = up.load(env={})
    order = [s.name for s in project.order()]
    for name in ("datasets", "deploy", "tracing", "eval"):
        assert project.services[name].needs[f"{name}-migrate"] == "service_completed_successfully"
        assert project.services[f"{name}-migrate"].needs == {"postgres": "service_healthy"}
        assert order.index("postgres") < order.index(f"{name}-migrate") < order.index(name)
    assert order[-1] == "gateway"


def test_each_service_has_its_own_database_role() -> None:
    project = up.load(env={})
    for name in ("datasets", "deploy", "tracing", "eval"):
        url = project.services[name].spec["environment"][f"TUNELAB_{name.upper()}_DATABASE_URL"]
        assert url.startswith(f"postgresql://{name}:dev-only-{name}@postgres:5432/{name}")


def test_the_gateway_gets_no_storage_setting_or_credential() -> None:
    env = up.load(env={}).services["gateway"].spec["environment"]
    assert not [n for n in env if "S3" in n or "STORAGE" in n or n.startswith("AWS_")]


def test_variables_override_the_dev_defaults() -> None:
    project = up.load(env={"TUNELAB_JWT_SECRET": "s" * 40, "TUNELAB_GATEWAY_PORT": "9090"})
    gateway = project.services["gateway"].spec
    assert gateway["environment"]["TUNELAB_JWT_SECRET"] == "s" * 40
    assert gateway["ports"] == ["127.0.0.1:9090:8080"]


def test_every_secret_default_is_labelled_dev_only() -> None:
    project = up.load(env={})
    for service in project.services.values():
        for name, value in service.spec.get("environment", {}).items():
            if any(word in name for word in ("TOKEN", "SECRET", "PASSWORD", "KEK", "ACCESS_KEY")):
                plain = base64.b64decode(value).decode() if "KEK" in name else value
                assert plain.startswith("dev-only-"), (service.name, name)


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        (lambda d: d["services"]["gateway"].update(privileged=True), "privileged"),
        (lambda d: d["services"]["gateway"].update(networks=["x"]), "networks"),
        (lambda d: d.update(secrets={}), "secrets"),
        (lambda d: d["services"]["gateway"].update(environment=["A=1"]), "mapping"),
        (lambda d: d["networks"]["default"].update(driver="macvlan"), "enable_ipv6"),
        (lambda d: d["services"]["gateway"]["healthcheck"].update(disable=True), "disable"),
        (lambda d: d["services"]["gateway"]["depends_on"]["eval"].update(condition="x"), "x"),
        (lambda d: d["services"]["gateway"]["depends_on"].update(nope={}), "nope"),
        (lambda d: d["services"]["gateway"].update(volumes=["undeclared:/x"]), "undeclared"),
    ],
)
def test_a_key_make_up_would_not_carry_out_is_refused(
    tmp_path: Path, change: Any, refused: str
) -> None:
    changed = document()
    changed["services"]["gateway"].setdefault("healthcheck", {"test": ["CMD", "true"]})
    change(changed)
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(changed))
    with pytest.raises(up.ComposeError, match=refused):
        up.load(path, env={})


def test_how_long_a_service_may_take_to_become_healthy() -> None:
    project = up.load(env={})
    assert up.health_window(project.services["postgres"]) == 5 * 30
    assert up.health_window(project.services["gateway"]) == 90  # Compose's defaults
    assert up.seconds("1m30s") == 90
    with pytest.raises(up.ComposeError, match="write it as"):
        up.seconds("90")


def test_interpolation() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert up.interpolate("${A}-${B:-2}-${EMPTY:-3}-$$", env) == "1-2-3-$"
    with pytest.raises(up.ComposeError, match=r"\$\{B\} is not set"):
        up.interpolate("${B}", env)
