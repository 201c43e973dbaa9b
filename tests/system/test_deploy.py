"""The files an operator deploys with (deploy/): the container image, the Kubernetes manifests and
the systemd units. No container runtime or cluster is here, so each is checked as far as this
machine can: every command they run is one `wardkey` accepts; the image's health check answers
for a living `serve` and fails without one; every rendered Kubernetes object is valid against
Kubernetes' own schemas (custom resources against their CRDs' fields) and has the shape the
issue asks for; the units pass `systemd-analyze verify` and its security review."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from app.cli import build_parser
from app.demo.slack_driver import serving
from app.policy_targets import load_policy, parse_policy
from app.store import Database
from app.web import WardKeyWSGI
from tests.conftest import HERE, IN_CI
from tests.kustomize_lite import render

ROOT = HERE.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUBERNETES / "overlays").iterdir() if p.is_dir())
CRD_SCHEMAS = HERE / "data" / "crd_schemas"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
Doc = dict[str, Any]


def accepted(argv: list[str]) -> None:
    """`wardkey ARGV` is a command the CLI knows, with arguments it takes."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`wardkey {shlex.join(argv)}` is refused by the CLI") from exc
    assert hasattr(args, "run"), f"`wardkey {shlex.join(argv)}` names a group, not a command"


# --------------------------------------------------------------------------- the image


def instructions(path: Path) -> list[tuple[int, str, str]]:
    """(stage, INSTRUCTION, arguments) for each instruction, continuations joined."""
    joined: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    found, stage = [], -1
    for line in joined:
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stage += 1
        found.append((stage, word.upper(), rest.strip()))
    return found


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[int, str, str]]:
    return instructions(DEPLOY / "docker" / "Dockerfile")


def final_stage(dockerfile: list[tuple[int, str, str]]) -> list[tuple[str, str]]:
    last = max(stage for stage, _, _ in dockerfile)
    return [(word, rest) for stage, word, rest in dockerfile if stage == last]


def test_the_image_builds_the_wheel_in_one_stage_and_installs_only_it_in_a_slim_other(
    dockerfile: list[tuple[int, str, str]],
) -> None:
    froms = [rest for _, word, rest in dockerfile if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build"), froms
    args = {
        rest.split("=")[0]: rest.split("=", 1)[1] for _, word, rest in dockerfile if word == "ARG"
    }
    assert "-slim" in args["PYTHON_IMAGE"], args
    build_runs = [rest for stage, word, rest in dockerfile if stage == 0 and word == "RUN"]
    assert any("python -m build --wheel" in run for run in build_runs), build_runs
    final = final_stage(dockerfile)
    copies = [rest for word, rest in final if word == "COPY"]
    # Nothing of the source tree: only the build stage's wheel.
    assert copies == ["--from=build /dist/ /tmp/dist/"], copies
    installs = " ".join(rest for word, rest in final if word == "RUN")
    assert "install --no-cache-dir /tmp/dist/*.whl" in installs
    assert "rm -rf /tmp/dist" in installs
    assert ".[dev]" not in installs and "-e " not in installs


def test_the_image_runs_as_an_unprivileged_user_on_a_read_only_friendly_root(
    dockerfile: list[tuple[int, str, str]],
) -> None:
    final = dict(final_stage(dockerfile))  # the last of each instruction
    user = final["USER"].split(":")
    assert all(part.isdigit() and int(part) >= 10000 for part in user), final["USER"]
    assert "PYTHONDONTWRITEBYTECODE=1" in final["ENV"]  # nothing written next to the code
    assert final["WORKDIR"] == "/var/lib/wardkey"
    assert "install -d -o 10001 -g 10001" in " ".join(
        rest for word, rest in final_stage(dockerfile) if word == "RUN"
    )


def test_the_image_commands_are_wardkey_commands(dockerfile: list[tuple[int, str, str]]) -> None:
    final = dict(final_stage(dockerfile))
    entrypoint, command = exec_form(final["ENTRYPOINT"]), exec_form(final["CMD"])
    assert entrypoint == ["tini", "--", "wardkey"]  # signals reach WardKey (SIGTERM, SIGHUP)
    accepted(command)
    # The roles the header shows and compose runs, from the same image.
    header = (DEPLOY / "docker" / "Dockerfile").read_text()
    shown = re.findall(r"wardkey:0\.1\.0 ([a-z][a-z -]*?)(?:\s{2,}|$)", header, re.M)
    assert sorted(shown) == ["db upgrade", "serve --no-scheduler", "worker"], shown
    for role in shown:
        accepted(role.split())
    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    commands = {
        name: service["command"]
        for name, service in compose["services"].items()
        if service.get("image", "").startswith("wardkey") or "<<" in service
    }
    assert commands == {
        "migrate": ["db", "upgrade"],
        "web": ["serve", "--no-scheduler"],
        "worker": ["worker"],
    }
    for argv in commands.values():
        accepted(argv)


@pytest.fixture
def healthy_serve(tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    db_path = tmp_path / "wardkey.db"
    shutil.copy(sqlite_template, db_path)
    app = WardKeyWSGI(bolt=None, db=Database(f"sqlite:///{db_path}"), signing_secret="x")  # type: ignore[arg-type]
    with serving(app) as url:
        yield url


def test_the_image_healthcheck_passes_for_a_living_serve_and_fails_without_one(
    dockerfile: list[tuple[int, str, str]], healthy_serve: str
) -> None:
    final = dict(final_stage(dockerfile))
    options, _, command = final["HEALTHCHECK"].partition("CMD ")
    assert "--timeout=" in options and "--interval=" in options
    argv = exec_form(command)
    assert argv[:3] == ["python", "-m", "app.healthcheck"]
    argv[0] = sys.executable
    port = healthy_serve.rsplit(":", 1)[1]
    env = {"PATH": "/usr/bin:/bin", "PORT": port}
    alive = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=10)
    assert alive.returncode == 0, alive.stderr
    assert f"http://127.0.0.1:{port}/healthz answered 200" in alive.stdout
    free = str(int(port) + 1 if int(port) < 65535 else int(port) - 1)
    gone = subprocess.run(
        argv, env={**env, "PORT": free}, cwd=ROOT, capture_output=True, text=True, timeout=10
    )
    assert gone.returncode == 1
    assert "did not answer" in gone.stderr


# ---------------------------------------------------------------------------- Kubernetes


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Doc]]:
    return request.param, render(KUBERNETES / "overlays" / request.param)


def by_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_kubectl_kustomize_renders_what_the_tests_check(
    rendered: tuple[str, list[Doc]],
) -> None:
    """The tests render the overlays themselves; kubectl's kustomize must agree, object for
    object, so what is checked is what `kubectl apply -k` would apply."""
    overlay, docs = rendered
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the manifests are checked as rendered here")
    out = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout

    def keyed(objects: list[Doc]) -> dict[tuple[str, str], str]:
        return {(d["kind"], d["metadata"]["name"]): json.dumps(d, sort_keys=True) for d in objects}

    theirs = keyed([d for d in yaml.safe_load_all(out) if d])
    ours = keyed(docs)
    assert sorted(theirs) == sorted(ours)
    for key in theirs:
        assert json.loads(theirs[key]) == json.loads(ours[key]), key


K8S_VERSIONS = ["1.30.0", "1.37.0"]


def test_every_rendered_object_is_valid_against_the_kubernetes_schemas(
    rendered: tuple[str, list[Doc]],
) -> None:
    try:
        import kubernetes_validate
        from kubernetes_validate.utils import SchemaNotFoundError
    except ImportError:
        reason = "kubernetes-validate is not installed (pip install -e '.[dev]')"
        if IN_CI:
            pytest.fail(f"CI must validate the manifests: {reason}", pytrace=False)
        pytest.skip(reason)
    overlay, docs = rendered
    custom = {
        (s["properties"]["apiVersion"]["const"], s["properties"]["kind"]["const"]): s
        for s in (json.loads(p.read_text()) for p in CRD_SCHEMAS.glob("*.json"))
    }
    validated: list[str] = []
    for version in K8S_VERSIONS:
        for doc in docs:
            name = f"{doc['kind']}/{doc['metadata']['name']}"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except SchemaNotFoundError:
                schema = custom.get((doc["apiVersion"], doc["kind"]))
                assert schema is not None, f"{name}: no schema for {doc['apiVersion']}"
                jsonschema.Draft202012Validator(schema).validate(doc)
            except jsonschema.ValidationError as exc:
                raise AssertionError(f"{overlay} {name} (Kubernetes {version}): {exc}") from None
            validated.append(f"{version}:{name}")
    assert len(validated) == len(docs) * len(K8S_VERSIONS)
    kinds = sorted({d["kind"] for d in docs})
    print(f"\n{overlay}: {len(docs)} objects valid on Kubernetes {K8S_VERSIONS}: {kinds}")


def pod_specs(docs: list[Doc]) -> dict[str, Doc]:
    return {
        f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] in ("Deployment", "Job")
    }


def selects(selector: Doc, labels: Doc) -> bool:
    wanted = selector.get("matchLabels", selector)
    return all(labels.get(k) == v for k, v in wanted.items())


def test_the_topology_is_two_web_pods_two_workers_and_a_migration(
    rendered: tuple[str, list[Doc]],
) -> None:
    _, docs = rendered
    deployments, jobs = by_kind(docs, "Deployment"), by_kind(docs, "Job")
    web, worker, migrate = (
        deployments["wardkey-web"],
        deployments["wardkey-worker"],
        jobs["wardkey-migrate"],
    )
    assert web["spec"]["replicas"] >= 2 and worker["spec"]["replicas"] >= 2
    (web_box,) = web["spec"]["template"]["spec"]["containers"]
    (worker_box,) = worker["spec"]["template"]["spec"]["containers"]
    (migrate_box,) = migrate["spec"]["template"]["spec"]["containers"]
    assert web_box["args"][:2] == ["serve", "--no-scheduler"]
    assert worker_box["args"] == ["worker"]
    assert migrate_box["args"] == ["db", "upgrade"]
    for box in (web_box, worker_box, migrate_box):
        accepted(box["args"])
        assert box["image"].startswith("registry.example.nhs.uk/wardkey:"), box["image"]
    # Probes: alive is /healthz, ready is /readyz, on the port serve listens on.
    port = web_box["args"][web_box["args"].index("--port") + 1]
    assert web_box["ports"] == [{"name": "http", "containerPort": int(port), "protocol": "TCP"}]
    assert web_box["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert web_box["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # The Service and the Ingress reach the web pods; Slack reaches /slack/events and approvers'
    # browsers /step-up (the step-up sign-in pages), nothing else.
    service = by_kind(docs, "Service")["wardkey-web"]
    assert selects(service["spec"]["selector"], web["spec"]["template"]["metadata"]["labels"])
    assert not selects(
        service["spec"]["selector"], worker["spec"]["template"]["metadata"]["labels"]
    )
    (ingress,) = by_kind(docs, "Ingress").values()
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert [(p["path"], p["pathType"]) for p in paths] == [
        ("/slack/events", "Exact"),
        ("/step-up", "Prefix"),
    ]
    for path in paths:
        backend = path["backend"]["service"]
        assert backend["name"] == "wardkey-web"
        assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert ingress["spec"]["tls"]
    # A drain leaves one of each running.
    budgets = by_kind(docs, "PodDisruptionBudget")
    for deployment in (web, worker):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        (budget,) = [b for b in budgets.values() if selects(b["spec"]["selector"], labels)]
        assert budget["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]


def test_every_pod_is_locked_down_and_sized(rendered: tuple[str, list[Doc]]) -> None:
    _, docs = rendered
    for name, pod in pod_specs(docs).items():
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        mounts_needed = {v["name"] for v in pod["volumes"]}
        for box in pod["containers"]:
            context = box["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert context["runAsNonRoot"] is True, name
            assert set(box["resources"]) == {"requests", "limits"}, name
            assert {"cpu", "memory"} <= set(box["resources"]["requests"]), name
            assert "memory" in box["resources"]["limits"], name
            mounts = {m["mountPath"]: m for m in box["volumeMounts"]}
            assert "/tmp" in mounts, f"{name}: a read-only root needs a writable /tmp"
            assert {m["name"] for m in mounts.values()} <= mounts_needed, name
            # Secrets come from Secrets, never as values in the manifests.
            for variable in box.get("env", []):
                if variable["name"] in ("DATABASE_URL", "WARDKEY_METRICS_TOKEN"):
                    assert "secretKeyRef" in variable["valueFrom"], (name, variable)
                    assert "value" not in variable, (name, variable)


def test_the_policy_is_a_configmap_every_process_reads_and_reloads(
    rendered: tuple[str, list[Doc]],
) -> None:
    overlay, docs = rendered
    policy_map = by_kind(docs, "ConfigMap")["wardkey-policy"]
    parse_policy(policy_map["data"]["policy.yaml"], f"{overlay}: policy.yaml")
    for name, pod in pod_specs(docs).items():
        if name.startswith("Job/"):
            continue  # migrations need no policy
        (box,) = pod["containers"]
        env = {v["name"]: v.get("value") for v in box["env"]}
        mount = next(m for m in box["volumeMounts"] if m["name"] == "policy")
        # A directory mount, not subPath: the kubelet swaps the file in place on an edit, and
        # each process's watcher reloads it (a subPath mount would never change).
        assert "subPath" not in mount and mount["readOnly"] is True, name
        assert env["WARDKEY_POLICY"] == f"{mount['mountPath']}/policy.yaml", name
        volume = next(v for v in pod["volumes"] if v["name"] == "policy")
        assert volume["configMap"]["name"] == "wardkey-policy", name
    base = (KUBERNETES / "base" / "policy.yaml").read_text()
    assert base == (ROOT / "manifests" / "policy.example.yaml").read_text()
    load_policy(KUBERNETES / "base" / "policy.yaml")


def test_network_policies_deny_by_default_and_let_slack_in_through_the_ingress(
    rendered: tuple[str, list[Doc]],
) -> None:
    _, docs = rendered
    policies = by_kind(docs, "NetworkPolicy")
    deny = policies["wardkey-default-deny"]["spec"]
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    for name in pod_specs(docs):
        labels = next(
            d["spec"]["template"]["metadata"]["labels"]
            for d in docs
            if f"{d['kind']}/{d['metadata']['name']}" == name
        )
        assert selects(deny["podSelector"], labels), name
    ingress = policies["wardkey-web-from-ingress"]["spec"]
    assert ingress["ingress"][0]["ports"] == [{"port": 3000, "protocol": "TCP"}]
    egress_ports = {
        (p["port"], p["protocol"])
        for rule in policies["wardkey-egress"]["spec"]["egress"]
        for p in rule["ports"]
    }
    assert {(53, "UDP"), (5432, "TCP"), (443, "TCP")} <= egress_ports


def test_secrets_are_referenced_by_name_and_the_database_is_external(
    rendered: tuple[str, list[Doc]],
) -> None:
    overlay, docs = rendered
    assert not by_kind(docs, "Secret"), "no Secret values in the manifests"
    referenced: set[tuple[str, str | None]] = set()
    for pod in pod_specs(docs).values():
        for box in pod["containers"]:
            for variable in box.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add((ref["name"], ref["key"]))
            for source in box.get("envFrom", []):
                referenced.add((source["secretRef"]["name"], None))
    (cluster,) = by_kind(docs, "Cluster").values()  # CloudNativePG: its app user's Secret
    database = (f"{cluster['metadata']['name']}-app", "uri")
    assert database in referenced
    assert cluster["spec"]["bootstrap"]["initdb"]["owner"] == "wardkey"
    assert {("wardkey-slack", None), ("wardkey-targets", None)} <= referenced
    monitors = by_kind(docs, "ServiceMonitor")
    if overlay == "production":
        (monitor,) = monitors.values()
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics" and endpoint["port"] == "http"
        credentials = endpoint["authorization"]["credentials"]
        # Prometheus sends the token the web pods compare with.
        assert (credentials["name"], credentials["key"]) in referenced
        assert (credentials["name"], credentials["key"]) == ("wardkey-metrics", "token")


def test_the_rollout_applies_the_migration_first() -> None:
    script = KUBERNETES / "rollout.sh"
    subprocess.run(["sh", "-n", str(script)], check=True)
    text = script.read_text()
    job = yaml.safe_load((KUBERNETES / "base" / "migrate-job.yaml").read_text())
    label = (
        f"app.kubernetes.io/component={job['metadata']['labels']['app.kubernetes.io/component']}"
    )
    order = [
        text.index(f"delete job {job['metadata']['name']}"),
        text.index(f'apply -k "$overlay" -l {label}'),
        text.index(f'--for=condition=complete --timeout="$timeout" job/{job["metadata"]["name"]}'),
        text.index('kubectl apply -k "$overlay"\n'),
    ]
    assert order == sorted(order)
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "migrate"
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PreSync"


# ------------------------------------------------------------------------------ systemd


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_the_units_are_hardened_and_run_wardkey_commands() -> None:
    names = {p.name for p in UNITS}
    assert names == {"wardkey-migrate.service", "wardkey-web.service", "wardkey-worker.service"}
    wanted = {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "StateDirectory": "wardkey",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "EnvironmentFile": "/etc/wardkey/wardkey.env",
    }
    commands = {}
    for path in UNITS:
        service = unit(path)["Service"]
        for key, value in wanted.items():
            assert service.get(key) == [value], (path.name, key, service.get(key))
        assert "@system-service" in service["SystemCallFilter"], path.name
        (start,) = service["ExecStart"]
        program, *argv = shlex.split(start)
        assert program == "/opt/wardkey/bin/wardkey", path.name
        accepted(argv)
        commands[path.name] = argv
    assert commands["wardkey-web.service"][:2] == ["serve", "--no-scheduler"]
    assert commands["wardkey-worker.service"] == ["worker"]
    assert commands["wardkey-migrate.service"] == ["db", "upgrade"]
    for name in ("wardkey-web.service", "wardkey-worker.service"):
        sections = unit(DEPLOY / "systemd" / name)
        assert "wardkey-migrate.service" in sections["Unit"]["Requires"][0]
        assert "wardkey-migrate.service" in sections["Unit"]["After"][0]
        # `systemctl reload` reloads the policy without a restart.
        assert sections["Service"]["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit(DEPLOY / "systemd" / "wardkey-migrate.service")["Service"]["Type"] == ["oneshot"]


@pytest.fixture
def units_here(tmp_path: Path) -> Path:
    """The units, with ExecStart pointed at this venv's `wardkey` (verify checks that the
    program exists; on a server it is /opt/wardkey/bin/wardkey)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        reason = "systemd-analyze is not installed (Debian: apt-get install systemd)"
        if IN_CI:
            pytest.fail(f"CI must verify the units: {reason}", pytrace=False)
        pytest.skip(reason)
    program = Path(sys.executable).parent / "wardkey"
    assert program.exists(), program
    for path in UNITS:
        text = path.read_text().replace("/opt/wardkey/bin/wardkey", str(program))
        (tmp_path / path.name).write_text(text)
    return tmp_path


def test_the_units_pass_systemd_analyze_verify(units_here: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(p.name for p in units_here.iterdir())],
        cwd=units_here,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # A bad value is only a warning (exit 0): any word from verify is a failure here.
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
        done.stdout + done.stderr
    )


def test_the_units_expose_little_by_systemds_own_review(units_here: Path) -> None:
    scores = {}
    for path in sorted(units_here.iterdir()):
        done = subprocess.run(
            ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", done.stdout)
        assert found, done.stdout + done.stderr
        scores[path.name] = float(found.group(1))
    print(f"\nsystemd-analyze security exposure (0 best, 10 worst): {scores}")
    # 10 is an unhardened service; under 2 is systemd's "OK".
    assert max(scores.values()) < 2.0, scores
