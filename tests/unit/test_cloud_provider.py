"""The AWS cloud controller manager as rendered: kubelets and the controller-manager hand their
cloud work to it, it runs where the API does, pinned by digest; off, nothing of it is rendered.
(`kubernetes-validate --strict` reads the addon in tests/integration/test_render_consumers.py;
the module's tags and the API layer's IAM statements are in test_module_apply.py.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeplat import artifacts, config, render

ADDON = "/etc/kubernetes/addons/aws-cloud-controller-manager.yaml"


@pytest.fixture
def env(environments: Path) -> config.Environment:
    return config.load("example")


def files_of(env: config.Environment, layer_name: str) -> dict[str, str]:
    layer = next(x for x in render.layers(env) if x.name == layer_name)
    return {f["path"]: f["content"] for f in render._node_files(env, layer)}


def controller_manager(env: config.Environment, layer_name: str) -> list[str]:
    layer = next(x for x in render.layers(env) if x.name == layer_name)
    text = render.manifests(env, layer)[f"manifests/{layer_name}/kube-controller-manager.yaml"]
    return list(yaml.safe_load(text)["spec"]["containers"][0]["command"])


def documents(text: str) -> dict[str, Any]:
    return {d["kind"]: d for d in yaml.safe_load_all(text) if d}


@pytest.mark.parametrize(
    ("topology", "api_layer"), [("stacked", "secure"), ("separate", "control-plane")]
)
def test_the_cloud_work_goes_to_the_cloud_controller_manager_where_the_api_runs(
    env: config.Environment, topology: str, api_layer: str
) -> None:
    env = dataclasses.replace(env, topology=topology)
    for layer in render.layers(env):
        unit = files_of(env, layer.name)["/etc/systemd/system/kubelet.service"]
        assert "--cloud-provider=external" in unit
        assert "EnvironmentFile=/etc/kubernetes/kubelet-node.env" in unit
        assert "$KUBELET_NODE_ARGS" in unit
        config_template = files_of(env, layer.name)["/etc/kubeplat/kubelet-config.yaml"]
        assert 'providerID: "@PROVIDER_ID@"' in config_template
    assert "--cloud-provider=external" in controller_manager(env, api_layer)
    addon = documents(files_of(env, api_layer)[ADDON])
    assert ADDON not in files_of(env, "compute")
    daemon = addon["DaemonSet"]["spec"]["template"]["spec"]
    assert daemon["nodeSelector"] == {"node.kubeplat.io/layer": api_layer}
    assert daemon["hostNetwork"] is True
    assert {"key": "node.cloudprovider.kubernetes.io/uninitialized", "value": "true",
            "effect": "NoSchedule"} in daemon["tolerations"]  # fmt: skip
    [container] = daemon["containers"]
    assert container["image"] == artifacts.IMAGES["aws-cloud-controller-manager"]
    assert "@sha256:" in container["image"] and ":v1.33." in container["image"]
    assert f"--cluster-name={render.cluster_name(env)}" in container["args"]
    assert "--configure-cloud-routes=false" in container["args"]
    assert addon["ConfigMap"]["data"]["cloud.conf"] == (
        f"[Global]\nKubernetesClusterID = {render.cluster_name(env)}\n"
    )


def test_the_cluster_name_is_the_modules_tag(env: config.Environment) -> None:
    """The tag the CCM looks for is the one Terraform puts on subnets, groups and instances."""
    locals_tf = (Path(render.__file__).parent.parent / "terraform" / "locals.tf").read_text()
    assert 'name     = "${var.environment}-${var.platform}"' in locals_tf
    assert '"kubernetes.io/cluster/${local.name}" = "owned"' in locals_tf
    assert render.cluster_name(env) == f"{env.environment}-{env.platform}"


def test_off_renders_no_cloud_controller_and_no_external_provider(
    env: config.Environment,
) -> None:
    off = dataclasses.replace(env, cloud_controller_manager=False)
    for layer in render.layers(off):
        files = files_of(off, layer.name)
        assert "--cloud-provider" not in files["/etc/systemd/system/kubelet.service"]
        assert ADDON not in files
    assert not [f for f in controller_manager(off, "secure") if f.startswith("--cloud-provider")]


METRICS = "/etc/kubernetes/addons/metrics-server.yaml"


def test_metrics_server_checks_kubelets_with_the_kubelet_ca_every_node_has(
    env: config.Environment,
) -> None:
    from kubeplat import pki

    text = files_of(env, "secure")[METRICS]
    kinds = [d["kind"] for d in yaml.safe_load_all(text) if d]
    assert "APIService" in kinds and "Deployment" in kinds
    deployment = documents(text)["Deployment"]["spec"]["template"]["spec"]
    [container] = deployment["containers"]
    assert container["image"] == artifacts.IMAGES["metrics-server"]
    assert "@sha256:" in container["image"]
    ca_arg = next(a for a in container["args"] if a.startswith("--kubelet-certificate-authority="))
    mount = next(m for m in container["volumeMounts"] if m["name"] == "kubelet-ca")
    assert ca_arg.split("=", 1)[1] == mount["mountPath"]
    host = next(v for v in deployment["volumes"] if v["name"] == "kubelet-ca")["hostPath"]["path"]
    # The file the node agent keeps in step on every node: the kubelet CA bundle in pki/common/.
    placed = render.pki_layout(env, pki.ensure(env, {}).files)
    assert host == "/etc/kubernetes/pki/kubelet-serving-ca.crt"
    assert placed["common/kubelet-serving-ca.crt"].startswith(b"-----BEGIN CERTIFICATE-----")
    off = dataclasses.replace(env, metrics_server=False)
    assert METRICS not in files_of(off, "secure")


EBS = "/etc/kubernetes/addons/ebs-csi-driver.yaml"


def test_the_ebs_driver_assumes_its_own_role_and_volumes_are_encrypted_gp3(
    env: config.Environment,
) -> None:
    text = files_of(env, "secure")[EBS]
    objects = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(text) if d}
    storage = objects[("StorageClass", "gp3")]
    assert storage["metadata"]["annotations"] == {
        "storageclass.kubernetes.io/is-default-class": "true"
    }
    assert storage["provisioner"] == "ebs.csi.aws.com"
    assert storage["volumeBindingMode"] == "WaitForFirstConsumer"
    assert storage["parameters"]["type"] == "gp3"
    assert storage["parameters"]["encrypted"] == "true"
    assert storage["parameters"]["kmsKeyId"] == env.kms_master_id
    controller = objects[("Deployment", "ebs-csi-controller")]["spec"]["template"]["spec"]
    assert controller["serviceAccountName"] == "ebs-csi-controller-sa"
    plugin = next(c for c in controller["containers"] if c["name"] == "ebs-plugin")
    env_vars = {e["name"]: e for e in plugin["env"]}
    # The role's account from the ConfigMap apply-addons writes, the name Terraform gives it.
    assert env_vars["AWS_ACCOUNT_ID"]["valueFrom"]["configMapKeyRef"] == {
        "name": "kubeplat-aws",
        "key": "account-id",
    }
    name = render.cluster_name(env)
    assert (
        env_vars["AWS_ROLE_ARN"]["value"] == f"arn:aws:iam::$(AWS_ACCOUNT_ID):role/{name}-ebs-csi"
    )
    identity_tf = (Path(render.__file__).parent.parent / "terraform" / "identity.tf").read_text()
    assert 'name               = "${local.cluster_name}-ebs-csi"' in identity_tf
    assert "system:serviceaccount:kube-system:ebs-csi-controller-sa" in identity_tf
    token = env_vars["AWS_WEB_IDENTITY_TOKEN_FILE"]["value"]
    mount = next(m for m in plugin["volumeMounts"] if m["name"] == "aws-token")
    assert token == mount["mountPath"] + "/token"
    projected = next(v for v in controller["volumes"] if v["name"] == "aws-token")["projected"]
    assert projected["sources"][0]["serviceAccountToken"]["audience"] == "sts.amazonaws.com"
    assert f"--k8s-tag-cluster-id={name}" in plugin["args"]
    # Every image of the driver pinned by digest.
    for kind, object_name in (("Deployment", "ebs-csi-controller"), ("DaemonSet", "ebs-csi-node")):
        for container in objects[(kind, object_name)]["spec"]["template"]["spec"]["containers"]:
            assert container["image"] in artifacts.IMAGES.values(), container["image"]
    off = dataclasses.replace(env, ebs_csi_driver=False)
    assert EBS not in files_of(off, "secure")


def test_the_ebs_driver_needs_pod_identity(environments: Path) -> None:
    path = environments / "example.tfvars"
    path.write_text(path.read_text() + "\npod_identity = false\n")
    with pytest.raises(config.ConfigError) as info:
        config.load("example")
    [problem] = [str(p) for p in info.value.problems if not p.warning]
    assert "ebs_csi_driver: needs pod_identity" in problem
    assert "hint: set pod_identity = true, or ebs_csi_driver = false" in problem
    path.write_text(path.read_text() + "ebs_csi_driver = false\n")
    assert config.load("example").ebs_csi_driver is False
