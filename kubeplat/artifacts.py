"""Binaries nodes download, pinned by version and checked by sha256 before use.

Digests as published upstream, copied from kubespray v2.29.0
(roles/kubespray_defaults/vars/main/checksums.yml, commit 9991412b4597d6eaf37f86e5f20f9f903a731c08).
A version without digests here cannot be rendered: kubeplat never installs an unchecked binary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Artifact:
    """One download: where from, and its sha256 per architecture (amd64, arm64)."""

    name: str
    version: str
    url: str  # `{arch}` is replaced by amd64 or arm64
    sha256: dict[str, str]


KUBERNETES = {
    "1.33.5": {
        "kubelet": {
            "amd64": "8f6106b970259486c5af5cbee404d4f23406d96d99dfb92a6965b299c2a4db0e",
            "arm64": "c6ad0510c089d49244eede2638b4a4ff125258fd29a0649e7eef05c7f79c737f",
        },
        "kubectl": {
            "amd64": "6a12d6c39e4a611a3687ee24d8c733961bb4bae1ae975f5204400c0a6930c6fc",
            "arm64": "6db7c5d846c3b3ddfd39f3137a93fe96af3938860eefdbf2429805ee1656e381",
        },
    },
    # kubespray's checksums.yml at 46dbdd3994b32640bcd806b0097f50e8fdf1d514 (kubectl's also
    # published beside dl.k8s.io links elsewhere).
    "1.34.2": {
        "kubelet": {
            "amd64": "9c5e717b774ee9b9285ce47e7d2150c29e84837eb19a7eaa24b60b1543c9d58f",
            "arm64": "3e31b1bee9ab32264a67af8a19679777cd372b1c3a04b5d7621289cf137b357c",
        },
        "kubectl": {
            "amd64": "9591f3d75e1581f3f7392e6ad119aab2f28ae7d6c6e083dc5d22469667f27253",
            "arm64": "95df604e914941f3172a93fa8feeb1a1a50f4011dfbe0c01e01b660afc8f9b85",
        },
    },
}

ETCD = {
    "3.5.21": {
        "amd64": "adddda4b06718e68671ffabff2f8cee48488ba61ad82900e639d108f2148501c",
        "arm64": "95bf6918623a097c0385b96f139d90248614485e781ec9bee4768dbb6c79c53f",
    },
    "3.5.23": {
        "amd64": "8b50d62d38cb2de005b42227dd14b33f6e01758970f248f9257789ecfaf634c9",
        "arm64": "d95118595a9556a29775f99c1ef2ee16f6be113df76b7178643a2bfd6a6f37c3",
    },
}

RUNTIME = (
    Artifact(
        "containerd",
        "2.1.4",
        "https://github.com/containerd/containerd/releases/download/v2.1.4/"
        "containerd-2.1.4-linux-{arch}.tar.gz",
        {
            "amd64": "316d510a0428276d931023f72c09fdff1a6ba81d6cc36f31805fea6a3c88f515",
            "arm64": "846d13bc2bf1c01ae2f20d13beb9b3a1e50b52c86e955b4ac7d658f5847f2b0e",
        },
    ),
    Artifact(
        "runc",
        "1.3.2",
        "https://github.com/opencontainers/runc/releases/download/v1.3.2/runc.{arch}",
        {
            "amd64": "e7a8e30bd6d248f494aae9163521ff4eb112a30602ac56ada0871e3531269c2d",
            "arm64": "06fbccb4528ecd490f3f333d6dcf22c876bd72a024813a0c0a46312121f4c5fd",
        },
    ),
    Artifact(
        "cni-plugins",
        "1.8.0",
        "https://github.com/containernetworking/plugins/releases/download/v1.8.0/"
        "cni-plugins-linux-{arch}-v1.8.0.tgz",
        {
            "amd64": "ab3bda535f9d90766cccc90d3dddb5482003dd744d7f22bcf98186bf8eea8be6",
            "arm64": "57ce466fc3b79db1f19b8f4c63e07a1112306efa53c94fe810a2150dd9e07ddb",
        },
    ),
)

# Images by tag and digest (the digest is what runs: a tag can be moved), as registry.k8s.io's
# own records give them (kubernetes/k8s.io, registry.k8s.io/images/k8s-staging-*/images.yaml:
# the multi-architecture digests); `kubeplat versions` shows them. flannel's (ghcr.io): below.
IMAGES = {
    "aws-cloud-controller-manager": "registry.k8s.io/provider-aws/cloud-controller-manager:v1.33.4"
    "@sha256:b54bc094711e9d7ace6c9bab3d6f02a598e7570ac1fedd6341940e1de79ea476",
    # The EBS CSI driver and the Kubernetes CSI sidecars its controller and node plugin run.
    "aws-ebs-csi-driver": "registry.k8s.io/provider-aws/aws-ebs-csi-driver:v1.63.1"
    "@sha256:150de06f37bd1bc2ae09e311029edb4a14889b215f59ca3d4ba4e37f4668e867",
    "csi-provisioner": "registry.k8s.io/sig-storage/csi-provisioner:v6.0.0"
    "@sha256:0c537015fe9cf9d53d79d0181e17a78ee784303cd46bf957016605488f212327",
    "csi-attacher": "registry.k8s.io/sig-storage/csi-attacher:v4.10.0"
    "@sha256:be59d0556508d3dd419cc34c53062f170a28902ef36e832b947c7796458a083d",
    "csi-resizer": "registry.k8s.io/sig-storage/csi-resizer:v2.0.0"
    "@sha256:4a95d94e57ad82f6977cd8d4fdcfcfc0b83f02d990e4e7715b688c20970a906d",
    "livenessprobe": "registry.k8s.io/sig-storage/livenessprobe:v2.17.0"
    "@sha256:9b75b9ade162136291d5e8f13a1dfc3dec71ee61419b1bfc112e0796ff8a6aa9",
    "csi-node-driver-registrar": "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.15.0"
    "@sha256:11f199f6bec47403b03cb49c79a41f445884b213b382582a60710b8c6fdc316a",
    # 0.8.x serves Kubernetes 1.31 and later (its README's matrix).
    "metrics-server": "registry.k8s.io/metrics-server/metrics-server:v0.8.0"
    "@sha256:89258156d0e9af60403eafd44da9676fd66f600c7934d468ccc17e42b199aee2",
}
# The control plane's and kube-proxy's images of each Kubernetes version (a version without
# them cannot be rendered, as without its binaries' digests).
KUBERNETES_IMAGES = {
    "1.33.5": {
        "kube-apiserver": "sha256:1b9c6c00bc1fe86860e72efb8e4148f9e436a132eba4ca636ca4f48d61d6dfb4",
        "kube-controller-manager": (
            "sha256:1082a6ab67fb46397314dd36b36cb197ba4a4c5365033e9ad22bc7edaaaabd5c"
        ),
        "kube-scheduler": "sha256:3e7b57c9d9f06b77f0064e5be7f3df61e0151101160acd5fdecce911df28a189",
        "kube-proxy": "sha256:71445ec84ad98bd52a7784865a9d31b1b50b56092d3f7699edc39eefd71befe1",
    },
    # registry.k8s.io's images.yaml as a fork of kubernetes/k8s.io holds it (Skarlso/k8s.io at
    # 45457b5ddb27e17ba962cad2c779b155c97c798a; the stored upstream copy ends at v1.34.0 and
    # agrees with the fork where both have a tag), each also pinned so by an unrelated
    # configuration (randomcoww/homelab at f3586911329c0d9b3833c65661a01b8c03bd5bd5).
    "1.34.2": {
        "kube-apiserver": "sha256:e009ef63deaf797763b5bd423d04a099a2fe414a081bf7d216b43bc9e76b9077",
        "kube-controller-manager": (
            "sha256:5c3998664b77441c09a4604f1361b230e63f7a6f299fc02fc1ebd1a12c38e3eb"
        ),
        "kube-scheduler": "sha256:44229946c0966b07d5c0791681d803e77258949985e49b4ab0fbdff99d2a48c6",
        "kube-proxy": "sha256:d8b843ac8a5e861238df24a4db8c2ddced89948633400c4660464472045276f5",
    },
}


def kubernetes_images(version: str) -> dict[str, str]:
    """kube-apiserver, kube-controller-manager, kube-scheduler and kube-proxy of one version."""
    return {
        name: f"registry.k8s.io/{name}:v{version}@{digest}"
        for name, digest in KUBERNETES_IMAGES[version].items()
    }


PAUSE_IMAGE = (
    "registry.k8s.io/pause:3.10"
    "@sha256:ee6521f290b2168b6e0935a181d4cff9be1ac3f505666ef0e3c98fae8199917a"
)
COREDNS_IMAGE = (
    "registry.k8s.io/coredns/coredns:v1.12.0"
    "@sha256:40384aa1f5ea6bfdc77997d243aec73da05f27aed0c5e9d65bfa98933c519d97"
)
# ghcr.io's records could not be read here: these digests are the ones nodes that pulled these
# tags recorded (pod statuses' imageID and containerd's pull log in public issue reports) and
# that pinned configurations name, each seen in at least two independent places.
FLANNEL_IMAGE = (
    "ghcr.io/flannel-io/flannel:v0.27.3"
    "@sha256:8cc0cf9e94df48e98be84bce3e61984bbd46c3c44ad35707ec7ef40e96b009d1"
)
FLANNEL_CNI_IMAGE = (
    "ghcr.io/flannel-io/flannel-cni-plugin:v1.7.1-flannel1"
    "@sha256:cb3176a2c9eae5fa0acd7f45397e706eacb4577dac33cad89f93b775ff5611df"
)


# How each artifact is installed on a node (kubeplat/node/fetch.py): `bin` puts the file at
# `dest`; `tar` extracts regular files under `dest`, minus `strip` leading folders, only the
# names in `only` when given; `check` lists files whose presence means it is installed.
INSTALL: dict[str, dict[str, Any]] = {
    "containerd": {"kind": "tar", "dest": "/usr/local", "check": ["bin/containerd"]},
    "runc": {"kind": "bin", "dest": "/usr/local/sbin/runc"},
    "cni-plugins": {
        "kind": "tar",
        "dest": "/opt/cni/bin",
        "check": ["bridge", "host-local", "loopback", "portmap"],
    },
    "kubelet": {"kind": "bin", "dest": "/usr/local/bin/kubelet"},
    "kubectl": {"kind": "bin", "dest": "/usr/local/bin/kubectl"},
    "etcd": {
        "kind": "tar",
        "dest": "/usr/local/bin",
        "strip": 1,
        "only": ["etcd", "etcdctl", "etcdutl"],
        "check": ["etcd", "etcdctl"],
    },
}


def mirrored(url: str, mirror: str) -> str:
    """Where `url` lives in an artifact mirror: `<mirror>/<host>/<path>` (kubespray's
    `files_repo` layout), so a mirror is filled by downloading with the host kept."""
    if not mirror:
        return url
    parts = urlsplit(url)
    return f"{mirror.rstrip('/')}/{parts.netloc}{parts.path}"


def for_node(artifacts: list[Artifact], mirror: str = "") -> list[dict[str, Any]]:
    """The artifacts as a node's bootstrap reads them: URL and sha256 per architecture."""
    return [
        {
            "name": a.name,
            "version": a.version,
            "urls": {arch: mirrored(a.url.replace("{arch}", arch), mirror) for arch in a.sha256},
            "sha256": dict(a.sha256),
            "install": INSTALL[a.name],
        }
        for a in artifacts
    ]


def kubernetes(version: str) -> list[Artifact]:
    """kubelet and kubectl of one Kubernetes version."""
    digests = KUBERNETES[version]
    return [
        Artifact(
            name, version, f"https://dl.k8s.io/release/v{version}/bin/linux/{{arch}}/{name}", sha
        )
        for name, sha in sorted(digests.items())
    ]


def etcd(version: str) -> Artifact:
    """The etcd release tarball of one version."""
    return Artifact(
        "etcd",
        version,
        f"https://github.com/etcd-io/etcd/releases/download/v{version}/"
        f"etcd-v{version}-linux-{{arch}}.tar.gz",
        ETCD[version],
    )
