"""deploy/: the Dockerfile and the Kustomize overlays, checked against
Kubernetes' schemas and against the real hfms binary.

For each overlay, `kubectl kustomize` renders it (a warning fails); every
object is validated by kubernetes-validate in strict mode (an unknown field
fails) for the oldest Kubernetes the manifests claim and the newest schemas
it bundles; the ServiceMonitor (a CRD it does not know) is checked field by
field. The container's environment goes through `hfms serve --print-config`,
so every HFMS_* value must parse and the settings the manifests rely on
(port, data dir, shutdown grace, database, Redis) are read back as hfms sees
them. Finally the sqlite overlay's container runs for real: its probes, the
ServiceMonitor's authenticated scrape, the autoscaler's metric, the image's
HEALTHCHECK and a SIGTERM within the termination grace.

kubectl comes from Debian's kubernetes-client (`scripts/install-deps.sh
kubectl`, part of `make deps`); without it these tests fail.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from conftest import LISTEN_TIMEOUT_S, LISTENING, READY_TIMEOUT_S, REPO

DEPLOY = REPO / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
README = DEPLOY / "README.md"
DOCKERFILE = DEPLOY / "Dockerfile"
OVERLAYS = ["sqlite", "replicated"]
# The oldest Kubernetes the manifests are written for, and the newest
# schemas kubernetes-validate bundles.
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
# Kinds the cluster's API server does not know without an operator's CRDs.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
# crates/hfms/src/serve.rs: once the grace is over hfms cancels what still
# runs and exits at most this much later.
EXIT_AFTER_CANCEL_S = 5


# ---------------------------------------------------------------- helpers


def hfms_bin() -> Path:
    # Absolute: some runs below use another working directory.
    binary = Path(os.environ.get("HFMS_BIN", REPO / "target" / "fast" / "hfms")).resolve()
    if not binary.is_file():
        pytest.fail(f"hfms binary not found at {binary} (build it, or set HFMS_BIN)")
    return binary


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl not found on PATH: install it with `scripts/install-deps.sh kubectl` (make deps)")
    return path


@functools.cache
def rendered_text(overlay: str) -> str:
    proc = subprocess.run(
        [kubectl(), "kustomize", str(KUSTOMIZE / "overlays" / overlay)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"kubectl kustomize {overlay} failed:\n{proc.stderr}"
    assert proc.stderr.strip() == "", f"kubectl kustomize {overlay} warned:\n{proc.stderr}"
    return proc.stdout


def render(overlay: str) -> list[dict]:
    """The overlay's objects (a fresh copy: tests may not share edits)."""
    docs = [d for d in yaml.safe_load_all(rendered_text(overlay)) if d is not None]
    assert docs, f"{overlay} renders nothing"
    return docs


def objects(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in objects(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def deployment(docs: list[dict]) -> tuple[dict, dict, dict]:
    """The Deployment, its pod spec and its one container."""
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1, "one container per pod: hfms"
    return dep, pod, pod["containers"][0]


@functools.cache
def serve_help() -> str:
    proc = subprocess.run([str(hfms_bin()), "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def help_env_names() -> set[str]:
    # clap prints `[env: HFMS_PORT=]`, or `[env: HFMS_ADMIN_KEY]` for hidden values.
    names = set(re.findall(r"\[env: (HFMS_[A-Z0-9_]+)[=\]]", serve_help()))
    assert len(names) > 20, f"`hfms serve --help` lists too few variables: {sorted(names)}"
    return names


def help_flags() -> set[str]:
    return set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9][a-z0-9-]*)", serve_help(), re.M))


def flags_in(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


def readme_text() -> str:
    return README.read_text()


def readme_objects() -> list[dict]:
    """Kubernetes objects shown in deploy/README.md's ```yaml blocks."""
    out = []
    for m in re.finditer(r"^( *)```yaml\n(.*?)^\1```", readme_text(), re.S | re.M):
        body = "\n".join(line[len(m.group(1)):] for line in m.group(2).splitlines())
        out += [d for d in yaml.safe_load_all(body) if isinstance(d, dict) and "apiVersion" in d and "kind" in d]
    return out


def operator_secrets() -> dict[str, dict[str, str | None]]:
    """Secrets deploy/README.md has the operator create with `kubectl create
    secret generic NAME --from-literal=KEY=VALUE`: name -> key -> the
    example value (None when it is computed, e.g. `$(openssl rand …)`)."""
    out: dict[str, dict[str, str | None]] = {}
    for line in readme_text().replace("\\\n", " ").splitlines():
        if "kubectl create secret generic" not in line:
            continue
        words = shlex.split(line[line.index("kubectl create secret generic"):])
        name = words[4]
        for w in words[5:]:
            m = re.fullmatch(r"--from-(literal|file)=([^=]+)=(.*)", w)
            if m:
                literal = m.group(3) if m.group(1) == "literal" and "$" not in m.group(3) else None
                out.setdefault(name, {})[m.group(2)] = literal
    return out


def secret_value(docs: list[dict], name: str, key: str) -> str:
    """The value of a Secret's key: from the rendered Secrets, else from the
    README's example for the operator (an admin-like random string when the
    README computes it)."""
    for s in objects(docs, "Secret"):
        if s["metadata"]["name"] == name:
            if key in s.get("stringData", {}):
                return s["stringData"][key]
            assert key in s.get("data", {}), f"Secret {name} has no key {key}"
            return base64.b64decode(s["data"][key]).decode()
    documented = operator_secrets()
    assert name in documented, (
        f"Secret {name} is neither rendered nor created in deploy/README.md "
        f"(`kubectl create secret generic {name} --from-literal={key}=…`)"
    )
    assert key in documented[name], f"deploy/README.md creates Secret {name} without key {key}"
    return documented[name][key] or secrets.token_hex(32)


def secret_refs(docs: list[dict]) -> list[tuple[str, str | None, str]]:
    """(secret, key or None for any, where) for every Secret the objects use."""
    refs = []
    for d in objects(docs, "Deployment"):
        pod = d["spec"]["template"]["spec"]
        for v in pod.get("volumes", []):
            if "secret" in v:
                items = v["secret"].get("items") or [{"key": None}]
                refs += [(v["secret"]["secretName"], i["key"], f"volume {v['name']}") for i in items]
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.append((ref["name"], ref["key"], f"env {e['name']}"))
            for ef in c.get("envFrom", []):
                if "secretRef" in ef:
                    refs.append((ef["secretRef"]["name"], None, "envFrom"))
    for sm in objects(docs, "ServiceMonitor"):
        for ep in sm["spec"]["endpoints"]:
            cred = ep.get("authorization", {}).get("credentials")
            if cred:
                refs.append((cred["name"], cred["key"], "ServiceMonitor authorization"))
    return refs


def mount_source(pod: dict, container: dict, path: str) -> tuple[dict, dict, str]:
    """The volume a container path lies on, its mount, and the path inside it."""
    best = None
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"].rstrip("/")):
                best = m
    assert best is not None, f"{path} is on no volume (the root filesystem is read-only)"
    volume = next(v for v in pod["volumes"] if v["name"] == best["name"])
    return volume, best, path[len(best["mountPath"].rstrip("/")):].lstrip("/")


def admin_key_source(docs: list[dict]) -> tuple[str, str]:
    """HFMS_ADMIN_KEY_FILE must be a file of a mounted Secret: (name, key)."""
    _, pod, c = deployment(docs)
    path = next(e["value"] for e in c.get("env", []) if e["name"] == "HFMS_ADMIN_KEY_FILE")
    volume, mount, rest = mount_source(pod, c, path)
    assert "secret" in volume, f"HFMS_ADMIN_KEY_FILE {path} is not on a Secret volume"
    items = volume["secret"].get("items")
    if items:
        key = next((i["key"] for i in items if i["path"] == rest), None)
        assert key is not None, f"Secret volume {volume['name']} has no item at {rest}"
    else:
        key = rest
    return volume["secret"]["secretName"], key


def container_env(docs: list[dict], key_file: Path) -> dict[str, str]:
    """The container's HFMS_* environment as the kubelet would set it, the
    admin key file replaced by `key_file` (written here with the key)."""
    _, _, c = deployment(docs)
    env: dict[str, str] = {}
    for ef in c.get("envFrom", []):
        assert set(ef) <= {"configMapRef", "secretRef", "prefix"}, ef
        if "configMapRef" in ef:
            env.update(one(docs, "ConfigMap", ef["configMapRef"]["name"])["data"])
        else:
            pytest.fail(f"envFrom {ef}: this test knows ConfigMaps only")
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secret_value(docs, ref["name"], ref["key"])
    for name, value in env.items():
        assert isinstance(value, str), f"{name}: {value!r} is not a string"
    name, key = admin_key_source(docs)
    key_file.write_text(secret_value(docs, name, key) + "\n")
    env["HFMS_ADMIN_KEY_FILE"] = str(key_file)
    return env


def isolated_env(extra: dict[str, str], home: Path) -> dict[str, str]:
    """A process environment with no HFMS_* but `extra`'s."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("HFMS_")}
    return {**base, "HOME": str(home), **extra}


def effective_config(docs: list[dict]) -> dict:
    """`hfms serve --print-config` run with the container's arguments and
    environment: the settings hfms would use in the pod."""
    _, _, c = deployment(docs)
    with tempfile.TemporaryDirectory(prefix="hfms-deploy-") as tmp:
        env = container_env(docs, Path(tmp) / "admin-key")
        proc = subprocess.run(
            [str(hfms_bin()), *c["args"], "--print-config"],
            env=isolated_env(env, Path(tmp)), cwd=tmp, capture_output=True, text=True, timeout=60,
        )
    assert proc.returncode == 0, f"hfms refuses the pod's settings:\n{proc.stderr}"
    return tomllib.loads(proc.stdout)


def quantity(q: str | int) -> float:
    """A Kubernetes resource quantity as a number (cpu cores or bytes)."""
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(q))
    assert m, f"bad quantity {q!r}"
    units = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return float(m.group(1)) * units[m.group(2)]


def container_port(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    found = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    assert found, f"no container port named {port}"
    return found[0]


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, (INSTRUCTION, arguments), lines joined."""
    out = []
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def instruction(name: str) -> list[str]:
    return [rest for word, rest in dockerfile() if word == name]


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


def check_service_monitor(sm: dict) -> None:
    """What prometheus-operator needs of a ServiceMonitor (no schema here)."""
    assert set(sm) <= {"apiVersion", "kind", "metadata", "spec"}, sorted(sm)
    spec = sm["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}, sorted(spec)
    assert spec["selector"].get("matchLabels"), "the ServiceMonitor selects nothing"
    assert spec["endpoints"], "no endpoints"
    allowed = {"port", "path", "scheme", "interval", "scrapeTimeout", "authorization", "honorLabels",
               "relabelings", "metricRelabelings"}
    for ep in spec["endpoints"]:
        assert set(ep) <= allowed, f"unknown endpoint fields {set(ep) - allowed}"
        assert isinstance(ep["port"], str) and ep["port"], "endpoints name the Service port"
        assert ep["path"] == "/metrics"
        for f in ("interval", "scrapeTimeout"):
            if f in ep:
                assert re.fullmatch(r"[0-9]+(ms|s|m|h)", ep[f]), f"{f}: {ep[f]!r}"
        auth = ep.get("authorization")
        assert auth, "/metrics needs an admin key once keys are on: the endpoint must send one"
        assert set(auth) == {"type", "credentials"} and auth["type"] == "Bearer", auth
        assert set(auth["credentials"]) == {"name", "key"}, auth["credentials"]


def validate(doc: dict, where: str) -> None:
    if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
        check_service_monitor(doc)
        return
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.absolute_path)
            pytest.fail(f"{where}: {doc['kind']} {doc['metadata'].get('name')} is invalid for "
                        f"Kubernetes {version} at {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            pytest.fail(f"{where}: {e.message}")


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_kubernetes(overlay):
    docs = render(overlay)
    for d in docs:
        validate(d, overlay)
    kinds = sorted(d["kind"] for d in docs)
    for kind in ("ConfigMap", "Deployment", "Service", "ServiceMonitor"):
        assert kind in kinds, f"{overlay} has no {kind}"


def test_readme_objects_are_valid_kubernetes():
    docs = readme_objects()
    assert any(d["kind"] == "PersistentVolumeClaim" for d in docs), "deploy/README.md shows the models claim"
    for d in docs:
        validate(d, "deploy/README.md")


def test_every_hfms_variable_and_flag_in_deploy_exists():
    """Each HFMS_* name in the rendered overlays and in any file under
    deploy/ (comments and docs included) is one `hfms serve` reads."""
    known = help_env_names()
    used: dict[str, set[str]] = {}
    for overlay in OVERLAYS:
        for name in re.findall(r"\bHFMS_[A-Z0-9_]+", rendered_text(overlay)):
            used.setdefault(name, set()).add(f"overlays/{overlay} (rendered)")
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            for name in re.findall(r"\bHFMS_[A-Z0-9_]+", path.read_text(errors="replace")):
                used.setdefault(name, set()).add(str(path.relative_to(REPO)))
    assert "HFMS_SHUTDOWN_GRACE" in used and "HFMS_ADMIN_KEY_FILE" in used
    unknown = {n: sorted(w) for n, w in used.items() if n not in known}
    assert not unknown, f"`hfms serve` has no such variables: {unknown}"
    # Flags in the containers' arguments and the image's CMD.
    flags = help_flags()
    for overlay in OVERLAYS:
        _, _, c = deployment(render(overlay))
        for f in flags_in(c.get("args", [])):
            assert f in flags, f"{overlay}: `hfms serve` has no flag {f}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_spec(overlay):
    docs = render(overlay)
    _, pod, c = deployment(docs)
    cfg = effective_config(docs)

    # hfms serve, from the image's ENTRYPOINT.
    assert c.get("command") in (None, ["hfms"]), c.get("command")
    assert c["args"][0] == "serve"
    image = c["image"]
    assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"pin the image tag: {image}"

    # Listening where the ports and probes say.
    assert cfg["host"] == "0.0.0.0", "a pod must listen beyond loopback"
    assert cfg["port"] in [p["containerPort"] for p in c["ports"]]
    assert cfg["no_auth"] is False and "admin_key_file" in cfg, "auth comes from the admin key file"
    paths = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert container_port(c, get["port"]) == cfg["port"], f"{probe} probes another port"
        paths[probe] = get["path"]
    assert paths == {"startupProbe": "/health", "livenessProbe": "/health", "readinessProbe": "/ready"}

    # Shutdown: endpoints removed during preStop, then the server's grace.
    pre_stop = c["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        sleep_s = int(pre_stop["sleep"]["seconds"])
    else:
        cmd = pre_stop["exec"]["command"]
        assert cmd[0] in ("sleep", "/bin/sleep") and len(cmd) == 2, cmd
        sleep_s = int(cmd[1])
    assert sleep_s >= 2, "preStop must give the endpoints time to drop the pod"
    needed = sleep_s + cfg["shutdown_grace"] + EXIT_AFTER_CANCEL_S
    assert pod["terminationGracePeriodSeconds"] >= needed, (
        f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} < preStop {sleep_s} "
        f"+ shutdown grace {cfg['shutdown_grace']} + {EXIT_AFTER_CANCEL_S}"
    )
    # A Service named hfms would set HFMS_PORT=tcp://… in the pod.
    assert pod.get("enableServiceLinks") is False

    # Not root, nothing writable but the volumes.
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True and sc.get("runAsUser", 0) != 0
    csc = c["securityContext"]
    assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
    assert "ALL" in csc["capabilities"]["drop"]
    for v in pod["volumes"]:
        sources = set(v) - {"name"}
        assert len(sources) == 1, f"volume {v['name']} has sources {sources}"
    volume, mount, _ = mount_source(pod, c, cfg["data_dir"])
    assert not mount.get("readOnly"), "the data dir must be writable"
    assert "secret" not in volume and "configMap" not in volume
    for d in cfg["models_dirs"]:
        mount_source(pod, c, d)
    _, tmp_mount, _ = mount_source(pod, c, "/tmp")
    assert not tmp_mount.get("readOnly")

    # Requests and limits for CPU and memory, requests within limits.
    res = c["resources"]
    for r in ("cpu", "memory"):
        assert quantity(res["requests"][r]) <= quantity(res["limits"][r]), r


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(overlay):
    docs = render(overlay)
    dep, pod, c = deployment(docs)
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    svc = one(docs, "Service")
    assert svc["spec"]["selector"].items() <= pod_labels.items(), "the Service selects no pod"
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    for p in svc_ports.values():
        container_port(c, p["targetPort"])

    sm = one(docs, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items(), \
        "the ServiceMonitor selects no Service"
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in svc_ports, f"the Service has no port {ep['port']}"
        # The scrape key is the server's admin key.
        cred = ep["authorization"]["credentials"]
        assert (cred["name"], cred["key"]) == admin_key_source(docs)

    for ef in c.get("envFrom", []):
        if "configMapRef" in ef:
            one(docs, "ConfigMap", ef["configMapRef"]["name"])

    for name, key, where in secret_refs(docs):
        rendered = [s for s in objects(docs, "Secret") if s["metadata"]["name"] == name]
        if rendered:
            keys = set(rendered[0].get("data", {})) | set(rendered[0].get("stringData", {}))
            assert key is None or key in keys, f"{where}: Secret {name} has no key {key}"
        else:
            documented = operator_secrets()
            assert name in documented, f"{where}: Secret {name} is neither rendered nor in deploy/README.md"
            assert key is None or key in documented[name], f"{where}: README's Secret {name} lacks key {key}"

    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    provided = {d["metadata"]["name"] for d in objects(docs, "PersistentVolumeClaim")}
    documented = {d["metadata"]["name"] for d in readme_objects() if d["kind"] == "PersistentVolumeClaim"}
    assert claims <= provided | documented, f"claims neither rendered nor in the README: {claims - provided - documented}"

    for hpa in objects(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", dep["metadata"]["name"])
    for pdb in objects(docs, "PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_sqlite_overlay():
    docs = render("sqlite")
    dep, pod, c = deployment(docs)
    cfg = effective_config(docs)
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}, "two pods must never share the SQLite file"
    assert not objects(docs, "HorizontalPodAutoscaler")
    # The database is the default SQLite file in the data dir, on a claim.
    assert "database_url" not in cfg or cfg["database_url"].startswith("sqlite:")
    volume, _, _ = mount_source(pod, c, cfg["data_dir"])
    claim = one(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    # Rate limits and the response cache in process.
    assert "redis_url" not in cfg and "cache_url" not in cfg


def test_replicated_overlay():
    docs = render("replicated")
    dep, pod, c = deployment(docs)
    cfg = effective_config(docs)
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    assert "replicas" not in dep["spec"], "the autoscaler owns the replica count"
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Pods"]
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    one(docs, "PodDisruptionBudget")
    # Shared state: Postgres from a Secret, Redis for limits and cache.
    assert cfg["database_url"].startswith(("postgres://", "postgresql://"))
    db = next(e for e in c["env"] if e["name"] == "HFMS_DATABASE_URL")
    assert "secretKeyRef" in db.get("valueFrom", {}), "the database URL holds a password: keep it in a Secret"
    for setting in ("redis_url", "cache_url"):
        assert cfg[setting].startswith("redis://"), setting
        host = re.match(r"redis://(?:[^@/]*@)?([^:/]+)", cfg[setting]).group(1)
        assert f"named `{host}`" in readme_text(), f"deploy/README.md must say the Redis Service is {host}"
    # No volume claims: nothing local survives a pod, and none is needed.
    assert not objects(docs, "PersistentVolumeClaim")
    volume, _, _ = mount_source(pod, c, cfg["data_dir"])
    assert "emptyDir" in volume


def test_dockerfile():
    froms = instruction("FROM")
    assert froms[0].split()[0] == "rust:1-bookworm" and froms[-1] == "debian:bookworm-slim", froms
    build = " ".join(r for w, r in dockerfile() if w == "RUN" and "cargo build" in r)
    assert "--release" in build and "-p hfms" in build, build
    assert any(r.startswith("--from=") and r.endswith(" /usr/local/bin/hfms") for r in instruction("COPY"))
    assert "ca-certificates" in " ".join(instruction("RUN"))
    assert exec_form(instruction("ENTRYPOINT")[-1]) == ["hfms"]
    cmd = exec_form(instruction("CMD")[-1])
    assert cmd[0] == "serve"
    for f in flags_in(cmd):
        assert f in help_flags(), f"CMD: `hfms serve` has no flag {f}"
    assert instruction("WORKDIR")[-1] == "/var/lib/hfms"

    # The image's user and port are the pods'.
    uid, _, gid = instruction("USER")[-1].partition(":")
    exposed = [int(p.split("/")[0]) for r in instruction("EXPOSE") for p in r.split()]
    for overlay in OVERLAYS:
        docs = render(overlay)
        _, pod, c = deployment(docs)
        assert str(pod["securityContext"]["runAsUser"]) == uid != "0"
        assert str(pod["securityContext"].get("runAsGroup", gid)) == (gid or uid)
        assert [p["containerPort"] for p in c["ports"]] == exposed

    # What the CMD configures, as hfms reads it (an admin key must come with it).
    with tempfile.TemporaryDirectory(prefix="hfms-docker-") as tmp:
        proc = subprocess.run(
            [str(hfms_bin()), *cmd, "--print-config"],
            env=isolated_env({"HFMS_ADMIN_KEY": secrets.token_hex(16)}, Path(tmp)),
            cwd=tmp, capture_output=True, text=True, timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    cfg = tomllib.loads(proc.stdout)
    assert cfg["host"] == "0.0.0.0" and cfg["port"] in exposed
    assert cfg["data_dir"] == "data" and cfg["models_dirs"] == ["models"], "relative to WORKDIR"

    ignored = {line.strip().strip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {"target", "models", "data", ".venv"} <= ignored, ignored


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_sqlite_pod_runs_for_real(tmp_path):
    """The sqlite overlay's container, run here: its arguments and
    environment, the volumes as local folders (the models folder is the
    test models), the port 0 instead of 8000."""
    docs = render("sqlite")
    _, pod, c = deployment(docs)
    cfg = effective_config(docs)
    env = container_env(docs, tmp_path / "admin-key")
    admin_key = (tmp_path / "admin-key").read_text().strip()
    data = tmp_path / "data"
    models = Path(os.environ.get("HFMS_TEST_MODELS", REPO / "models")).resolve()
    if not models.is_dir():
        pytest.fail(f"models folder not found at {models} (run scripts/fetch-models.sh, or set HFMS_TEST_MODELS)")
    assert env["HFMS_DATA_DIR"] == cfg["data_dir"] and env["HFMS_MODELS_DIR"] == ",".join(cfg["models_dirs"])
    env.update(HFMS_DATA_DIR=str(data), HFMS_MODELS_DIR=str(models), HFMS_PORT="0",
               # Exits if this test dies (see conftest.py).
               HFMS_EXIT_ON_STDIN_EOF="true")

    proc = subprocess.Popen(
        [str(hfms_bin()), *c["args"]], env=isolated_env(env, tmp_path), cwd=tmp_path,
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    log: list[str] = []
    listening = threading.Event()
    port: list[int] = []

    def drain():
        for raw in iter(proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            log.append(line)
            m = LISTENING.search(line)
            if m and not listening.is_set():
                port.append(int(m.group(1).rsplit(":", 1)[1]))
                listening.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        if not listening.wait(LISTEN_TIMEOUT_S):
            pytest.fail("hfms did not listen with the pod's settings:\n" + "\n".join(log[-40:]))
        base = f"http://127.0.0.1:{port[0]}"
        probes = {p: c[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
        # The kubelet sends no key.
        for p in ("startupProbe", "livenessProbe"):
            assert http_get(base + probes[p])[0] == 200, p
        deadline = time.monotonic() + READY_TIMEOUT_S
        while (status := http_get(base + probes["readinessProbe"]))[0] != 200:
            assert time.monotonic() < deadline, f"never ready: {status}\n" + "\n".join(log[-40:])
            assert proc.poll() is None, "\n".join(log[-40:])
            time.sleep(0.5)
        assert (data / "hfms.db").is_file(), "the SQLite database belongs on the data volume"

        # The ServiceMonitor's scrape: no key is refused, the admin key works.
        sm = one(docs, "ServiceMonitor")
        path = sm["spec"]["endpoints"][0]["path"]
        assert http_get(base + path)[0] == 401
        status, body = http_get(base + path, {"Authorization": f"Bearer {admin_key}"})
        assert status == 200, body
        families = set(re.findall(r"^# TYPE (\S+) ", body, re.M))
        # The autoscaler's metric is one hfms exports (the replicated
        # overlay keeps the base's autoscaler).
        hpa = one(render("replicated"), "HorizontalPodAutoscaler")
        for m in hpa["spec"]["metrics"]:
            name = m["pods"]["metric"]["name"]
            assert name in families, f"the autoscaler's metric {name} is not in /metrics"
            assert re.search(rf"^{name}{{model=", body, re.M), f"{name} has no series with models loaded"

        # The image's HEALTHCHECK, run against this server, then against none.
        health = instruction("HEALTHCHECK")[-1]
        check = exec_form(health.split(" CMD ", 1)[1].strip())
        run_check = lambda: subprocess.run(check, env={**os.environ, "HFMS_PORT": str(port[0])},
                                           capture_output=True, timeout=30).returncode
        assert run_check() == 0, "the HEALTHCHECK fails against a healthy server"

        # SIGTERM (after preStop): hfms exits well within the grace.
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        budget = pod["terminationGracePeriodSeconds"] - int(c["lifecycle"]["preStop"]["exec"]["command"][1])
        assert proc.wait(timeout=budget) == 0, "\n".join(log[-40:])
        assert time.monotonic() - t0 < budget
        assert run_check() != 0, "the HEALTHCHECK passes with no server"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
