"""docker/: the compose stack and the two images, checked without a Docker engine.

- ``docker/compose.yaml`` parses, is interpolated the way Compose does it (a required variable that
  is unset or empty stops it) and validates against the Compose Specification's JSON schema. The
  schema is vendored unmodified as ``docker/compose-spec.schema.json``: file
  ``schema/compose-spec.json`` of github.com/compose-spec/compose-spec (Apache-2.0) at commit
  00655e2222608fa6eaecdf12ac5195889ca2244a (74,133 bytes). No installed package ships it.
- The stack's wiring: a health check on every service, ``depends_on`` conditions on existing healthy
  services, declared volumes, the worker's ``sentio`` pool, the database URLs and drivers, published
  ports on loopback, no credential committed, every variable documented in ``docker/.env.example``.
- The Dockerfiles, parsed here, against hadolint-style rules (the rule ids are hadolint's where one
  exists), then against the project's own install rules: torch==2.13.0 first, the lock before the
  sources, uv pinned as in scripts/setup.sh, writable state for the non-root user.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from .conftest import REPO

DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
SCHEMA = DOCKER / "compose-spec.schema.json"
ENV_EXAMPLE = DOCKER / ".env.example"
INIT_DIR = DOCKER / "postgres-init"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "cuda": DOCKER / "Dockerfile.cuda"}
SERVICES = {"postgres", "prefect-server", "worker", "mlflow"}
REQUIRED_SECRETS = {"POSTGRES_PASSWORD", "PREFECT_DB_PASSWORD", "MLFLOW_DB_PASSWORD"}
SECRET_NAME = re.compile(r"(?i)(passw(or)?d|secret|token|api_?key|private_?key|credential)")
TORCH_PIN = "torch==2.13.0"


# --------------------------------------------------------------------------------------------
# Compose: interpolation as the Compose Specification defines it
# --------------------------------------------------------------------------------------------

class InterpolationError(ValueError):
    pass


_DOLLAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.S)


def _interpolate_str(text: str, env: dict[str, str]) -> str:
    def one(m: re.Match) -> str:
        if m["escaped"]:
            return "$"
        if m["named"]:
            return env.get(m["named"], "")
        b = _BRACED.fullmatch(m["braced"])
        if b is None:
            raise InterpolationError(f"invalid interpolation ${{{m['braced']}}}")
        name, op, arg = b["name"], b["op"], b["arg"]
        value = env.get(name)
        missing = (not value) if op and op.startswith(":") else value is None
        if op is None:
            return value or ""
        if op.endswith("-"):
            return arg if missing else value
        if op.endswith("?"):
            if missing:
                raise InterpolationError(f"{name}: {arg}")
            return value
        return "" if missing else arg  # :+ and +

    return _DOLLAR.sub(one, text)


def interpolate(node, env: dict[str, str]):
    """Compose interpolates every string value (never a key) before it validates the model."""
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if isinstance(node, str):
        return _interpolate_str(node, env)
    return node


def _strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def referenced_variables(node) -> dict[str, set[str]]:
    """Every variable the file reads, with the operators it is read with ('' for plain)."""
    found: dict[str, set[str]] = {}
    for text in _strings(node):
        for m in _DOLLAR.finditer(text):
            if m["named"]:
                found.setdefault(m["named"], set()).add("")
            elif m["braced"] is not None:
                b = _BRACED.fullmatch(m["braced"])
                assert b, f"invalid interpolation ${{{m['braced']}}}"
                found.setdefault(b["name"], set()).add(b["op"] or "")
    return found


def read_env_example() -> dict[str, tuple[str, bool]]:
    """NAME -> (value, active); commented ``# NAME=value`` lines document optional settings."""
    entries = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.fullmatch(r"(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if m:
            entries[m[2]] = (m[3], m[1] is None)
    return entries


def user_env() -> dict[str, str]:
    """What a user has after `cp .env.example .env` and filling in the passwords."""
    env = {k: v for k, (v, active) in read_env_example().items() if active}
    env.update({k: f"test-only-{k.lower()}" for k in REQUIRED_SECRETS})
    return env


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw):
    return interpolate(raw, user_env())


def command_line(service: dict) -> str:
    parts = []
    for key in ("entrypoint", "command"):
        value = service.get(key) or []
        parts += [value] if isinstance(value, str) else value
    return " ".join(parts)


def health_url(service: dict) -> str:
    test = service["healthcheck"]["test"]
    m = re.search(r"https?://[^\s'\"]+", " ".join(test) if isinstance(test, list) else test)
    assert m, f"no URL in health check {test}"
    return m[0]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


# --------------------------------------------------------------------------------------------
# Compose: the specification, interpolation, variables
# --------------------------------------------------------------------------------------------

def test_vendored_schema_is_the_compose_specification():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["title"] == "Compose Specification" and len(SCHEMA.read_bytes()) == 74133
    assert {"services", "volumes", "networks", "secrets", "configs"} <= set(schema["properties"])


def test_compose_file_matches_the_compose_specification(raw, compose):
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    for doc in (raw, compose):  # as written, and as Compose sees it after interpolation
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_schema_validation_catches_mistakes(raw):
    """The check has teeth: a misspelt key or a bad depends_on condition is rejected."""
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    bad = json.loads(json.dumps(raw))
    bad["services"]["worker"]["healthcheck"]["intervall"] = "5s"
    assert not validator.is_valid(bad)
    bad = json.loads(json.dumps(raw))
    bad["services"]["worker"]["depends_on"]["mlflow"]["condition"] = "healthy"
    assert not validator.is_valid(bad)


def test_interpolation_follows_the_specification():
    env = {"SET": "v", "EMPTY": ""}
    assert _interpolate_str("$$SET ${SET} $SET ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d}", env) == "$SET v v d d "
    assert _interpolate_str("${SET:+alt}|${EMPTY:+alt}|${EMPTY+alt}", env) == "alt||alt"
    with pytest.raises(InterpolationError, match="say why"):
        _interpolate_str("${EMPTY:?say why}", env)
    assert _interpolate_str("${EMPTY?only when unset}", env) == ""


def test_compose_refuses_to_start_without_the_secrets(raw):
    variables = referenced_variables(raw)
    required = {name for name, ops in variables.items() if ":?" in ops}
    assert required == REQUIRED_SECRETS
    assert all(ops == {":?"} for name, ops in variables.items() if name in REQUIRED_SECRETS), \
        "a secret must always be read as a required variable, never with a default"
    for name in sorted(REQUIRED_SECRETS):
        env = user_env()
        env[name] = ""  # as left by `cp .env.example .env`
        with pytest.raises(InterpolationError, match=rf"{name}: set {name} in docker/\.env"):
            interpolate(raw, env)


def test_every_variable_is_documented_in_env_example(raw):
    documented = read_env_example()
    variables = referenced_variables(raw)
    assert set(variables) == set(documented), "compose.yaml and docker/.env.example disagree"
    for name in REQUIRED_SECRETS:
        value, active = documented[name]
        assert active and value == "", f"{name}: an uncommented, empty placeholder"
    # an optional setting documents the default compose.yaml applies
    for text in _strings(raw):
        for m in re.finditer(r"\$\{([A-Z_0-9]+):-([^}]*)\}", text):
            value, active = documented[m[1]]
            assert value == m[2], f"{m[1]}: .env.example says {value!r}, compose.yaml {m[2]!r}"


# --------------------------------------------------------------------------------------------
# Compose: the stack's wiring
# --------------------------------------------------------------------------------------------

def test_the_four_services(compose):
    assert set(compose["services"]) == SERVICES


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_health_check(compose, name):
    check = compose["services"][name].get("healthcheck")
    assert check and not check.get("disable"), f"{name} has no health check"
    assert isinstance(check["test"], list) and check["test"][0] in ("CMD", "CMD-SHELL")
    for key in ("interval", "timeout", "retries", "start_period"):
        assert key in check, f"{name}: healthcheck.{key}"


def test_depends_on_waits_for_healthy_services(compose):
    services = compose["services"]
    edges = {}
    for name, service in services.items():
        deps = service.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: use the long form with a condition"
        for target, spec in deps.items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert spec["condition"] == "service_healthy", f"{name} -> {target}"
            assert "healthcheck" in services[target]
        edges[name] = set(deps)
    assert edges == {
        "postgres": set(),
        "prefect-server": {"postgres"},
        "mlflow": {"postgres"},
        "worker": {"prefect-server", "mlflow"},
    }
    order, pending = [], dict(edges)
    while pending:  # a start order exists: no cycle
        ready = [n for n, d in pending.items() if d <= set(order)]
        assert ready, f"depends_on cycle among {sorted(pending)}"
        order += sorted(ready)
        for n in ready:
            del pending[n]


def _mounts(service: dict) -> list[tuple[str, str]]:
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
        else:
            source, target = v.get("source", ""), v["target"]
        out.append((source, target))
    return out


def test_volumes_are_declared_and_used(compose):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in compose["services"].items():
        for source, target in _mounts(service):
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"
    mounts = {name: dict((t, s) for s, t in _mounts(svc)) for name, svc in compose["services"].items()}
    assert mounts["postgres"]["/var/lib/postgresql/data"] == "postgres-data"
    assert mounts["postgres"]["/docker-entrypoint-initdb.d"] == "./postgres-init"
    assert mounts["mlflow"]["/mlartifacts"] == "mlflow-artifacts"
    assert mounts["worker"]["/app/.sentio"] == "sentio-state"
    assert mounts["worker"]["/app/trained_models"] == "sentio-models"


def test_python_services_build_the_cpu_image(compose):
    for name in ("prefect-server", "worker", "mlflow"):
        service = compose["services"][name]
        build = service["build"]
        context = (DOCKER / build["context"]).resolve()
        assert context == REPO, f"{name}: the build context is the repository root"
        assert (context / build["dockerfile"]).resolve() == DOCKERFILES["cpu"]
        assert service["image"] == "sentio:cpu"


def test_prefect_server(compose):
    server = compose["services"]["prefect-server"]
    assert command_line(server) == "prefect server start --host 0.0.0.0 --port 4200"
    env = environment(server)
    url = urlsplit(env["PREFECT_API_DATABASE_CONNECTION_URL"])
    assert (url.scheme, url.hostname, url.port, url.path) == ("postgresql+asyncpg", "postgres", 5432, "/prefect")
    assert (url.username, url.password) == ("prefect", user_env()["PREFECT_DB_PASSWORD"])
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert env["PREFECT_UI_API_URL"] == "http://localhost:4200/api"
    assert health_url(server) == "http://127.0.0.1:4200/api/health"
    assert "127.0.0.1:4200:4200" in server["ports"]
    # the UI bundle is rewritten at start-up: it needs a folder the image's user owns
    assert any(env["PREFECT_UI_STATIC_DIRECTORY"].startswith(d + "/") for d in writable_dirs(DOCKERFILES["cpu"]))


def test_worker(compose):
    worker = compose["services"]["worker"]
    script = command_line(worker)
    assert worker["entrypoint"] == ["sh", "-c"]
    assert re.search(r"prefect work-pool inspect sentio\b.*\|\|\s*prefect work-pool create sentio --type process", script)
    assert re.search(r"exec prefect worker start --pool sentio --type process --with-healthcheck$", script)
    env = environment(worker)
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true"
    assert env["SENTIO_HOME"] == workdir(DOCKERFILES["cpu"])
    assert health_url(worker) == f"http://127.0.0.1:{env['PREFECT_WORKER_WEBSERVER_PORT']}/health"
    assert worker["stop_signal"] == "SIGINT"  # a worker whose server is gone may ignore SIGTERM
    assert "ports" not in worker


def _allowed(patterns: list[str], host: str) -> bool:
    """MLflow's Host-header check (mlflow.server.security_utils.is_allowed_host_header)."""
    return "*" in patterns or any(fnmatch.fnmatch(host, p) if "*" in p else host == p for p in patterns)


def test_mlflow(compose):
    mlflow = compose["services"]["mlflow"]
    args = command_line(mlflow).split()
    assert args[:2] == ["mlflow", "server"]
    for flag, value in (("--host", "0.0.0.0"), ("--port", "5000"), ("--artifacts-destination", "/mlartifacts")):
        assert args[args.index(flag) + 1] == value
    assert "--serve-artifacts" in args
    env = environment(mlflow)
    assert "--backend-store-uri" not in args, "the URI (with its password) is passed in the environment"
    url = urlsplit(env["MLFLOW_BACKEND_STORE_URI"])
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3: name the driver the images install
    assert (url.scheme, url.hostname, url.port, url.path) == ("postgresql+psycopg2", "postgres", 5432, "/mlflow")
    assert (url.username, url.password) == ("mlflow", user_env()["MLFLOW_DB_PASSWORD"])
    for path in DOCKERFILES.values():
        assert re.search(r"\bpsycopg2-binary==\d+\.\d+\.\d+\b", path.read_text()), path.name
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert health_url(mlflow) == "http://127.0.0.1:5000/health"
    assert "127.0.0.1:5000:5000" in mlflow["ports"]
    # the server answers the Host headers it is called with: by the worker and by the browser
    allowed = [h.strip() for h in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")]
    worker_uri = urlsplit(environment(compose["services"]["worker"])["MLFLOW_TRACKING_URI"])
    for host in (worker_uri.netloc, "localhost:5000", "127.0.0.1:5000"):
        assert _allowed(allowed, host), host
    assert not _allowed(allowed, "evil.example:5000")


def test_ports_are_published_on_loopback_only(compose):
    assert "ports" not in compose["services"]["postgres"]
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: {port}"


def test_postgres_and_its_init_script(compose):
    pg = compose["services"]["postgres"]
    assert re.fullmatch(r"postgres:16(\.\d+)?(-\w+)?", pg["image"])
    assert "pg_isready -h 127.0.0.1" in " ".join(pg["healthcheck"]["test"])  # not the init-time socket
    env = environment(pg)
    assert {"POSTGRES_PASSWORD", "PREFECT_DB_PASSWORD", "MLFLOW_DB_PASSWORD"} <= set(env)
    scripts = sorted(INIT_DIR.glob("*.sh"))
    assert scripts, "docker/postgres-init/ has no init script"
    sql = "\n".join(p.read_text() for p in scripts)
    for role, var in (("prefect", "PREFECT_DB_PASSWORD"), ("mlflow", "MLFLOW_DB_PASSWORD")):
        assert re.search(rf"CREATE ROLE {role} LOGIN PASSWORD :'\w+'", sql), role
        assert re.search(rf"CREATE DATABASE {role} OWNER {role};", sql), role
        assert f'"${var}"' in sql and f"${{{var}:?" in sql, f"{var}: read from the environment, required"
    assert "set -eu" in sql and "ON_ERROR_STOP=1" in sql


# --------------------------------------------------------------------------------------------
# No credentials in the repository
# --------------------------------------------------------------------------------------------

_URL_USERINFO = re.compile(r"[a-z][a-z0-9+.-]*://([^/\s:@]+):([^@\s]+)@", re.I)
_SECRET_ASSIGNMENT = re.compile(
    r"(?im)^[ \t#-]*(?:ENV[ \t]+|ARG[ \t]+)?(\w*(?:passw(?:or)?d|secret|token|api_?key)\w*)[ \t]*[:=][ \t]*(.*)$")


def _secret_findings(text: str) -> list[str]:
    out = []
    for m in _URL_USERINFO.finditer(text):
        if not re.fullmatch(r"\$\{[A-Z_0-9]+:\?[^}]*\}", m[2]):
            out.append(f"password in a URL: {m[0]}")
    for m in _SECRET_ASSIGNMENT.finditer(text):
        value = m[2].strip().strip("'\"")
        if value and not re.fullmatch(r"\$\{[A-Z_0-9]+:\?[^}]*\}", value):
            out.append(f"{m[1]} = {value}")
    return out


def test_secret_scan_has_teeth():
    assert _secret_findings("url: postgresql://u:hunter2@db/x")
    assert _secret_findings("      POSTGRES_PASSWORD: hunter2")
    assert _secret_findings("ENV API_TOKEN=abc")
    assert not _secret_findings("url: postgresql://u:${P:?set P}@db/x\n  DB_PASSWORD: ${P:?set P}\nX_PASSWORD=")


def test_no_credentials_are_committed():
    files = [COMPOSE, ENV_EXAMPLE, *DOCKERFILES.values()]
    findings = {p.name: _secret_findings(p.read_text()) for p in files}
    assert not any(findings.values()), findings
    for path in INIT_DIR.iterdir():  # SQL takes its passwords only from psql variables
        text = path.read_text()
        assert not re.search(r"(?i)PASSWORD\s+'", text), path.name
        assert not _URL_USERINFO.search(text), path.name
    for path in DOCKERFILES.values():  # BuildKit's SecretsUsedInArgOrEnv
        for ins in parse_dockerfile(path.read_text()):
            if ins.cmd in ("ARG", "ENV"):
                for name in _env_pairs(ins.args) if ins.cmd == "ENV" else [ins.args.split("=")[0]]:
                    assert not SECRET_NAME.search(name), f"{path.name}: {ins.cmd} {name}"


def test_docker_env_is_never_committed():
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout")
    ignored = subprocess.run([git, "check-ignore", "-q", "docker/.env"], cwd=REPO)
    assert ignored.returncode == 0, "git must ignore docker/.env"
    tracked = subprocess.run([git, "ls-files", "--", "docker/.env"], cwd=REPO, capture_output=True, text=True)
    assert tracked.stdout == ""
    assert dockerignore_excludes("docker/.env") and dockerignore_excludes(".env")


# --------------------------------------------------------------------------------------------
# Dockerfiles: a small parser and hadolint-style rules
# --------------------------------------------------------------------------------------------

@dataclass
class Instruction:
    cmd: str
    args: str
    line: int
    comment: str  # the comment block right above it


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with line continuations joined; comments inside a continuation are dropped."""
    out, comment, buf, start = [], [], "", 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            if not buf:
                comment.append(stripped.lstrip("#").strip())
            continue
        if not stripped:
            if not buf:
                comment = []
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        cmd, _, args = buf.partition(" ")
        out.append(Instruction(cmd.upper(), args.strip(), start, " ".join(comment)))
        buf, comment = "", []
    assert not buf, "the file ends inside a line continuation"
    return out


def _env_pairs(args: str) -> dict[str, str]:
    tokens = shlex.split(args)
    if tokens and "=" not in tokens[0]:  # legacy `ENV KEY value`
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(t.split("=", 1) for t in tokens)


def _commands(run: str) -> list[list[str]]:
    """A RUN's shell text as its simple commands (split on && || ; |)."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars="&|;")
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    return [c for c in commands if c]


_PIP_OPTIONS_WITH_VALUE = {"-r", "--requirement", "-c", "--constraint", "-i", "--index-url", "--extra-index-url",
                           "-f", "--find-links", "--python", "-p", "--index", "--default-index", "-e", "--editable"}


def _pip_packages(command: list[str]) -> list[str] | None:
    """Package arguments of `pip install` / `uv pip install`, or None for another command."""
    if "install" not in command:
        return None
    head = command[: command.index("install")]
    if not (head[-1:] == ["pip"] or head[-2:] == ["-m", "pip"] or head[-2:] == ["uv", "pip"] or head == ["pip3"]):
        return None
    packages, tokens = [], iter(command[command.index("install") + 1:])
    for token in tokens:
        if token in _PIP_OPTIONS_WITH_VALUE:
            next(tokens, None)
        elif not token.startswith("-"):
            packages.append(token)
    return packages


def _image_is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name = image.rsplit("/", 1)[-1]
    return ":" in name and name.split(":", 1)[1] not in ("", "latest")


def lint_dockerfile(text: str) -> list[str]:
    """hadolint-style findings as 'RULE: message'; an empty list is a clean file."""
    found = []
    ins = parse_dockerfile(text)
    env = {}
    for i in ins:
        if i.cmd == "ENV":
            env.update(_env_pairs(i.args))
    users = [i for i in ins if i.cmd == "USER"]
    for i in ins:
        if i.cmd == "FROM":
            image = i.args.split()[0]
            if not _image_is_pinned(image):
                found.append(f"DL3006/DL3007: unpinned base image {image} (line {i.line})")
        elif i.cmd == "COPY":
            m = re.search(r"--from=(\S+)", i.args)
            if m and ("/" in m[1] or ":" in m[1]) and not _image_is_pinned(m[1]):
                found.append(f"DL3022: unpinned image in COPY --from={m[1]}")
        elif i.cmd == "ADD":
            found.append(f"DL3020: ADD instead of COPY (line {i.line})")
        elif i.cmd == "MAINTAINER":
            found.append("DL4000: MAINTAINER is deprecated")
        elif i.cmd == "WORKDIR" and not i.args.startswith(("/", "$")):
            found.append(f"DL3000: relative WORKDIR {i.args}")
        elif i.cmd in ("CMD", "ENTRYPOINT"):
            try:
                ok = isinstance(json.loads(i.args), list)
            except ValueError:
                ok = False
            if not ok:
                found.append(f"DL3025: {i.cmd} in shell form (line {i.line})")
        elif i.cmd == "RUN":
            commands = _commands(i.args)
            words = [w for c in commands for w in c]
            for c in commands:
                if c[0] == "cd":
                    found.append(f"DL3003: cd in RUN, use WORKDIR (line {i.line})")
                if c[0] == "sudo":
                    found.append(f"DL3004: sudo (line {i.line})")
                if c[:2] == ["apt-get", "install"] or c[:2] == ["apt", "install"]:
                    if "-y" not in c and "--yes" not in c:
                        found.append(f"DL3014: apt-get install without -y (line {i.line})")
                    if "--no-install-recommends" not in c:
                        found.append(f"DL3015: apt-get install without --no-install-recommends (line {i.line})")
                    if "/var/lib/apt/lists/*" not in words:
                        found.append(f"DL3009: apt lists not removed in the same RUN (line {i.line})")
                    if "update" not in words:
                        found.append(f"DL3009: apt-get install without apt-get update in the same RUN (line {i.line})")
                if c[:2] in (["apt-get", "upgrade"], ["apt-get", "dist-upgrade"]):
                    found.append(f"DL3005: apt-get {c[1]} (line {i.line})")
                packages = _pip_packages(c)
                if packages is None:
                    continue
                for p in packages:
                    if not (p == "." or p.startswith(("./", "/")) or re.search(r"==[^=]", p)):
                        found.append(f"DL3013: unpinned package {p} (line {i.line})")
                is_uv = c[:2] == ["uv", "pip"]
                if not is_uv and "--no-cache-dir" not in c and env.get("PIP_NO_CACHE_DIR") not in ("1", "true"):
                    found.append(f"DL3042: pip install without --no-cache-dir (line {i.line})")
                if is_uv and "--no-cache" not in c and env.get("UV_NO_CACHE") not in ("1", "true"):
                    found.append(f"DL3042: uv pip install without --no-cache (line {i.line})")
    for cmd in ("CMD", "ENTRYPOINT", "HEALTHCHECK"):
        if sum(i.cmd == cmd for i in ins) > 1:
            found.append(f"DL4003/DL4004: more than one {cmd}")
    if not users or users[-1].args.split(":")[0] in ("root", "0"):
        found.append("DL3002: the last USER is root (or there is none)")
    checks = [i for i in ins if i.cmd == "HEALTHCHECK"]
    if not checks:
        found.append("HEALTHCHECK: none declared")
    elif checks[0].args.strip().upper() == "NONE" and not checks[0].comment:
        found.append("HEALTHCHECK: NONE without a comment saying why")
    return found


BAD_DOCKERFILES = {
    "DL3006/DL3007": "FROM python:latest\nUSER 1000\nHEALTHCHECK NONE\n",
    "DL3022": "FROM python:3.11-slim\nCOPY --from=ghcr.io/astral-sh/uv /uv /bin/\nUSER 1000\nHEALTHCHECK CMD true\n",
    "DL3002": "FROM python:3.11-slim\nUSER root\nHEALTHCHECK CMD true\n",
    "DL3015": "FROM debian:12\nRUN apt-get update && apt-get install -y curl && rm -rf /var/lib/apt/lists/*\nUSER 1\nHEALTHCHECK CMD true\n",
    "DL3009": "FROM debian:12\nRUN apt-get update \\\n && apt-get install -y --no-install-recommends curl\nUSER 1\nHEALTHCHECK CMD true\n",
    "DL3013": "FROM python:3.11-slim\nRUN pip install --no-cache-dir torch\nUSER 1\nHEALTHCHECK CMD true\n",
    "DL3042": "FROM python:3.11-slim\nRUN pip install uv==0.9.5\nUSER 1\nHEALTHCHECK CMD true\n",
    "DL3025": "FROM python:3.11-slim\nUSER 1\nHEALTHCHECK CMD true\nCMD sentio run\n",
    "DL3003": "FROM python:3.11-slim\nRUN cd /app && make\nUSER 1\nHEALTHCHECK CMD true\n",
    "HEALTHCHECK": "FROM python:3.11-slim\nUSER 1\nHEALTHCHECK NONE\n",
}


@pytest.mark.parametrize("rule", sorted(BAD_DOCKERFILES))
def test_the_linter_catches(rule):
    findings = lint_dockerfile(BAD_DOCKERFILES[rule])
    assert any(f.startswith(rule + ":") for f in findings), findings


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_is_lint_clean(kind):
    assert lint_dockerfile(DOCKERFILES[kind].read_text()) == []


# --------------------------------------------------------------------------------------------
# Dockerfiles: the project's install rules
# --------------------------------------------------------------------------------------------

def instructions(path: Path) -> list[Instruction]:
    return parse_dockerfile(path.read_text())


def args_defaults(path: Path) -> dict[str, str]:
    return dict(i.args.split("=", 1) for i in instructions(path) if i.cmd == "ARG" and "=" in i.args)


def env_of(path: Path) -> dict[str, str]:
    env = {}
    for i in instructions(path):
        if i.cmd == "ENV":
            env.update(_env_pairs(i.args))
    return env


def workdir(path: Path) -> str:
    return [i.args for i in instructions(path) if i.cmd == "WORKDIR"][-1]


def writable_dirs(path: Path) -> set[str]:
    """Folders a RUN gives to the image's final user (chown to its uid)."""
    user = [i.args for i in instructions(path) if i.cmd == "USER"][-1]
    dirs = set()
    for i in instructions(path):
        if i.cmd == "RUN":
            for c in _commands(i.args):
                if c[0] == "chown":
                    owner_at = next(k for k, t in enumerate(c[1:], 1) if not t.startswith("-"))
                    if c[owner_at] == user:
                        dirs |= set(c[owner_at + 1:])
    return dirs


def _run_index(ins: list[Instruction], predicate) -> list[int]:
    return [k for k, i in enumerate(ins) if i.cmd == "RUN" and predicate(i.args)]


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_torch_is_pinned_and_installed_before_the_lock(kind):
    path = DOCKERFILES[kind]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert TORCH_PIN in pyproject["project"]["dependencies"]
    ins = instructions(path)
    torch_specs = [p for i in ins if i.cmd == "RUN" for c in _commands(i.args)
                   for p in (_pip_packages(c) or []) if re.match(r"torch\b", p)]
    assert torch_specs == [TORCH_PIN]
    torch_run = _run_index(ins, lambda a: TORCH_PIN in a)
    lock_run = _run_index(ins, lambda a: re.search(r"-r requirements\.lock\b", a))
    assert len(torch_run) == 1 and len(lock_run) == 1 and torch_run[0] < lock_run[0]
    assert "torch" not in {line.split("==")[0] for line in (REPO / "requirements.lock").read_text().split()}
    # `uv pip sync` would remove the torch build installed first (torch is not in the lock)
    assert "pip sync" not in path.read_text()
    index = args_defaults(path).get("TORCH_INDEX_URL", "")
    torch_args = ins[torch_run[0]].args.replace("${TORCH_INDEX_URL}", index).replace('"', "")
    url = re.search(r"--extra-index-url (\S+) torch==", torch_args)[1]
    if kind == "cpu":
        assert url == "https://download.pytorch.org/whl/cpu"
    else:
        assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu1[23]\d", url)


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_the_lock_is_copied_and_installed_before_the_sources(kind):
    ins = instructions(DOCKERFILES[kind])
    copies = [(k, i.args.split()[:-1]) for k, i in enumerate(ins) if i.cmd == "COPY" and "--from" not in i.args]
    lock_copy = next(k for k, sources in copies if "requirements.lock" in sources)
    lock_run = _run_index(ins, lambda a: "-r requirements.lock" in a)[0]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {Path(s).name: k for k, sources in copies for s in sources}
    for name in packages | {"configs", "data", "pyproject.toml"}:
        assert name in copied, f"{name} is not copied into the image"
        assert lock_copy < lock_run < copied[name], f"{name} is copied before the locked install"
    for sources in (s for _, s in copies):
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert not dockerignore_excludes(source), f"COPY {source}: excluded by .dockerignore"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_uv_is_pinned_like_setup_sh(kind):
    pin = re.search(r"uv==(\d+\.\d+\.\d+)", (REPO / "scripts" / "setup.sh").read_text())[1]
    text = DOCKERFILES[kind].read_text()
    assert f"uv=={pin}" in text or f"ghcr.io/astral-sh/uv:{pin} " in text
    assert env_of(DOCKERFILES[kind]).get("UV_COMPILE_BYTECODE") == "1"  # imports 2-3x faster


def test_base_images():
    cpu = [i.args for i in instructions(DOCKERFILES["cpu"]) if i.cmd == "FROM"]
    cuda = [i.args for i in instructions(DOCKERFILES["cuda"]) if i.cmd == "FROM"]
    assert len(cpu) == 1 and re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", cpu[0])
    assert len(cuda) == 1 and re.fullmatch(r"nvidia/cuda:1[23]\.\d+\.\d+-runtime-ubuntu2[24]\.04", cuda[0])
    assert re.fullmatch(r"3\.11\.\d+", args_defaults(DOCKERFILES["cuda"])["PYTHON_VERSION"])


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_non_root_user_owns_the_state_folders(kind, compose):
    path = DOCKERFILES[kind]
    env, dirs = env_of(path), writable_dirs(path)
    uid = re.search(r"useradd .*--uid (\d+)", path.read_text())[1]
    assert [i.args for i in instructions(path) if i.cmd == "USER"][-1] == f"{uid}:{uid}"

    def writable(p: str) -> bool:
        return any(p == d or p.startswith(d + "/") for d in dirs)

    assert writable(env["PREFECT_HOME"])
    assert env["MLFLOW_TRACKING_URI"].startswith("sqlite:////") and writable(env["MLFLOW_TRACKING_URI"][10:])
    assert env["SENTIO_HOME"] == workdir(path) == "/app"
    for service in compose["services"].values():  # named volumes start as copies of these folders
        if service.get("image") == "sentio:cpu":
            for source, target in _mounts(service):
                assert writable(target), f"{target} is mounted but not owned by the image's user"


def test_cpu_and_cuda_images_agree():
    cpu, cuda = env_of(DOCKERFILES["cpu"]), env_of(DOCKERFILES["cuda"])
    for key in ("PREFECT_HOME", "MLFLOW_TRACKING_URI", "SENTIO_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED"):
        assert cpu[key] == cuda[key], key
    tail = lambda p: [(i.cmd, i.args) for i in instructions(p) if i.cmd in ("COPY", "USER", "ENTRYPOINT", "CMD")
                      and "--from" not in i.args]
    assert tail(DOCKERFILES["cpu"]) == tail(DOCKERFILES["cuda"])


# --------------------------------------------------------------------------------------------
# .dockerignore
# --------------------------------------------------------------------------------------------

def _dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a match covers a folder's contents."""
    excluded = False
    for pattern in _dockerignore_patterns():
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        candidates = {pattern, pattern[3:]} if pattern.startswith("**/") else {pattern}
        parts = path.strip("/").split("/")
        prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, c) for c in candidates for p in prefixes) or (
                pattern.startswith("**/") and any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts)):
            excluded = not negate
    return excluded


@pytest.mark.parametrize("path", [".venv", ".sentio", "mlruns", "mlflow.db", "mlartifacts", "trained_models",
                                  ".git", "docker/.env", "sentio/__pycache__/cli.cpython-311.pyc"])
def test_dockerignore_keeps_local_state_out_of_the_build_context(path):
    assert dockerignore_excludes(path)
