"""infra/: the KubeRay manifests and the container file, parsed and checked for
what KubeRay and the pipeline need (no Kubernetes here)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from vico_pipeline.cli import _parser
from vico_pipeline.config import load_config
from vico_pipeline.registry import stage_specs

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((INFRA / name).read_text()) if d]


def _containers(template: dict) -> list[dict]:
    return template["spec"]["containers"]


def _gpus(container: dict) -> int:
    limits = container.get("resources", {}).get("limits", {})
    return int(limits.get("nvidia.com/gpu", 0))


@pytest.fixture(scope="module")
def raycluster() -> dict:
    [doc] = _docs("raycluster.yaml")
    return doc


@pytest.fixture(scope="module")
def rayjob() -> dict:
    [doc] = _docs("rayjob.yaml")
    return doc


@pytest.fixture(scope="module")
def targets() -> dict[str, str]:
    """Containerfile target name -> its text."""
    text = (INFRA / "Containerfile").read_text()
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\w+)\s*$", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_raycluster_has_what_kuberay_requires(raycluster):
    assert raycluster["apiVersion"] == "ray.io/v1" and raycluster["kind"] == "RayCluster"
    assert raycluster["metadata"]["name"]
    spec = raycluster["spec"]
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert _containers(head["template"])[0]["image"]
    # The head keeps no stage work, and its dashboard / job server is reachable from the submitter.
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert 8265 in [p["containerPort"] for p in _containers(head["template"])[0]["ports"]]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert _containers(group["template"])[0]["image"]


def test_raycluster_has_a_cpu_group_and_a_gpu_group(raycluster, targets):
    groups = {g["groupName"]: g for g in raycluster["spec"]["workerGroupSpecs"]}
    gpu = [g for g in groups.values() if _gpus(_containers(g["template"])[0])]
    cpu = [g for g in groups.values() if not _gpus(_containers(g["template"])[0])]
    assert len(gpu) == 1 and len(cpu) >= 1
    gpu_container = _containers(gpu[0]["template"])[0]
    assert _gpus(gpu_container) == 8  # one 8-GPU node per GPU worker
    assert gpu_container["resources"]["requests"]["nvidia.com/gpu"] == gpu_container["resources"]["limits"]["nvidia.com/gpu"]
    assert any(t.get("key") == "nvidia.com/gpu" for t in gpu[0]["template"]["spec"].get("tolerations", []))
    # Images: the gpu target on the GPU group, the cpu target on the head and CPU workers.
    assert gpu_container["image"].endswith(":gpu")
    assert _containers(raycluster["spec"]["headGroupSpec"]["template"])[0]["image"].endswith(":cpu")
    assert all(_containers(g["template"])[0]["image"].endswith(":cpu") for g in cpu)
    assert {"cpu", "gpu"} <= set(targets)
    # Every pod reads the S3 credentials from the same Secret; the object store has shared memory.
    templates = [raycluster["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in groups.values()]
    for template in templates:
        container = _containers(template)[0]
        assert {"secretRef": {"name": "vico-s3", "optional": True}} in container["envFrom"]
        assert any(m["mountPath"] == "/dev/shm" for m in container["volumeMounts"])


def test_the_gpu_budget_of_the_cluster_config_fits_one_gpu_node(raycluster):
    config = load_config(REPO / "configs" / "cluster-s3.yaml")
    gpu_group = next(g for g in raycluster["spec"]["workerGroupSpecs"] if _gpus(_containers(g["template"])[0]))
    node_gpus = _gpus(_containers(gpu_group["template"])[0])
    node_cpus = int(_containers(gpu_group["template"])[0]["resources"]["limits"]["cpu"])
    used_gpus = used_cpus = 0
    for spec in stage_specs():
        res = spec.resources(config)
        if res.get("num_gpus"):
            size = res["concurrency"]
            most = size[1] if isinstance(size, (tuple, list)) else size
            used_gpus += res["num_gpus"] * most
            used_cpus += res["num_cpus"] * most
    assert used_gpus == node_gpus  # every GPU busy, none asked for twice
    assert used_cpus <= node_cpus
    assert config.caption.engine == "vllm" and config.clues.engine == "vllm"
    assert config.output.root.startswith("s3://") and config.sources.manifest.startswith("s3://")


def test_rayjob_runs_vico_on_the_raycluster(rayjob, raycluster):
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": raycluster["metadata"]["name"]}
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "SidecarMode")
    # The entrypoint is a `vico run` the CLI accepts, on a config the image holds, that loads.
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["vico", "run"]
    args = _parser().parse_args(argv[1:])
    assert args.config.startswith("/app/")
    config = load_config(REPO / Path(args.config).relative_to("/app"), args.overrides)
    assert config.output.root.startswith("s3://")


def test_containerfile_targets(targets):
    cpu, gpu = targets["cpu"], targets["gpu"]
    install = lambda text: re.search(r'pip install[^\n]*"\.\[([^\]]*)\]"', text).group(1).split(",")  # noqa: E731
    assert "vllm" in install(gpu) and "vllm" not in install(cpu)
    assert {"s3", "cluster"} <= set(install(cpu)) and {"s3", "cluster"} <= set(install(gpu))
    # The rayproject images: CUDA on the GPU target only, the same Ray as pyproject pins.
    froms = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\w+)", (INFRA / "Containerfile").read_text(), flags=re.M)
    images = {target: image for image, target in froms}
    assert images["gpu"].endswith("-gpu") and not images["cpu"].endswith("-gpu")
    ray_pin = re.search(r'"ray\[data\]==([\d.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert f"ARG RAY_VERSION={ray_pin}" in (INFRA / "Containerfile").read_text()
    # Workers run as Ray's unprivileged user, as in Ray's own images.
    for target in (cpu, gpu):
        assert re.findall(r"^USER\s+(\S+)", target, flags=re.M)[-1] == "ray"
    # What it copies exists (the build context is the repository root).
    for target in (cpu, gpu):
        for line in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)$", target, flags=re.M):
            for source in line.split()[:-1]:
                assert (REPO / source).exists(), source


def test_cluster_doc_walks_through_the_infra_files():
    text = (REPO / "docs" / "cluster.md").read_text()
    for needle in ("infra/Containerfile", "infra/raycluster.yaml", "infra/rayjob.yaml", "vico submit",
                   "kubectl apply", "helm install", "vico-s3", "configs/cluster-s3.yaml", "manifest.json"):
        assert needle in text, needle
