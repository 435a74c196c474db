"""deploy/k8s/ agrees with docker-compose.yml, serving/*.config and core/config.py's
defaults: one source of truth for names, ports, paths and TF Serving's configuration."""
import posixpath

import pytest
import yaml

from core import config
from serving.admission import GRACE_SECONDS
from tests.conftest import REPO
from tests.deploy.conftest import K8S_DIR

CONFIG_FILES = ("models.config", "batching.config", "monitoring.config")
PORT_FLAGS = ("--port=", "--rest_api_port=")


@pytest.fixture(scope="module")
def settings():
    return config.load({}, environ={})


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def serving_pod(manifests):
    return manifests["Deployment/tfxops-serving"]["spec"]["template"]


def monitor_pod(manifests):
    return manifests["CronJob/tfxops-monitor"]["spec"]["jobTemplate"]["spec"]["template"]


def container(pod, name):
    (found,) = [c for c in pod["spec"]["containers"] if c["name"] == name]
    return found


def ports(c):
    return {p["name"]: p["containerPort"] for p in c.get("ports", [])}


def flag(args, name):
    return args[args.index(name) + 1]


def home_relative(path, settings):
    return posixpath.relpath(str(path), settings.home)


def k8s_mounts(pod, c):
    """{mountPath: compose-style source} for a container: ./outputs/<subPath> for the
    outputs volume, ./serving/<key> per key of the ConfigMap volume (mounted as files)."""
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    out = {}
    for mount in c.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["claimName"] == "tfxops-outputs"
            source = posixpath.join("./outputs", mount.get("subPath", "")).rstrip("/")
            out[mount["mountPath"]] = (source, mount.get("readOnly", False))
        else:
            for key in CONFIG_FILES:
                out[posixpath.join(mount["mountPath"], key)] = (f"./serving/{key}", True)
    return out


def compose_mounts(service):
    out = {}
    for volume in service["volumes"]:
        source, target, *mode = volume.split(":")
        out[target] = (source, mode == ["ro"])
    return out


def test_configmap_is_the_serving_config_files(manifests):
    data = manifests["ConfigMap/tfxops-serving-config"]["data"]
    assert set(data) == set(CONFIG_FILES)
    for name in CONFIG_FILES:
        assert data[name] == (REPO / "serving" / name).read_text(), (
            f"deploy/k8s/serving-config.yaml's {name} differs from serving/{name} (the source): "
            f"copy the file into data.{name}, indented by four spaces")


def test_volumes_are_composes(manifests, compose, settings):
    pods = {"serving": (serving_pod(manifests), "tensorflow-serving"),
            "proxy": (serving_pod(manifests), "logging-proxy"),
            "monitor": (monitor_pod(manifests), "monitor")}
    for service, (pod, name) in pods.items():
        assert k8s_mounts(pod, container(pod, name)) == compose_mounts(compose["services"][service]), name
    # the subdirectories of the outputs volume are the settings' paths under home
    serving = container(serving_pod(manifests), "tensorflow-serving")
    sub_paths = {m["mountPath"]: m.get("subPath") for m in serving["volumeMounts"]}
    assert sub_paths[f"/models/{settings.model_name}"] == home_relative(settings.model_push_dir, settings)
    proxy = container(serving_pod(manifests), "logging-proxy")
    log_mount = next(m for m in proxy["volumeMounts"] if m["mountPath"] == "/logs")
    assert log_mount["subPath"] == home_relative(settings.request_logs_path, settings)


def test_models_are_verified_before_tf_serving_starts_as_composes_verify_models(manifests, compose, settings):
    """A tampered version must stop the pod before TF Serving serves it: the init container is
    compose's verify-models on TF Serving's model volume, read-only, with the signing key from
    an optional Secret (never written in the manifest)."""
    pod = serving_pod(manifests)
    (verify,) = pod["spec"]["initContainers"]
    composed = compose["services"]["verify-models"]
    assert verify["command"] == composed["command"] and verify["command"][:2] == ["tfxops", "verify"]
    assert verify["image"] == composed["image"]
    tfs = container(pod, "tensorflow-serving")
    model_mount = f"/models/{settings.model_name}"
    assert k8s_mounts(pod, verify) == compose_mounts(composed)
    assert k8s_mounts(pod, verify)[model_mount] == k8s_mounts(pod, tfs)[model_mount]
    assert k8s_mounts(pod, verify)[model_mount][1] is True                       # read-only
    env = {e["name"]: e for e in verify["env"]}
    key = env[settings.model_integrity_key_env]
    assert set(key) == {"name", "valueFrom"}
    assert key["valueFrom"]["secretKeyRef"]["optional"] is True                  # unsigned installs start
    assert set(composed["environment"]) == {settings.model_integrity_key_env}
    assert verify["securityContext"]["runAsNonRoot"] and verify["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_tf_serving_is_composes_on_in_pod_ports(manifests, compose):
    tfs = container(serving_pod(manifests), "tensorflow-serving")
    composed = compose["services"]["serving"]
    assert tfs["image"] == composed["image"]
    assert tfs["command"] == ["/usr/bin/tensorflow_model_server"]
    other = [a for a in tfs["args"] if not a.startswith(PORT_FLAGS)]
    assert other == [a for a in composed["command"] if not a.startswith(PORT_FLAGS)]
    in_pod = ports(tfs)
    assert f"--port={in_pod['tfs-grpc']}" in tfs["args"]
    assert f"--rest_api_port={in_pod['tfs-rest']}" in tfs["args"]


def test_proxy_sidecar_is_composes_forwarding_to_localhost(manifests, compose, settings):
    pod = serving_pod(manifests)
    proxy, tfs = container(pod, "logging-proxy"), container(pod, "tensorflow-serving")
    composed = compose["services"]["proxy"]
    assert proxy["image"] == composed["image"]
    command = proxy["command"]
    assert flag(command, "--proxy-to") == f"localhost:{ports(tfs)['tfs-rest']}"
    assert flag(command, "--proxy-grpc-to") == f"localhost:{ports(tfs)['tfs-grpc']}"
    upstreams = {"--proxy-to": "UPSTREAM-REST", "--proxy-grpc-to": "UPSTREAM-GRPC"}

    def neutral(args):
        return [upstreams.get(prev, arg) for prev, arg in zip([None] + args, args)]
    assert neutral(command) == neutral(composed["command"])
    assert ports(proxy) == {"http-rest": settings.rest_port, "grpc": settings.grpc_port}
    assert not set(ports(proxy).values()) & set(ports(tfs).values())   # one network per pod


def test_service_reaches_the_proxy_on_the_settings_ports(manifests, settings):
    service = manifests["Service/tfxops-serving"]["spec"]
    proxy = container(serving_pod(manifests), "logging-proxy")
    by_target = {p["targetPort"]: p["port"] for p in service["ports"]}
    assert by_target == {"http-rest": settings.rest_port, "grpc": settings.grpc_port}
    assert set(by_target) <= set(ports(proxy))
    labels = serving_pod(manifests)["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()


def test_probes_on_declared_ports_pass_with_tokens_on(manifests, settings):
    """TF Serving's readiness asks it for the model; the proxy's probes ask for its own
    metrics page, which stays open when tokens are on (the model status would answer
    the kubelet 401: serving.access.METRICS_PATHS)."""
    from serving.access import METRICS_PATHS

    pod = serving_pod(manifests)
    metrics_path = "/monitoring/prometheus/metrics"
    assert metrics_path in (REPO / "serving" / "monitoring.config").read_text()
    model = f"/v1/models/{settings.model_name}"
    expected = {"tensorflow-serving": ("tfs-rest", model, metrics_path),
                "logging-proxy": ("http-rest", "/monitoring/tfxops/metrics", "/monitoring/tfxops/metrics")}
    for name, (port, readiness_path, liveness_path) in expected.items():
        c = container(pod, name)
        ready, alive = c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"]
        assert ready == {"path": readiness_path, "port": port}, name
        assert alive == {"path": liveness_path, "port": port}, name
        assert name == "tensorflow-serving" or readiness_path in METRICS_PATHS
        assert port in ports(c)
        assert {"requests", "limits"} <= set(c["resources"]), name


def test_tf_serving_outlives_the_proxys_drain(manifests):
    pod = serving_pod(manifests)

    def pre_stop_sleep(name):
        command = container(pod, name)["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep", command
        return int(command[1])
    proxy_done = pre_stop_sleep("logging-proxy") + GRACE_SECONDS   # then its calls in flight
    assert pre_stop_sleep("tensorflow-serving") >= proxy_done
    assert pod["spec"]["terminationGracePeriodSeconds"] > pre_stop_sleep("tensorflow-serving")


def test_autoscaler_and_disruption_budget_select_the_serving_pods(manifests):
    deployment = manifests["Deployment/tfxops-serving"]
    hpa = manifests["HorizontalPodAutoscaler/tfxops-serving"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": deployment["metadata"]["name"]}
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]
    pdb = manifests["PodDisruptionBudget/tfxops-serving"]["spec"]
    assert pdb["selector"] == deployment["spec"]["selector"]
    assert pdb["minAvailable"] < hpa["minReplicas"]       # a drain can always proceed


def test_monitor_cronjob_is_composes_monitor(manifests, compose):
    cron = manifests["CronJob/tfxops-monitor"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    monitor = container(monitor_pod(manifests), "monitor")
    composed = compose["services"]["monitor"]
    watch = composed["command"].index("--watch")
    assert monitor["command"] == composed["command"][:watch] + composed["command"][watch + 2:]
    seconds = int(composed["command"][watch + 1])
    assert cron["schedule"] == f"*/{seconds // 60} * * * *"
    assert monitor["image"] == composed["image"]
    assert monitor["workingDir"] == composed["working_dir"]


def test_mlmd_password_comes_from_a_secret_only(manifests, compose, settings):
    env = {e["name"]: e for e in container(monitor_pod(manifests), "monitor")["env"]}
    password = env.pop(settings.mysql_password_env)
    assert set(password) == {"name", "valueFrom"}
    assert password["valueFrom"] == {"secretKeyRef": {"name": "tfxops-mlmd-mysql", "key": "password"}}
    plain = {name: e["value"] for name, e in env.items() if name.startswith(config.ENV_PREFIX)}
    composed = dict(compose["x-mlmd-mysql"])
    composed.pop(settings.mysql_password_env)
    assert plain == composed
    loaded = config.load({}, environ=plain)         # every variable names a setting
    assert loaded.metadata_backend == "mysql" and loaded.mysql_database == settings.mysql_database
    readme = (K8S_DIR / "README.md").read_text()
    assert "kubectl create secret generic tfxops-mlmd-mysql --from-literal=password=" in readme


def test_no_manifest_holds_a_secret(manifests):
    assert not [key for key in manifests if key.startswith("Secret/")]
    for path in sorted(K8S_DIR.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            for env in _all_env(doc):
                if "PASSWORD" in env["name"].upper():
                    assert "value" not in env, f"{path.name}: {env['name']} written in the manifest"


def _all_env(node):
    if isinstance(node, dict):
        yield from node.get("env", []) if isinstance(node.get("env"), list) else []
        for value in node.values():
            yield from _all_env(value)
    elif isinstance(node, list):
        for value in node:
            yield from _all_env(value)
