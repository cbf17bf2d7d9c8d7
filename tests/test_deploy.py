"""Static checks of deploy/ and .github/ (SPEC §12.4, §14.3, §14.6): nothing here starts a server or a container.

Kubernetes manifests against the Kubernetes schemas (strict), the kustomize build, the compose files against the
compose schema and the rules of §12.4, the workflows against the GitHub workflow schema, the Dockerfile through
hadolint. Values that the app defines (health route, port, settings names, shutdown grace) are read from the app,
so a change on either side that breaks the other fails here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import fields, is_dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any, get_type_hints

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from app.core.queue import SHUTDOWN_GRACE
from app.core.settings import PROJECT_ROOT, Settings
from app.main import build_routes
from app.system.controllers import SystemController

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
COMPOSE_NGINX = DEPLOY / "docker-compose.nginx.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
VENV_BIN = Path(sys.executable).parent

# An older minor still found on managed clusters, and the newest the validator knows: a field that was renamed,
# dropped or added in between fails one of them.
K8S_VERSIONS = ("1.30.0", latest_version())
# Files of deploy/k8s that are not applied: copied and filled in by the operator (placeholders only).
TEMPLATE_SUFFIX = ".template.yaml"
PLACEHOLDER = "CHANGE_ME"
APP_IMAGE = "litestar-base-app"


# ---- reading the files --------------------------------------------------------------------------------------------


class _ComposeLoader(yaml.SafeLoader):
    """YAML with compose's merge tags (``!reset``, ``!override``), read as their plain value."""


def _untagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    construct = {yaml.SequenceNode: loader.construct_sequence, yaml.MappingNode: loader.construct_mapping}
    return construct.get(type(node), loader.construct_scalar)(node)  # type: ignore[operator]


for _tag in ("!reset", "!override"):
    _ComposeLoader.add_constructor(_tag, _untagged)


def documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


@cache
def compose(path: Path = COMPOSE) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(path.read_text(), Loader=_ComposeLoader)  # noqa: S506 - a SafeLoader
    return loaded


def manifest_files() -> list[Path]:
    return sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")


@cache
def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of deploy/k8s (templates included) by ``(kind, name)``."""
    return {
        (document["kind"], document["metadata"]["name"]): document
        for path in manifest_files()
        for document in documents(path)
    }


def pod_templates() -> dict[str, dict[str, Any]]:
    """The pod template of each workload (web, worker, migrate) by its component label."""
    workloads = [obj for obj in k8s_objects().values() if obj["kind"] in {"Deployment", "Job"}]
    return {obj["metadata"]["labels"]["app.kubernetes.io/component"]: obj["spec"]["template"] for obj in workloads}


def container(component: str) -> dict[str, Any]:
    (only,) = pod_templates()[component]["spec"]["containers"]
    return dict(only)


def config_map() -> dict[str, str]:
    return dict(k8s_objects()["ConfigMap", "litestar-config"]["data"])


def secret_template(name: str) -> dict[str, str]:
    return dict(k8s_objects()["Secret", name]["stringData"])


def deployment_settings() -> Settings:
    """The settings every pod starts with: the ConfigMap, then the Secret (envFrom order), no src/.env."""
    return Settings.from_env({**config_map(), **secret_template("litestar-secrets")}, env_file=None)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of deploy/Dockerfile, continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [
        (line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1]) for line in joined.splitlines() if line.strip()
    ]


def dockerfile_value(instruction: str) -> str:
    """The last ``instruction`` of the Dockerfile (the runtime stage's), its ``${ARG}``s replaced by their defaults."""
    instructions = dockerfile_instructions()
    defaults = dict(args.split("=", 1) for name, args in instructions if name == "ARG" and "=" in args)
    value = [args for name, args in instructions if name == instruction][-1]
    return re.sub(r"\$\{(\w+)\}", lambda match: defaults[match[1]], value)


@cache
def settings_names() -> frozenset[str]:
    """Every environment variable the settings read (SPEC §9), from the field declarations of app.core.settings."""
    names = {"EMBEDDED"}
    for group in fields(Settings):
        group_type = get_type_hints(Settings)[group.name]
        if not is_dataclass(group_type):
            continue
        # Settings.from_env loads RedisSettings once per purpose: redis → CLIENT, redis_cache → CACHE, ...
        purpose = group.name.removeprefix("redis").strip("_").upper() or "CLIENT"
        for spec in fields(group_type):
            names.update(name.format(purpose=purpose) for name in spec.metadata["env"])
    return frozenset(names)


def health_path() -> str:
    """The path of ``SystemController.health`` in the app's route table."""
    production = Settings.from_env({"ENVIRONMENT": "production", "EMBEDDED": "false"}, env_file=None)
    paths = [
        route.path
        for router in build_routes(production)
        for route in getattr(router, "routes", [])
        for handler in route.route_handlers
        if getattr(handler.fn, "__func__", handler.fn) is SystemController.health.fn and "GET" in handler.http_methods
    ]
    assert len(paths) == 1, paths
    return paths[0]


def run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed tools with the repository's files as arguments
        [str(part) for part in command], capture_output=True, text=True, timeout=60, check=False
    )


def tool(name: str) -> Path:
    """A command-line tool installed with the test dependencies (the venv of this interpreter)."""
    found = VENV_BIN / name if (VENV_BIN / name).exists() else shutil.which(name)
    assert found, f"{name} is not installed: pdm install -G test"
    return Path(found)


def schema_errors(obj: dict[str, Any]) -> list[str]:
    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = "/".join(str(part) for part in error.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']} at {where} (k8s {version}): {error.message}")
    return errors


# ---- Kubernetes -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", manifest_files(), ids=lambda path: path.name)
def test_kubernetes_manifest_passes_the_strict_schema(path: Path) -> None:
    objects = documents(path)
    assert objects, f"{path.name} holds no object"
    assert [error for obj in objects for error in schema_errors(obj)] == []


def test_kustomization_lists_exactly_the_manifests_of_its_directory() -> None:
    kustomization = documents(K8S / "kustomization.yaml")[0]
    applied = {path.name for path in manifest_files() if not path.name.endswith(TEMPLATE_SUFFIX)}

    assert sorted(kustomization["resources"]) == sorted(applied)
    assert {image["name"] for image in kustomization["images"]} == {APP_IMAGE}


def test_kustomize_build_renders_valid_objects() -> None:
    binary = shutil.which("kustomize") or shutil.which("kubectl")
    if binary is None:
        pytest.skip("neither kustomize nor kubectl is installed")
    command = ["build"] if Path(binary).name == "kustomize" else ["kustomize"]
    result = run(binary, *command, K8S)
    assert result.returncode == 0, result.stderr

    built = [obj for obj in yaml.safe_load_all(result.stdout) if obj]
    assert [error for obj in built for error in schema_errors(obj)] == []
    applied = [obj for obj in k8s_objects().values() if obj["kind"] != "Secret"]
    assert sorted((obj["kind"], obj["metadata"]["name"]) for obj in built) == sorted(
        (obj["kind"], obj["metadata"]["name"]) for obj in applied
    )
    (image,) = documents(K8S / "kustomization.yaml")[0]["images"]
    templates = [obj["spec"]["template"] for obj in built if "template" in obj.get("spec", {})]
    images = {each["image"] for template in templates for each in template["spec"]["containers"]}
    assert images == {f"{image['newName']}:{image['newTag']}"}
    assert all(obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == APP_IMAGE for obj in built)


def test_secret_template_holds_placeholders_only() -> None:
    template = K8S / f"secret{TEMPLATE_SUFFIX}"
    secrets = documents(template)

    assert {secret["kind"] for secret in secrets} == {"Secret"}
    for secret in secrets:
        assert "data" not in secret, "base64 data hides what the template holds: use stringData"
        assert all(PLACEHOLDER in value for value in secret["stringData"].values()), secret["metadata"]["name"]
    assert not re.search(r"-----BEGIN [A-Z ]+-----\s*\n\s*[A-Za-z0-9+/=]{40,}", template.read_text())


def test_workloads_reference_the_secret_names_and_keys_of_the_template() -> None:
    for component, pod in pod_templates().items():
        env_secrets = {
            source["secretRef"]["name"] for source in container(component)["envFrom"] if "secretRef" in source
        }
        assert env_secrets == {"litestar-secrets"}, component
        for volume in pod["spec"]["volumes"]:
            if "secret" in volume:
                keys = {item["key"] for item in volume["secret"]["items"]}
                assert keys <= set(secret_template(volume["secret"]["secretName"])), component


def test_configured_settings_are_production_settings() -> None:
    settings = deployment_settings()

    assert settings.is_production
    assert settings.embedded is False
    assert settings.db.create_tables_on_start is False
    assert settings.server.bind_host(development=False) == "0.0.0.0"  # noqa: S104 - a container listens everywhere
    # Read-only root filesystem: no log file; the cluster collects stdout.
    assert settings.log.file_path is None


def test_prometheus_scrapes_the_exporters_that_start_with_it() -> None:
    services = compose()["services"]
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    static = {
        job["job_name"]: target.split(":")[0]
        for job in config["scrape_configs"]
        for group in job.get("static_configs", [])
        for target in group["targets"]
    }

    assert static == {"postgres": "postgres-exporter", "redis": "redis-exporter", "prometheus": "localhost"}
    for exporter in ("postgres-exporter", "redis-exporter"):
        assert set(services["prometheus"]["profiles"]) <= set(services[exporter]["profiles"]), exporter
    assert services["redis-exporter"]["environment"]["REDIS_ADDR"] == "redis://redis:6379"
    postgres = services["postgres-exporter"]
    assert postgres["env_file"] == "../src/.env"
    script = " ".join(postgres["entrypoint"])
    assert "db:5432/" in script
    assert 'DATA_SOURCE_PASS="$${POSTGRES_PASSWORD:?' in script, "the password from src/.env, never a default"


def test_manifests_and_compose_use_only_real_settings_names() -> None:
    used = {f"ConfigMap {name}" for name in config_map()}
    used |= {f"Secret {name}" for name in secret_template("litestar-secrets")}
    used |= {
        f"{component} env {var['name']}" for component in pod_templates() for var in container(component).get("env", [])
    }
    used |= {f"compose x-app {name}" for name in compose()["x-app"]["environment"]}

    assert sorted(entry for entry in used if entry.split()[-1] not in settings_names()) == []


def test_web_probes_and_service_use_the_health_route_and_the_app_port() -> None:
    web = container("web")
    (port,) = web["ports"]
    path = health_path()

    assert port["containerPort"] == deployment_settings().server.port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert web[probe]["httpGet"]["path"] == path, probe
        assert web[probe]["httpGet"]["port"] in {port["name"], port["containerPort"]}, probe
    (service_port,) = k8s_objects()["Service", "litestar-web"]["spec"]["ports"]
    assert service_port["targetPort"] in {port["name"], port["containerPort"]}


def test_web_pods_announce_the_metrics_endpoint_to_prometheus() -> None:
    metrics = pytest.importorskip("app.core.metrics", reason="GET /metrics is not part of the app yet")
    annotations = pod_templates()["web"]["metadata"]["annotations"]

    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == metrics.METRICS_PATH
    assert int(annotations["prometheus.io/port"]) == deployment_settings().server.port


def test_workloads_run_the_commands_of_the_spec() -> None:
    image_command = json.loads(dict(dockerfile_instructions())["CMD"])
    services = compose()["services"]

    assert image_command == ["python", "-m", "app"]
    assert "command" not in container("web")  # the image's CMD
    assert container("worker")["command"] == services["worker"]["command"] == ["litestar", "workers", "run"]
    migrate = ["litestar", "database", "upgrade", "--no-prompt"]
    assert container("migrate")["command"] == services["migrate"]["command"] == migrate
    assert {container(component)["image"] for component in pod_templates()} == {APP_IMAGE}


def test_workloads_run_as_the_image_user_on_a_read_only_root() -> None:
    uid = int(dockerfile_value("USER").split(":")[0])
    workdir = Path(dockerfile_value("WORKDIR"))
    jwt = deployment_settings().jwt
    key_dir = workdir / jwt.private_key_path.parent.relative_to(PROJECT_ROOT)
    key_files = {jwt.private_key_path.name, jwt.public_key_path.name}

    assert uid != 0
    for component, pod in pod_templates().items():
        spec, security = pod["spec"], container(component)["securityContext"]
        assert spec["securityContext"]["runAsNonRoot"] is True, component
        assert spec["securityContext"]["runAsUser"] == uid, component
        assert security["readOnlyRootFilesystem"] is True, component
        assert security["allowPrivilegeEscalation"] is False, component
        assert security["capabilities"]["drop"] == ["ALL"], component
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in container(component)["volumeMounts"]}
        # Python's tempfile and the workers' metrics files are the only writes (LOG_FILE_PATH is empty).
        assert "emptyDir" in mounts["/tmp"], component  # noqa: S108 - the pod's own emptyDir
        assert {item["path"] for item in mounts[str(key_dir)]["secret"]["items"]} == key_files, component


def test_shutdown_grace_outlasts_the_servers_own_grace() -> None:
    web, worker = pod_templates()["web"]["spec"], pod_templates()["worker"]["spec"]
    pre_stop = int(container("web")["lifecycle"]["preStop"]["exec"]["command"][-1])

    assert web["terminationGracePeriodSeconds"] > pre_stop + deployment_settings().server.timeout
    assert worker["terminationGracePeriodSeconds"] > SHUTDOWN_GRACE
    # Compose: the shipped src/.env.example against each container's time between SIGTERM and SIGKILL.
    example = Settings.from_env({}, env_file=ROOT / "src" / ".env.example")
    services = compose()["services"]
    assert _seconds(services["web"]["stop_grace_period"]) > example.server.timeout
    assert _seconds(services["worker"]["stop_grace_period"]) > SHUTDOWN_GRACE


def test_autoscaler_and_disruption_budget_target_the_web_pods() -> None:
    objects = k8s_objects()
    web = objects["Deployment", "litestar-web"]
    labels = web["spec"]["template"]["metadata"]["labels"]
    hpa, pdb = objects["HorizontalPodAutoscaler", "litestar-web"], objects["PodDisruptionBudget", "litestar-web"]

    assert "replicas" not in web["spec"], "the HPA owns the replica count"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "litestar-web"}
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objects["Service", "litestar-web"]["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    worker_labels = objects["Deployment", "litestar-worker"]["spec"]["template"]["metadata"]["labels"]
    assert not objects["Service", "litestar-web"]["spec"]["selector"].items() <= worker_labels.items()


# ---- docker compose ------------------------------------------------------------------------------------------------

# SPEC §12.4 / §14.3: the profiles that start each optional service.
PROFILES = {
    "pgadmin": {"pgadmin"},
    "nginx": {"nginx"},
    "prometheus": {"monitoring", "prometheus"},
    "postgres-exporter": {"monitoring", "prometheus"},
    "redis-exporter": {"monitoring", "prometheus"},
    "grafana": {"monitoring", "grafana"},
    "create_superuser": {"setup", "create_superuser"},
    "create_tier": {"setup", "create_tier"},
}
ALWAYS_ON = {"web", "worker", "db", "redis", "migrate"}


def _seconds(duration: str) -> int:
    """A compose duration such as ``1m30s``, in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([hms])", duration)
    assert "".join(number + unit for number, unit in parts) == duration, duration
    return sum(int(number) * units[unit] for number, unit in parts)


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_NGINX], ids=lambda path: path.name)
def test_compose_file_matches_the_compose_schema(path: Path) -> None:
    schema = json.loads(files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)

    errors = [f"{'/'.join(map(str, error.path))}: {error.message}" for error in validator.iter_errors(compose(path))]
    assert errors == []


def test_compose_defines_the_services_and_their_profiles() -> None:
    services = compose()["services"]

    assert {name for name, service in services.items() if not service.get("profiles")} == ALWAYS_ON
    assert {name: set(services[name].get("profiles", [])) for name in PROFILES} == PROFILES


def test_compose_checks_the_health_of_db_redis_and_web() -> None:
    services = compose()["services"]

    for name in ("db", "redis", "web"):
        check = services[name].get("healthcheck", {})
        assert check.get("test"), name
        assert not check.get("disable"), name
    assert health_path() in " ".join(services["web"]["healthcheck"]["test"])


def test_compose_starts_the_app_after_migrations_and_healthy_services() -> None:
    services = compose()["services"]
    ready = {"db": "service_healthy", "redis": "service_healthy", "migrate": "service_completed_successfully"}

    for name in ("web", "worker"):
        conditions = {dependency: spec["condition"] for dependency, spec in services[name]["depends_on"].items()}
        assert conditions == ready, name
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    for name in ("create_superuser", "create_tier"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name


def test_grafana_admin_credentials_come_from_the_env_file() -> None:
    grafana = compose()["services"]["grafana"]
    example = (ROOT / "src" / ".env.example").read_text()

    assert grafana["env_file"] == "../src/.env"
    assert not {"GF_SECURITY_ADMIN_USER", "GF_SECURITY_ADMIN_PASSWORD"} & set(grafana.get("environment", {}))
    script = " ".join(grafana["entrypoint"])
    # $$ is compose's escape for a literal $: the container's shell expands the value from the env file.
    assert 'GF_SECURITY_ADMIN_PASSWORD="$${GRAFANA_ADMIN_PASSWORD}"' in script
    assert "$${GRAFANA_ADMIN_PASSWORD:?" in script, "no silent fallback to Grafana's admin/admin"
    assert re.search(r"^GRAFANA_ADMIN_PASSWORD=", example, re.MULTILINE)


def test_docker_compose_accepts_the_files(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None or run(docker, "compose", "version").returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    # The files read ../src/.env, which a checkout does not have: a copy of deploy/ next to a src/.env of its own.
    shutil.copytree(DEPLOY, tmp_path / "deploy", ignore=shutil.ignore_patterns("k8s"))
    (tmp_path / "src").mkdir()
    shutil.copy(ROOT / "src" / ".env.example", tmp_path / "src" / ".env")
    profiles = [argument for profile in sorted(set().union(*PROFILES.values())) for argument in ("--profile", profile)]
    base = [docker, "compose", *profiles, "-f", tmp_path / "deploy" / COMPOSE.name]

    alone = run(*base, "config", "--quiet")
    behind_nginx = run(*base, "-f", tmp_path / "deploy" / COMPOSE_NGINX.name, "config", "--format", "json")

    assert alone.returncode == 0, alone.stderr
    assert behind_nginx.returncode == 0, behind_nginx.stderr
    assert not json.loads(behind_nginx.stdout)["services"]["web"].get("ports"), "behind nginx, web is not published"


# ---- GitHub workflows and the Dockerfile ----------------------------------------------------------------------------


def test_workflows_match_the_github_workflow_schema() -> None:
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *WORKFLOWS)

    assert result.returncode == 0, result.stdout + result.stderr
    assert {path.name for path in WORKFLOWS} == {"ci.yml", "release.yml"}


def test_ci_runs_the_test_suite_with_its_services_and_tools() -> None:
    test_job = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())["jobs"]["test"]
    scripts = "\n".join(step.get("run", "") for step in test_job["steps"])

    assert {"postgres", "redis"} <= set(test_job["services"])
    assert re.search(r"^task test\b", scripts, re.MULTILINE), "CI must run what `task test` runs"
    # The scale-out tests need nginx and the browser tests Chromium, as .ci/run installs them.
    assert "nginx" in scripts
    assert "/usr/bin/chromium" in scripts


def test_dockerfile_passes_hadolint() -> None:
    result = run(tool("hadolint"), "--no-color", "--failure-threshold", "style", DOCKERFILE)

    assert result.returncode == 0, result.stdout + result.stderr


def test_image_runs_unprivileged_compiled_and_health_checked() -> None:
    instructions = dockerfile_instructions()
    scripts = " ".join(args for name, args in instructions if name == "RUN")

    assert int(dockerfile_value("USER").split(":")[0]) != 0, "numeric and non-root, for runAsNonRoot"
    assert "compileall" in scripts
    assert health_path() in dockerfile_value("HEALTHCHECK")
    assert json.loads(dockerfile_value("CMD")) == ["python", "-m", "app"]
