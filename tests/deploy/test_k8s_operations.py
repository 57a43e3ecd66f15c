"""deploy/k8s for operators: every combination of components renders and validates, images carry
the package version (and an overlay pins them as the README says), the GPU overlay selects GPU
nodes, every object carries the common labels, the capture and proxy have probes on the HTTP
port their own settings give, and the NetworkPolicies keep output and HTTP in the namespace.

Rendered with `kubectl kustomize` as in test_k8s.py (skipped without it, failed under CI)."""

from __future__ import annotations

import itertools
import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from streamconv.cli import overrides
from streamconv.cli import parser as cli_parser
from streamconv.config import load_settings, parse_http
from tests.deploy.test_k8s import (
    COMPONENTS,
    K8S,
    KUBERNETES_VERSION,
    ROOT,
    Doc,
    _argv,
    _container,
    _pods,
    _port,
    kustomize,  # noqa: F401 - the fixture, shared
)

pytestmark = pytest.mark.deploy
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
COMBOS = [c for n in range(len(COMPONENTS) + 1) for c in itertools.combinations(COMPONENTS, n)]
LABELS = {"app.kubernetes.io/name": "streamconv", "app.kubernetes.io/part-of": "streamconv"}
ROLES = {"worker", "capture", "proxy"}
GPU_NODES = {"nvidia.com/gpu.present": "true"}


def _overlay(tmp: Path, text: str) -> Path:
    """A kustomization in `tmp`, its `../../` paths (as written in deploy/k8s/overlays/NAME)
    pointed at deploy/k8s from there (kustomize takes relative paths only)."""
    up = os.path.relpath(K8S, tmp)
    (tmp / "kustomization.yaml").write_text(text.replace("../../", f"{up}/"), encoding="utf-8")
    return tmp


@pytest.fixture(scope="module")
def combos(
    kustomize: Callable[[Path], list[Doc]],  # noqa: F811 - the fixture above
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, ...], list[Doc]]:
    """The base with every subset of the components."""
    out = {}
    for combo in COMBOS:
        spec = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                "resources": ["../../base"],
                "components": [f"../../components/{c}" for c in combo]}  # fmt: skip
        out[combo] = kustomize(_overlay(tmp_path_factory.mktemp("combo"), yaml.safe_dump(spec)))
    return out


def _images(docs: list[Doc]) -> list[tuple[str, str, str]]:
    return [(w["metadata"]["name"], c["image"], c.get("imagePullPolicy", ""))
            for w, pod in _pods(docs)
            for c in [*pod.get("initContainers", []), *pod["containers"]]]  # fmt: skip


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "+".join(c) or "base")
def test_every_combination_renders_validates_and_is_labelled(
    combos: dict[tuple[str, ...], list[Doc]], combo: tuple[str, ...]
) -> None:
    docs = combos[combo]
    for doc in docs:
        what = f"{doc['kind']} {doc['metadata']['name']}"
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        labels = doc["metadata"].get("labels", {})
        assert LABELS.items() <= labels.items(), what
        assert labels.get("app.kubernetes.io/component") in ROLES, what
        template = doc.get("spec", {}).get("template")
        if template is not None:
            assert LABELS.items() <= template["metadata"]["labels"].items(), what
    # The version's tag everywhere; IfNotPresent is safe only with a tag per build.
    for name, image, policy in _images(docs):
        assert image == f"streamconv:{VERSION}", name
        assert policy == "IfNotPresent", name
    worker = next(p for w, p in _pods(docs) if w["kind"] == "StatefulSet")
    assert worker.get("nodeSelector") == (GPU_NODES if "gpu" in combo else None)


def test_an_overlay_pins_the_image_and_the_gpu_nodes_as_the_readme_says(
    kustomize: Callable[[Path], list[Doc]],  # noqa: F811
    tmp_path: Path,
) -> None:
    text = (K8S / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    example = next((b for b in blocks if "newTag" in b and "nodeSelector" in b), None)
    assert example is not None, "deploy/k8s/README.md shows no overlay that pins both"
    spec = yaml.safe_load(example)
    pinned = next(i for i in spec["images"] if i["name"] == "streamconv")
    docs = kustomize(_overlay(tmp_path, example))
    for name, image, _ in _images(docs):
        assert image == f"{pinned['newName']}:{pinned['newTag']}", name
    sts = next(p for w, p in _pods(docs) if w["kind"] == "StatefulSet")
    assert sts["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert sts["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def _role_http(container: Doc) -> tuple[str, int] | None:
    """Where the role in `container` serves HTTP, as its own settings say."""
    args = cli_parser().parse_args(_argv(container))
    settings = load_settings("default", overrides(args), environ={})
    if args.command == "capture":
        return parse_http(settings.capture.http)
    assert args.command == "proxy"
    return parse_http(settings.proxy.http_address())


@pytest.mark.parametrize("role", ["capture", "proxy"])
def test_the_capture_and_the_proxy_are_probed_and_scraped(
    combos: dict[tuple[str, ...], list[Doc]], role: str
) -> None:
    docs = combos[tuple(COMPONENTS)]
    found = [(w, p) for w, p in _pods(docs) if w["metadata"]["labels"].get(
        "app.kubernetes.io/component") == role]  # fmt: skip
    assert found
    for workload, pod in found:
        container = _container(pod, role)
        http = _role_http(container)
        assert http is not None, f"{role}: no --http, so nothing to probe"
        host, port = http
        assert host == "0.0.0.0"  # the kubelet probes the pod's address
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = container[probe]["httpGet"]
            assert (get["path"], _port(container, get["port"])) == (path, port), probe
        notes = workload["spec"]["template"]["metadata"]["annotations"]
        assert notes["prometheus.io/port"] == str(port)
        assert notes["prometheus.io/path"] == "/metrics"


def _peers(docs: list[Doc], labels: dict[str, str], port: Doc) -> list[list[Doc] | None]:
    """The `from` of every ingress rule that lets traffic reach `port` of a pod with `labels`
    (None: from anywhere); [None] if no policy selects the pod (all traffic allowed)."""
    peers: list[list[Doc] | None] = []
    selected = False
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        spec = policy["spec"]
        if not spec["podSelector"]["matchLabels"].items() <= labels.items():
            continue
        if "Ingress" not in spec.get("policyTypes", ["Ingress"]):
            continue
        selected = True
        for rule in spec.get("ingress", []):
            ports = rule.get("ports")
            if ports is None or any(p["port"] in (port["name"], port["containerPort"])
                                    for p in ports):  # fmt: skip
                peers.append(rule.get("from"))
    return peers if selected else [None]


@pytest.mark.parametrize("combo", [(), tuple(COMPONENTS)], ids=["base", "everything"])
def test_output_and_http_are_reachable_from_the_namespace_only(
    combos: dict[tuple[str, ...], list[Doc]], combo: tuple[str, ...]
) -> None:
    docs = combos[combo]
    same_namespace: list[Doc] = [{"podSelector": {}}]
    for workload, pod in _pods(docs):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        for container in pod["containers"]:
            for port in container.get("ports", []):
                peers = _peers(docs, labels, port)
                what = (workload["metadata"]["name"], port["name"], peers)
                if port["name"] == "input":  # captures outside the cluster; CURVE decides
                    assert None in peers, what
                else:
                    assert peers, what
                    assert all(p == same_namespace for p in peers), what
