"""deploy/: the compose file and the Kubernetes manifests match the worker they run.

Ports, paths, commands and variable names are read from the code (the CLI's
options and defaults, the routes the HTTP apps register, the Dockerfile) rather
than written down twice, so a change on either side fails here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from worker.cli import cli
from worker.config import load_tenant
from worker.http import WorkerApp, parse_listen
from worker.local_engine import LocalEngine
from worker.pipeline import Pipeline
from worker.precedence import audit_target
from worker.secrets import ENV_KEYS
from worker.settings import Settings, env_name
from worker.sources import Sources
from worker.stores.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
K8S = ROOT / "deploy" / "k8s" / "worker.yaml"
DOCKERFILE = ROOT / "Dockerfile"


# -- what the code says ---------------------------------------------------------------


def _settings_env_names() -> set[str]:
    """Every environment variable the worker reads: one `Settings` field each."""
    return {env_name(field) for field in Settings.model_fields}


def _known_env_names() -> set[str]:
    """Every environment variable the worker reads, and the image's own ``TENANT``."""
    return _settings_env_names() | set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", _dockerfile_cmd()))


def _code_env_names() -> set[str]:
    """The names the code itself spells next to an environment read, as a cross-check."""
    pattern = re.compile(r"""(?:environ(?:\.get)?[\(\[]\s*|envvar=)["']([A-Z][A-Z0-9_]+)["']""")
    names: set[str] = set()
    for folder in ("worker", "connectors"):
        for path in (ROOT / folder).rglob("*.py"):
            names |= set(pattern.findall(path.read_text(encoding="utf-8")))
    return names


def _dockerfile() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


def _dockerfile_cmd() -> str:
    return "\n".join(line for line in _dockerfile().splitlines() if line.startswith("CMD"))


def _dockerfile_uid() -> int:
    found = re.search(r"useradd[^\n]*--uid\s+(\d+)", _dockerfile())
    assert found, "the Dockerfile creates its user with useradd --uid"
    return int(found.group(1))


def _dockerfile_workdir() -> str:
    found = re.search(r"^WORKDIR\s+(\S+)", _dockerfile(), re.MULTILINE)
    assert found
    return found.group(1)


def _option_default(command: tuple[str, ...], name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An option's default as the code defines it, with no environment variable set."""
    for variable in ("WORKER_HTTP", "WORKER_GRACE_S", "ENGINE_LISTEN", "ENGINE_DB"):
        monkeypatch.delenv(variable, raising=False)
    target: click.Command = cli
    for word in command:
        assert isinstance(target, click.Group)
        target = target.commands[word]
    option = next(p for p in target.params if p.name == name)
    default = option.default
    return default() if callable(default) else default


def _parse_command(argv: list[str]) -> click.Context:
    """Parse ``worker …`` argv with the real CLI (options checked, nothing run)."""
    assert argv[0] == "worker", argv
    command: click.Command = cli
    words = list(argv[1:])
    while isinstance(command, click.Group):
        name = words.pop(0)
        assert name in command.commands, f"no command {name!r} in {argv}"
        command = command.commands[name]
    return command.make_context(command.name or "", words)


@pytest.fixture(scope="module")
def worker_routes() -> set[str]:
    tenant = load_tenant(ROOT / "config" / "tenants" / "demo.yaml")
    app = WorkerApp(Pipeline(tenant, Sources(tenant)), None, token=None).app()
    return {route.resource.canonical for route in app.router.routes() if route.resource}


@pytest.fixture
def engine_routes(tmp_path: Path) -> set[str]:
    app = LocalEngine(SQLiteStore(tmp_path / "engine.db"), token="t").app()
    return {route.resource.canonical for route in app.router.routes() if route.resource}


def _seconds(value: str | int | float) -> float:
    if isinstance(value, int | float):
        return float(value)
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value):
        total += float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def _healthcheck_url(test: list[str]) -> str:
    found = re.search(r"https?://[^'\"\s]+", " ".join(test))
    assert found, f"a healthcheck that calls a URL: {test}"
    return found.group(0)


# -- the compose file -----------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found = compose["services"]
    assert {"postgres", "queue-init", "engine", "worker"} <= set(found)
    return dict(found)


def test_compose__images_build_from_the_repository_dockerfile(services: dict[str, Any]) -> None:
    for name in ("queue-init", "engine", "worker"):
        build = services[name]["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose__commands_parse_with_the_real_cli(services: dict[str, Any]) -> None:
    run = _parse_command(services["worker"]["command"])
    assert run.command.name == "run"
    assert (ROOT / "config" / "tenants" / f"{run.params['tenant_id']}.yaml").exists()
    assert _parse_command(services["queue-init"]["command"]).command.name == "init"
    assert _parse_command(services["engine"]["command"]).command.name == "serve"


def test_compose__one_queue_for_init_engine_and_workers(services: dict[str, Any]) -> None:
    init = _parse_command(services["queue-init"]["command"]).params["dsn"]
    engine = _parse_command(services["engine"]["command"]).params["db"]
    direct = services["worker"]["environment"]["QUEUE_DSN"]
    assert init == engine == direct
    assert direct.startswith("postgresql://") and "@postgres:" in direct


def test_compose__worker_variables_are_ones_the_worker_reads(services: dict[str, Any]) -> None:
    environment = services["worker"]["environment"]
    unknown = set(environment) - _known_env_names()
    assert not unknown, f"variables the worker never reads: {unknown}"
    assert ENV_KEYS not in environment, "secret keys come from the env file, not inline"
    files = [f["path"] if isinstance(f, dict) else f for f in services["worker"]["env_file"]]
    assert files, "WORKER_SECRET_KEYS comes from an env file"


def test_compose__worker_healthcheck_hits_a_route_on_its_listen_port(
    services: dict[str, Any], worker_routes: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = services["worker"]
    listen = worker["environment"].get("WORKER_HTTP") or _option_default(
        ("run",), "listen", monkeypatch
    )
    _, port = parse_listen(listen)
    url = _healthcheck_url(worker["healthcheck"]["test"])
    assert url.endswith(f":{port}/healthz")
    assert "/healthz" in worker_routes
    assert re.search(rf"^EXPOSE\s+{port}\b", _dockerfile(), re.MULTILINE)


def test_compose__engine_healthcheck_hits_its_healthz(
    services: dict[str, Any], engine_routes: set[str]
) -> None:
    engine = services["engine"]
    _, port = parse_listen(_parse_command(engine["command"]).params["listen"])
    assert _healthcheck_url(engine["healthcheck"]["test"]).endswith(f":{port}/healthz")
    assert "/healthz" in engine_routes


def test_compose__stop_grace_period_outlasts_the_workers_grace(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = services["worker"]
    grace = float(
        worker["environment"].get("WORKER_GRACE_S")
        or _option_default(("run",), "grace_s", monkeypatch)
    )
    assert _seconds(worker["stop_grace_period"]) > grace
    assert worker["deploy"]["replicas"] >= 2


# -- the Kubernetes manifests --------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    documents = [d for d in yaml.safe_load_all(K8S.read_text(encoding="utf-8")) if d]
    by_kind: dict[str, dict[str, Any]] = {}
    for document in documents:
        assert document["kind"] not in by_kind, "one of each kind for one tenant"
        by_kind[document["kind"]] = document
    assert {"ConfigMap", "Secret", "Deployment"} <= set(by_kind)
    return by_kind


@pytest.fixture(scope="module")
def pod(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return dict(manifests["Deployment"]["spec"]["template"]["spec"])


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["containers"]
    return dict(only)


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container["env"]}


def _secret_refs(container: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    for name, item in _env(container).items():
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            yield name, ref["name"], ref["key"]


def test_k8s__deployment_runs_replicas_of_one_tenant(
    manifests: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    deployment = manifests["Deployment"]
    assert deployment["spec"]["replicas"] >= 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    env = _env(container)
    assert env["TENANT"]["value"] and env["ENGINE_URL"]["value"].startswith("https://")


def test_k8s__probes_hit_worker_routes_on_the_listen_port(
    container: dict[str, Any], worker_routes: set[str]
) -> None:
    _, port = parse_listen(_env(container)["WORKER_HTTP"]["value"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and path in worker_routes
        assert ports.get(get["port"], get["port"]) == port


def test_k8s__termination_grace_covers_the_workers_grace(
    pod: dict[str, Any], container: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _env(container)
    grace = float(
        env["WORKER_GRACE_S"]["value"]
        if "WORKER_GRACE_S" in env
        else _option_default(("run",), "grace_s", monkeypatch)
    )
    assert grace + 5 <= pod["terminationGracePeriodSeconds"] <= grace + 60


def test_k8s__secrets_come_from_the_secret_and_exist_there(
    manifests: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    refs = list(_secret_refs(container))
    assert {ENV_KEYS, "ENGINE_TOKEN"} <= {name for name, _, _ in refs}
    secret = manifests["Secret"]
    held = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    for name, secret_name, key in refs:
        assert secret_name == secret["metadata"]["name"], name
        assert key in held, f"{name}: the Secret has no key {key!r}"


def test_k8s__variables_are_ones_the_worker_or_its_config_reads(
    manifests: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    from_config = {
        name
        for text in manifests["ConfigMap"]["data"].values()
        for name in re.findall(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}", text)
    }
    unknown = set(_env(container)) - _known_env_names() - from_config
    assert not unknown, f"variables nothing reads: {unknown}"


def test_k8s__tenant_config_is_mounted_where_the_worker_looks(
    manifests: dict[str, dict[str, Any]],
    pod: dict[str, Any],
    container: dict[str, Any],
) -> None:
    config_map = manifests["ConfigMap"]
    volume = next(v for v in pod["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert mount["mountPath"] == f"{_dockerfile_workdir()}/config/tenants"
    tenant_id = _env(container)["TENANT"]["value"]
    document = yaml.safe_load(config_map["data"][f"{tenant_id}.yaml"])
    tenant = load_tenant(document=document, name="the ConfigMap", decrypt=False)
    assert tenant.tenant_id == tenant_id and tenant.lookups


def test_k8s__runs_as_the_images_non_root_user(
    pod: dict[str, Any], container: dict[str, Any]
) -> None:
    user = re.search(r"^USER\s+(\S+)", _dockerfile(), re.MULTILINE)
    assert user and user.group(1) not in ("root", "0")
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == _dockerfile_uid() != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_k8s__memory_limit_leaves_room_over_the_request(container: dict[str, Any]) -> None:
    def mebibytes(value: str) -> float:
        number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", value).groups()  # type: ignore[union-attr]
        return float(number) * (1024 if unit == "Gi" else 1)

    resources = container["resources"]
    request = mebibytes(resources["requests"]["memory"])
    limit = mebibytes(resources["limits"]["memory"])
    assert 100 <= request < limit  # bench/README.md: ~75 MB at 100 in flight, ~115 at 1,000


def test_k8s__service_selects_the_pods_and_their_port(
    manifests: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    service = manifests.get("Service")
    if service is None:
        pytest.skip("no Service in the manifests")
    labels = manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    names = {p["name"] for p in container["ports"]}
    assert all(p["targetPort"] in names for p in service["spec"]["ports"])


# -- the README and the image ----------------------------------------------------------------


def _readme_env_table() -> set[str]:
    """The variables the first column of the README's Environment table names."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## Environment") :].split("\n## ", 1)[0]
    rows = (line.split("|")[1] for line in table.splitlines() if line.startswith("| `"))
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", row)}


def test_readme__environment_table_and_settings_name_the_same_variables() -> None:
    table = _readme_env_table()
    missing = sorted(_known_env_names() - table)
    assert not missing, f"README's Environment table lacks {missing}"
    unknown = sorted(table - _known_env_names())
    assert not unknown, f"README's Environment table names what the worker never reads: {unknown}"


def test_settings__the_code_reads_no_variable_outside_the_settings() -> None:
    unknown = sorted(_code_env_names() - _settings_env_names())
    assert not unknown, f"read outside worker.settings.Settings: {unknown}"


def test_image__the_audit_file_goes_to_the_state_volume_not_the_read_only_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = dict(re.findall(r"^\s+(WORKER_STATE_DIR)=(\S+)", _dockerfile(), re.MULTILINE))
    assert env.get("WORKER_STATE_DIR") == "/var/lib/worker"
    assert re.search(r"^VOLUME\s+/var/lib/worker$", _dockerfile(), re.MULTILINE)
    assert re.search(r"chown worker /var/lib/worker", _dockerfile())
    for name in ("QUEUE_DSN", "AUDIT_DSN", "ENGINE_URL"):
        monkeypatch.delenv(name, raising=False)
    tenant = load_tenant(ROOT / "config" / "tenants" / "demo.yaml")
    monkeypatch.setenv("WORKER_STATE_DIR", str(tmp_path))
    assert audit_target(tenant) == str(tmp_path / "demo.audit.db")
    monkeypatch.delenv("WORKER_STATE_DIR")
    assert audit_target(tenant) == str(ROOT / "config" / "tenants" / "demo.audit.db")


def test_image__local_leftovers_stay_out_of_the_build_context() -> None:
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for pattern in ("*.audit.db", "*.bak", ".venv", "tests"):
        assert pattern in ignored
