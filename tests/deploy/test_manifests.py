"""The Kubernetes manifests in deploy/kubernetes, rendered with kubectl kustomize and read back.

scripts/deploy_check.py (`make deploy-check`) validates every object against the Kubernetes schemas; these tests
check what the schemas cannot: that the probes point at the server's real endpoints, the grace period outlasts the
drain, the pod runs as the image's non-root user on a read-only root, each overlay serves the profile it promises
on the GPUs that profile needs, and the custom-resource component wires KEDA and the inference pool to the same
Deployment and metric.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.config import load_profile
from server.engines.vllm import ENGINE_EXIT_TIMEOUT_S
from server.gateway_metrics import WAITING
from tests.conftest import REPO
from tests.scripts import load_script

deploy_check = load_script("deploy_check")

ROOT = REPO / "deploy" / "kubernetes"
COMPONENT = ROOT / "components" / "custom-resources"
# What each overlay promises (issue: single-gpu in FP8, multi-gpu tensor parallel 2, cpu-demo the tiny model).
OVERLAY_PROFILES = {
    "single-gpu": "mistral-small-3.1-fp8",
    "multi-gpu": "mistral-small-3.1-tp2",
    "cpu-demo": "tiny-mistral3",
}
GPU = "nvidia.com/gpu"
SERVER, BATCH_OWNER = "msserve", "msserve-batch"  # the interchangeable replicas; the one that owns the state volume
STATEFUL_PATHS = ("/v1/files", "/v1/batches")  # their state is on the batch owner's volume and nowhere else
LOAD_BUDGET_24B_S = 20 * 60  # a first start downloads ~48 GB and loads it: at least this long before a restart


@pytest.fixture(scope="module")
def kubectl() -> str:
    return deploy_check.find_kubectl()


@pytest.fixture(scope="module")
def report(kubectl: str) -> Any:
    return deploy_check.run(ROOT, kubectl)


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [obj for obj in objects if obj["kind"] == kind and name in (None, obj["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name}"
    return found[0]


def container(objects: list[dict[str, Any]], deployment: str = SERVER) -> dict[str, Any]:
    (main,) = one(objects, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return main  # type: ignore[no-any-return]


def settings_of(objects: list[dict[str, Any]]) -> dict[str, str]:
    return one(objects, "ConfigMap")["data"]  # type: ignore[no-any-return]


def test_every_overlay_renders_and_validates_strictly(report: Any) -> None:
    assert report.ok, "\n".join(report.errors)
    assert {p.name for p in deploy_check.overlays(ROOT)} == set(OVERLAY_PROFILES)
    for name in OVERLAY_PROFILES:
        assert f"overlays/{name}" in report.rendered
        assert f"overlays/{name} + components/custom-resources" in report.rendered


def test_the_validator_rejects_what_it_must(report: Any) -> None:
    deployment = one(report.rendered["overlays/single-gpu"], "Deployment", SERVER)
    typo = yaml.safe_load(yaml.safe_dump(deployment))
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/ready", "port": 1}}
    errors = deploy_check.check_objects([typo], "typo")
    assert errors and all("readinesProbe" in error for error in errors)  # strict: unknown fields fail
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "m"}}
    assert deploy_check.check_objects([monitor], "cr") != []  # an unknown custom resource is not waved through


@pytest.mark.parametrize("overlay", sorted(OVERLAY_PROFILES))
def test_probes_point_at_the_servers_endpoints(report: Any, overlay: str) -> None:
    objects = report.rendered[f"overlays/{overlay}"]
    main = container(objects)
    port = main["ports"][0]
    assert port["name"] == "http" and str(port["containerPort"]) == settings_of(objects)["MSSERVE_PORT"]
    assert main["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    startup = main["startupProbe"]
    assert startup["httpGet"] == {"path": "/ready", "port": "http"}
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    if load_profile(OVERLAY_PROFILES[overlay]).requires_gpu:
        assert budget >= LOAD_BUDGET_24B_S, f"{overlay}: the startup probe gives a 24B load only {budget} s"
    service = one(objects, "Service", SERVER)
    assert service["spec"]["ports"][0]["targetPort"] == "http"


@pytest.mark.parametrize("overlay", sorted(OVERLAY_PROFILES))
def test_grace_period_outlasts_the_drain_and_the_engine_stop(report: Any, overlay: str) -> None:
    objects = report.rendered[f"overlays/{overlay}"]
    pod = one(objects, "Deployment", SERVER)["spec"]["template"]["spec"]
    drain = float(settings_of(objects)["MSSERVE_DRAIN_TIMEOUT_S"])
    pause = container(objects)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pause + drain + ENGINE_EXIT_TIMEOUT_S


@pytest.mark.parametrize("overlay", sorted(OVERLAY_PROFILES))
def test_non_root_on_a_read_only_root_with_volumes_for_what_is_written(report: Any, overlay: str) -> None:
    objects = report.rendered[f"overlays/{overlay}"]
    pod = one(objects, "Deployment", SERVER)["spec"]["template"]["spec"]
    main = container(objects)
    uid = pod["securityContext"]["runAsUser"]
    assert pod["securityContext"]["runAsNonRoot"] is True and uid != 0
    for dockerfile in ("Dockerfile.cuda", "Dockerfile.cpu"):  # the user the images create
        assert f"--uid {uid} " in (REPO / dockerfile).read_text(), dockerfile
    context = main["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    env = {item["name"]: item.get("value") for item in main["env"]}
    mounts = [m["mountPath"] for m in main["volumeMounts"]]
    written = [env["HOME"], env["HF_HOME"], settings_of(objects)["MSSERVE_STATE_DIR"], "/tmp", "/dev/shm"]
    for path in written:
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), f"{path} is not writable"
    volumes = {v["name"] for v in pod["volumes"]}
    assert {m["name"] for m in main["volumeMounts"]} <= volumes


@pytest.mark.parametrize("overlay", sorted(OVERLAY_PROFILES))
def test_each_overlay_serves_its_profile_on_the_gpus_it_needs(report: Any, overlay: str) -> None:
    objects = report.rendered[f"overlays/{overlay}"]
    name = settings_of(objects)["MSSERVE_PROFILE"]
    assert name == OVERLAY_PROFILES[overlay]
    profile = load_profile(name)
    main = container(objects)
    pod = one(objects, "Deployment", SERVER)["spec"]["template"]["spec"]
    if profile.requires_gpu:
        gpus = int(main["resources"]["limits"][GPU])
        assert gpus == int(profile.engine_options.get("tensor_parallel_size", 1))
        assert pod["nodeSelector"] and any(t["key"] == GPU for t in pod["tolerations"])
        one(objects, "PersistentVolumeClaim", "msserve-weights")
    else:
        assert GPU not in main["resources"].get("limits", {}) and "nodeSelector" not in pod
        assert "tolerations" not in pod
        assert not [obj for obj in objects if obj["metadata"]["name"] == "msserve-weights"]
    assert main["image"] == ("mistral-small-server:cuda" if profile.requires_gpu else "mistral-small-server:cpu")


def test_tensor_parallel_profiles() -> None:
    for name, size in (("mistral-small-3.1-tp2", 2), ("mistral-small-3.1-tp4", 4)):
        profile = load_profile(name)
        assert profile.engine == "vllm" and profile.engine_options["tensor_parallel_size"] == size
        # Mistral Small 3.1 has 32 attention heads and 8 KV heads: both must split evenly over the GPUs.
        assert 32 % size == 0 and 8 % size == 0
        assert name in (REPO / "docs" / "deployment.md").read_text()  # its memory arithmetic is written out


def test_secrets_stay_out_of_the_configmap(report: Any) -> None:
    for overlay in OVERLAY_PROFILES:
        objects = report.rendered[f"overlays/{overlay}"]
        assert not [key for key in settings_of(objects) if re.search("KEY|TOKEN|SECRET", key)]
        sources = container(objects)["envFrom"]
        secrets = {s["secretRef"]["name"] for s in sources if "secretRef" in s}
        assert {"msserve-api-keys", "msserve-azure", "msserve-shared-state"} <= secrets
        shared = next(
            obj for obj in objects if obj["kind"] == "Secret" and obj["metadata"]["name"] == "msserve-shared-state"
        )
        assert "MSSERVE_DASHBOARD_SESSION_SECRET" in shared["stringData"]  # empty: refused until set, as the keys
        api_keys = next(
            obj for obj in objects if obj["kind"] == "Secret" and obj["metadata"]["name"] == "msserve-api-keys"
        )
        assert "MSSERVE_API_KEYS" in api_keys["stringData"]  # empty: the server refuses to start until it is set


def test_autoscaling_reads_the_queue_depth_this_server_exports(report: Any) -> None:
    objects = report.rendered["overlays/single-gpu"]
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(objects, "Deployment", SERVER)["metadata"]["name"]
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    rules = yaml.safe_load((ROOT / "prometheus-adapter" / "rules.yaml").read_text())["rules"]["custom"]
    (rule,) = [r for r in rules if r["name"]["as"] == metric]
    assert WAITING in rule["seriesQuery"]  # the adapter serves the HPA the series /metrics really carries
    pdb = one(objects, "PodDisruptionBudget")
    labels = one(objects, "Deployment", SERVER)["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("overlay", sorted(OVERLAY_PROFILES))
def test_custom_resource_component(report: Any, overlay: str) -> None:
    objects = report.rendered[f"overlays/{overlay} + components/custom-resources"]
    deployment = one(objects, "Deployment", SERVER)
    scaled = one(objects, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert WAITING in scaled["spec"]["triggers"][0]["metadata"]["query"]
    assert not [obj for obj in objects if obj["kind"] == "HorizontalPodAutoscaler"]  # KEDA's replaces the base's
    pool = one(objects, "InferencePool")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pool["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pool["spec"]["targetPorts"][0]["number"] == container(objects)["ports"][0]["containerPort"]
    assert deploy_check.check_component_files(COMPONENT) == []


def test_component_files_must_be_well_formed(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("kind: Component\n")
    (tmp_path / "broken.yaml").write_text("apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nspec: [unclosed\n")
    (tmp_path / "other.yaml").write_text("apiVersion: example.com/v1\nkind: Thing\n")
    errors = deploy_check.check_component_files(tmp_path)
    assert len(errors) == 2 and "not well-formed YAML" in errors[0] and "Thing" in errors[1]


@pytest.mark.parametrize("overlay", sorted(OVERLAY_PROFILES))
def test_every_reference_resolves_within_the_build(report: Any, overlay: str) -> None:
    objects = report.rendered[f"overlays/{overlay}"]
    names = {(obj["kind"], obj["metadata"]["name"]) for obj in objects}
    for deployment in (SERVER, BATCH_OWNER):
        pod = one(objects, "Deployment", deployment)["spec"]["template"]["spec"]
        for volume in pod["volumes"]:
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names
        for source in container(objects, deployment)["envFrom"]:
            ref = source.get("configMapRef") or source.get("secretRef")
            kind = "ConfigMap" if "configMapRef" in source else "Secret"
            assert ref.get("optional") or (kind, ref["name"]) in names, ref  # the generator's hash name is followed
    for route in [obj for obj in objects if obj["kind"] == "Ingress"]:
        for rule in route["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert ("Service", path["backend"]["service"]["name"]) in names


def test_tensor_parallel_overlay_gives_the_workers_shared_memory(report: Any) -> None:
    pod = one(report.rendered["overlays/multi-gpu"], "Deployment", SERVER)["spec"]["template"]["spec"]
    (shm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"]["medium"] == "Memory" and shm["emptyDir"]["sizeLimit"] == "16Gi"


def pod_labels(objects: list[dict[str, Any]], deployment: str) -> dict[str, str]:
    return one(objects, "Deployment", deployment)["spec"]["template"]["metadata"]["labels"]  # type: ignore[no-any-return]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_the_stateful_paths_are_every_route_of_the_files_and_batch_apis() -> None:
    from server.api.batches import router as batches
    from server.api.files import router as files

    paths = {route.path for module in (files, batches) for route in module.router.routes}  # type: ignore[attr-defined]
    assert paths and all(path.startswith(STATEFUL_PATHS) for path in paths), paths


@pytest.mark.parametrize("overlay", sorted(OVERLAY_PROFILES))
def test_files_and_batches_go_by_path_to_the_one_replica_that_owns_the_state_volume(report: Any, overlay: str) -> None:
    objects = report.rendered[f"overlays/{overlay}"]
    owner = one(objects, "Deployment", BATCH_OWNER)
    assert owner["spec"]["replicas"] == 1 and owner["spec"]["strategy"] == {"type": "Recreate"}  # one writer
    pod = owner["spec"]["template"]["spec"]
    (mount,) = [m for m in container(objects, BATCH_OWNER)["volumeMounts"]
                if m["mountPath"] == settings_of(objects)["MSSERVE_STATE_DIR"]]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    claim = one(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    # The same server as the replicas (image, profile, GPUs, probes, node knobs): only where its state lives differs.
    assert container(objects, BATCH_OWNER) == container(objects)
    replica_pod = one(objects, "Deployment", SERVER)["spec"]["template"]["spec"]
    assert {k: v for k, v in pod.items() if k != "volumes"} == {k: v for k, v in replica_pod.items() if k != "volumes"}
    # Each Service reaches its own pods only; the autoscaler and the disruption budget are the replicas'.
    owner_labels, replica_labels = pod_labels(objects, BATCH_OWNER), pod_labels(objects, SERVER)
    for service, mine, other in ((BATCH_OWNER, owner_labels, replica_labels), (SERVER, replica_labels, owner_labels)):
        selector = one(objects, "Service", service)["spec"]["selector"]
        assert selects(selector, mine) and not selects(selector, other), service
    assert one(objects, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == SERVER
    assert not selects(one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], owner_labels)
    ingress = one(objects, "Ingress")
    routes = {p["path"]: (p["pathType"], p["backend"]["service"]["name"])
              for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]}
    assert routes == {**{path: ("Prefix", BATCH_OWNER) for path in STATEFUL_PATHS}, "/": ("Prefix", SERVER)}


@pytest.mark.parametrize("overlay", sorted(OVERLAY_PROFILES))
def test_the_gateway_route_splits_the_same_paths(report: Any, overlay: str) -> None:
    objects = report.rendered[f"overlays/{overlay} + components/custom-resources"]
    assert not [obj for obj in objects if obj["kind"] == "Ingress"]  # the gateway's route replaces it
    route = one(objects, "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    targets = {}
    for rule in route["spec"]["rules"]:
        (backend,) = rule["backendRefs"]
        for match in rule["matches"]:
            targets[match["path"]["value"]] = (match["path"]["type"], backend.get("kind", "Service"), backend["name"])
    pool = one(objects, "InferencePool")["metadata"]["name"]
    assert targets == {**{path: ("PathPrefix", "Service", BATCH_OWNER) for path in STATEFUL_PATHS},
                       "/v1/captions": ("PathPrefix", "Service", SERVER),  # multipart: nothing for the picker
                       "/": ("PathPrefix", "InferencePool", pool)}
    one(objects, "Service", BATCH_OWNER)


# Custom resources docs/deployment.md writes out for readers to apply, beside the component's (KServe's
# InferenceService: its API version from KServe's documentation).
DOCUMENTED_CUSTOM_KINDS = deploy_check.CUSTOM_KINDS | {("serving.kserve.io/v1beta1", "InferenceService")}


def test_the_yaml_in_the_deployment_guide_is_well_formed_with_known_kinds() -> None:
    text = (REPO / "docs" / "deployment.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    objects = [doc for block in blocks for doc in yaml.safe_load_all(block) if isinstance(doc, dict)]
    kinds = {(doc.get("apiVersion"), doc.get("kind")) for doc in objects if "kind" in doc}
    assert {("serving.kserve.io/v1beta1", "InferenceService"), ("gateway.networking.k8s.io/v1", "HTTPRoute")} <= kinds
    for doc in objects:
        if "kind" not in doc or doc["kind"] == "Kustomization":
            continue
        key = (doc["apiVersion"], doc["kind"])
        if key not in DOCUMENTED_CUSTOM_KINDS:
            assert deploy_check.check_objects([doc], "docs/deployment.md") == [], key  # built-ins: strict schema
