"""Render everything a node gets: environment + PKI → {relative path: bytes}.

Pure and deterministic: the same environment and PKI give the same bytes (sorted, no
timestamps, nothing random), so an unchanged run never changes user_data or rolls a node.
Every YAML output is parsed back before it leaves. The layout is SPEC's `render --out DIR`:
`cloudconfig/`, `userdata/`, `manifests/<layer>/`, `pki/<prefix>/`, `kubeconfig/admin.conf`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeplat import artifacts, cluster, oidc
from kubeplat.errors import KubeplatError
from kubeplat.node import osfamily
from kubeplat.resources import templates_dir, user_cache

if TYPE_CHECKING:
    import jinja2

    from kubeplat.config import Environment

USERDATA_LIMIT = 16 * 1024


@dataclass(frozen=True)
class Layer:
    """One autoscaling group's kind of node."""

    name: str  # secure, control-plane, compute: the Layer tag and bucket prefixes
    cloudconfig: str  # master, control-plane, worker
    etcd: bool
    control_plane: bool
    worker: bool


def layers(env: Environment) -> tuple[Layer, ...]:
    """The environment's layers: etcd (+ control plane when stacked), [control plane], compute."""
    stacked = env.topology == "stacked"
    found = [Layer("secure", "master", etcd=True, control_plane=stacked, worker=False)]
    if not stacked:
        found.append(Layer("control-plane", "control-plane", False, True, False))
    found.append(Layer("compute", "worker", etcd=False, control_plane=False, worker=True))
    return tuple(found)


# Which PKI files each role's nodes get (relative to pki/); everything else is locked.
_ETCD_FILES = ("etcd/server", "etcd/peer", "etcd/healthcheck-client")
_CONTROL_PLANE_FILES = (
    "apiserver",
    "apiserver-kubelet-client",
    "apiserver-etcd-client",
    "front-proxy-client",
    "controller-manager",
    "scheduler",
)
_COMMON = ("ca.crt", "front-proxy-ca.crt", "etcd/ca.crt", "kubelet-ca.crt")


def pki_layout(env: Environment, files: Mapping[str, bytes]) -> dict[str, bytes]:
    """The PKI as the secrets bucket holds it: `common/`, one prefix a layer, `locked/`."""
    from kubeplat import pki  # not at the top: `stubs` (an early plan) needs no cryptography

    placed: dict[str, bytes] = {}
    handed_out: set[str] = set()

    def give(prefix: str, name: str) -> None:
        if name not in files:
            raise KubeplatError(f"missing value: PKI file {name}", "run: kubeplat certs -e ENV")
        placed[f"{prefix}/{name}"] = files[name]
        handed_out.add(name)

    for name in _COMMON:
        give("common", name)
    # What nodes trust: during a staged rotation the new CA beside the old one (the signing
    # one first). kubelet-ca.crt itself stays one certificate: the controller-manager signs with
    # it, and the API server trusts the kubelet CAs through client-ca-bundle.crt.
    for ca in ("ca", "front-proxy-ca", "etcd/ca"):
        placed[f"common/{ca}.crt"] = pki.trust_bundle(files, ca)
    placed["common/client-ca-bundle.crt"] = pki.trust_bundle(files, "ca") + pki.trust_bundle(
        files, "kubelet-ca"
    )
    # What the API server checks kubelets' serving certificates with (approved CSRs).
    placed["common/kubelet-serving-ca.crt"] = pki.trust_bundle(files, "kubelet-ca")
    # The node user's authorized_keys, which the bootstrap and the agent install (so a new or
    # rotated key reaches running nodes without replacing them).
    placed[f"common/{pki.AUTHORIZED_KEYS}"] = pki.trust_bundle(files, "ssh")
    for layer in layers(env):
        wanted: list[str] = []
        if layer.etcd:
            wanted += [f"{n}.{ext}" for n in _ETCD_FILES for ext in ("crt", "key")]
        if layer.control_plane:
            wanted += [f"{n}.{ext}" for n in _CONTROL_PLANE_FILES for ext in ("crt", "key")]
            wanted += ["sa.key", "sa.pub", "kubelet-ca.key", "bootstrap-token"]
            wanted += ["bootstrap-token-expiration"]
        if layer.worker:
            wanted += ["bootstrap-token"]
        for name in wanted:
            give(layer.name, name)
        if "sa.pub" in wanted:
            placed[f"{layer.name}/sa.pub"] = pki.trust_bundle(files, "sa")
        if layer.control_plane:
            placed[f"{layer.name}/{pki.ENCRYPTION_CONFIG}"] = pki.encryption_config(
                files, encrypt=env.secrets_encryption
            )
    for name in sorted(set(files) - handed_out):
        # The CA keys, the admin identity and the SSH key: no node role may read these.
        placed[f"locked/{name}"] = files[name]
    return placed


def _environment() -> jinja2.Environment:
    return _jinja(str(templates_dir()))


@cache
def _jinja(folder: str) -> jinja2.Environment:
    import jinja2

    loader = jinja2.FileSystemLoader(folder)
    # Compiled templates are kept between runs (keyed by each template's source checksum):
    # compiling them is most of the time the stubs take, which Terraform's plan waits for.
    cached = user_cache("jinja")
    jinja = jinja2.Environment(
        loader=loader,
        bytecode_cache=jinja2.FileSystemBytecodeCache(str(cached)) if cached else None,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    jinja.filters["yaml_string"] = lambda text: json.dumps(text, ensure_ascii=False)
    return jinja


def _render(template: str, context: Mapping[str, Any]) -> str:
    import jinja2

    try:
        return _environment().get_template(template).render(**context)
    except jinja2.UndefinedError as exc:
        raise KubeplatError(
            f"missing value in template {template}: {exc.message}",
            "a template uses a value render does not provide; check templates/",
        ) from None
    except jinja2.TemplateError as exc:
        raise KubeplatError(f"template {template} is broken: {exc}", "check templates/") from None


def _yaml_checked(name: str, text: str) -> bytes:
    """Parse YAML back (every document) so nothing malformed leaves render."""
    import yaml

    # libyaml's safe loader when PyYAML has it (10x faster), else the pure-Python one.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        list(yaml.load_all(text, Loader=loader))
    except yaml.YAMLError as exc:
        raise KubeplatError(
            f"rendered {name} is not valid YAML: {exc}", "check templates/"
        ) from None
    return text.encode()


def _partition(region: str) -> str:
    from kubeplat import state

    return state.partition(region)


def cluster_name(env: Environment) -> str:
    """The cluster's name for AWS: what `kubernetes.io/cluster/NAME` tags (subnets, security
    groups, instances, volumes, load balancers) carry, as the module names the environment's
    resources."""
    return f"{env.environment}-{env.platform}"


def base_context(env: Environment) -> dict[str, Any]:
    """Values every template may use."""
    return {
        "environment": env.environment,
        "region": env.aws_region,
        "bucket": env.secrets_bucket_name,
        "prefix": env.environment,
        "kubernetes_version": env.kubernetes_version,
        "etcd_version": env.etcd_version,
        "etcd_snapshot_minutes": env.etcd_snapshot_minutes,
        "etcd_snapshot_keep": env.etcd_snapshot_keep,
        "etcd_snapshot_max_age_days": env.etcd_snapshot_max_age_days,
        "api_url": f"https://{env.api_dns_name}",
        "api_port": cluster.API_PORT,
        "etcd_client_port": cluster.ETCD_CLIENT_PORT,
        "etcd_peer_port": cluster.ETCD_PEER_PORT,
        "service_cidr": cluster.SERVICE_CIDR,
        "pod_cidr": cluster.POD_CIDR,
        "cluster_domain": cluster.CLUSTER_DOMAIN,
        "cluster_dns_ip": cluster.CLUSTER_DNS_IP,
        "pause_image": artifacts.PAUSE_IMAGE,
        "coredns_image": artifacts.COREDNS_IMAGE,
        "flannel_image": artifacts.FLANNEL_IMAGE,
        "flannel_cni_image": artifacts.FLANNEL_CNI_IMAGE,
        "service_account_issuer": oidc.issuer(env),
        "cloud_controller_manager": env.cloud_controller_manager,
        "metrics_server": env.metrics_server,
        "ebs_csi_driver": env.ebs_csi_driver and env.pod_identity,
        "kms_key": env.kms_master_id,
        "partition": _partition(env.aws_region),
        "cluster_name": cluster_name(env),
        # The layer whose nodes run the API servers (and the controllers beside them).
        "api_layer": "secure" if env.topology == "stacked" else "control-plane",
        "images": {**artifacts.IMAGES, **artifacts.kubernetes_images(env.kubernetes_version)},
        "audit_log": env.audit_log,
        "audit_log_max_age_days": env.audit_log_max_age_days,
        "audit_log_max_backups": env.audit_log_max_backups,
        "audit_log_max_size_mb": env.audit_log_max_size_mb,
    }


def _layer_context(env: Environment, layer: Layer) -> dict[str, Any]:
    stacked = env.topology == "stacked"
    etcd_servers = (
        f"https://127.0.0.1:{cluster.ETCD_CLIENT_PORT}"
        if stacked
        else f"https://secure.{env.environment}.{env.dns_zone_name}:{cluster.ETCD_CLIENT_PORT}"
    )
    family = osfamily.by_name(env.node_os)
    return {
        **base_context(env),
        "layer": layer.name,
        "node_user": NODE_USER,
        "etcd": layer.etcd,
        "control_plane": layer.control_plane,
        "worker": layer.worker,
        "etcd_servers": etcd_servers,
        # Control-plane nodes talk to their own API server; the others to the internal one.
        "node_api_url": (
            f"https://127.0.0.1:{cluster.API_PORT}"
            if layer.control_plane
            else f"https://{env.api_dns_name}"
        ),
        "ca_bundle": family.ca_bundle,
    }


def _artifacts(env: Environment, layer: Layer) -> list[dict[str, Any]]:
    """The pinned binaries the layer's nodes install, as their bootstrap reads them."""
    chosen = [*artifacts.RUNTIME, *artifacts.kubernetes(env.kubernetes_version)]
    if not layer.control_plane:
        chosen = [a for a in chosen if a.name != "kubectl"]
    if layer.etcd:
        chosen.append(artifacts.etcd(env.etcd_version))
    return artifacts.for_node(chosen, env.artifact_mirror)


NODE_LIB = "/opt/kubeplat/lib/kubeplat_node"
NODE_COMMAND = "/opt/kubeplat/bin/kubeplat-node"
_LAUNCHER = f"""#!/usr/bin/python3
\"\"\"kubeplat's node programs: {NODE_COMMAND} COMMAND (see {NODE_LIB}/).\"\"\"
import sys

sys.path.insert(0, "{Path(NODE_LIB).parent}")
from kubeplat_node.cli import entry  # noqa: E402

entry()
"""


def _node_programs() -> list[tuple[str, str, str]]:
    """The `kubeplat.node` package as files, and the command that runs it."""
    package = Path(__file__).resolve().parent / "node"
    files = [
        (f"{NODE_LIB}/{source.name}", "0644", source.read_text(encoding="utf-8"))
        for source in sorted(package.glob("*.py"))
    ]
    return [*files, (NODE_COMMAND, "0755", _LAUNCHER)]


def node_config(env: Environment, layer: Layer) -> dict[str, Any]:
    """`/etc/kubeplat/node.json`: what the node's bootstrap needs to know (no secret)."""
    roles = [
        role
        for role, present in (
            ("etcd", layer.etcd),
            ("control-plane", layer.control_plane),
            ("worker", layer.worker),
        )
        if present
    ]
    services = ["containerd.service", "kubelet.service", "kubeplat-agent.service"]
    if layer.control_plane:
        services += ["kubeplat-csr-approver.service", "kubeplat-roller.service"]
    if layer.etcd:
        services[:0] = [
            "etcd.service",
            "kubeplat-etcd-watch.service",
            "kubeplat-etcd-snapshot.timer",
        ]
    return {
        "environment": env.environment,
        "layer": layer.name,
        "bucket": env.secrets_bucket_name,
        "prefix": env.environment,
        "region": env.aws_region,
        "node_os": env.node_os,
        "roles": roles,
        "ssh_user": NODE_USER,
        "pki_dir": "/etc/kubernetes/pki",
        "artifacts": _artifacts(env, layer),
        "kubelet": {
            "config_template": "/etc/kubeplat/kubelet-config.yaml",
            "config": "/var/lib/kubelet/config.yaml",
            "bootstrap_template": "/etc/kubeplat/bootstrap-kubelet.conf",
            "bootstrap": "/etc/kubernetes/bootstrap-kubelet.conf",
            "node_env": "/etc/kubernetes/kubelet-node.env",
        },
        "services": services,
        "background": ["kubeplat-addons.service"] if layer.control_plane else [],
    }


def _kubeconfig(
    ctx: Mapping[str, Any], user: str, server: str, cert: str = "", key: str = ""
) -> str:
    return _render(
        "partials/node/kubeconfig.yaml.j2",
        {**ctx, "user": user, "server": server, "token": not cert, "certificate": cert, "key": key},
    )


def _node_files(env: Environment, layer: Layer) -> list[dict[str, str]]:
    """Every file the layer's cloud-config writes: (path, mode, content)."""
    ctx = _layer_context(env, layer)
    part = "partials/node/"
    units = "/etc/systemd/system/"

    def unit(name: str) -> tuple[str, str, str]:
        """A systemd unit, from the template of the same name."""
        return (units + name, "0644", _render(part + name + ".j2", ctx))

    node_cert = "/var/lib/kubelet/pki/kubelet-client-current.pem"
    files: list[tuple[str, str, str]] = [
        *_node_programs(),
        (
            "/etc/kubeplat/node.json",
            "0644",
            json.dumps(node_config(env, layer), indent=1, sort_keys=True) + "\n",
        ),
        unit("kubeplat-bootstrap.service"),
        unit("containerd.service"),
        ("/etc/containerd/config.toml", "0644", _render(part + "containerd.toml.j2", ctx)),
        unit("kubelet.service"),
        (
            "/etc/kubeplat/kubelet-config.yaml",
            "0644",
            _render(part + "kubelet-config.yaml.j2", ctx),
        ),
        (
            "/etc/kubeplat/bootstrap-kubelet.conf",
            "0600",
            _kubeconfig(ctx, "kubelet-bootstrap", ctx["node_api_url"]),
        ),
        (
            "/etc/kubernetes/node.conf",
            "0600",
            _kubeconfig(ctx, "node", ctx["node_api_url"], node_cert, node_cert),
        ),
        (
            "/etc/kube-flannel/net-conf.json",
            "0644",
            _render(part + "flannel-net-conf.json.j2", ctx),
        ),
        (
            "/etc/cni/net.d/10-flannel.conflist",
            "0644",
            _render(part + "flannel-cni.conflist.j2", ctx),
        ),
        ("/etc/modules-load.d/kubeplat.conf", "0644", _render(part + "modules.conf.j2", ctx)),
        ("/etc/sysctl.d/90-kubeplat.conf", "0644", _render(part + "sysctl.conf.j2", ctx)),
    ]
    if layer.etcd:
        files += [
            ("/etc/etcd/etcd.conf.yml.tmpl", "0644", _render(part + "etcd.conf.yml.j2", ctx)),
            unit("etcd.service"),
            unit("kubeplat-etcd-member.service"),
            unit("kubeplat-etcd-watch.service"),
            unit("kubeplat-etcd-snapshot.service"),
            unit("kubeplat-etcd-snapshot.timer"),
        ]
    if layer.control_plane:
        local = f"https://127.0.0.1:{cluster.API_PORT}"
        pki_dir = PKI_DIR
        for user, name in (
            ("system:kube-controller-manager", "controller-manager"),
            ("system:kube-scheduler", "scheduler"),
            ("kubeplat-addons", "apiserver-kubelet-client"),
        ):
            target = "addons" if name == "apiserver-kubelet-client" else name
            files.append(
                (
                    f"/etc/kubernetes/{target}.conf",
                    "0600",
                    _kubeconfig(ctx, user, local, f"{pki_dir}/{name}.crt", f"{pki_dir}/{name}.key"),
                )
            )
        files += [
            ("/opt/kubeplat/bin/apply-addons", "0755", _render(part + "apply-addons.sh.j2", ctx)),
            unit("kubeplat-addons.service"),
            unit("kubeplat-csr-approver.service"),
            unit("kubeplat-roller.service"),
        ]
        if env.audit_log:
            files.append(
                (
                    "/etc/kubernetes/audit-policy.yaml",
                    "0644",
                    _render(part + "audit-policy.yaml.j2", ctx),
                )
            )
        for name, text in sorted(_addons(env).items()):
            files.append((f"/etc/kubernetes/addons/{name}", "0644", text))
    written = {path: content for path, _, content in files}
    reloads = {
        unit: ",".join(names)
        for unit, sources in _UNIT_READS.items()
        if (
            names := sorted(
                {n for f in sources for n in pki_files_read(written.get(f, ""))}
                - _READ_WHEN_USED.get(unit, set())
            )
        )
    }
    agent = _render(part + "kubeplat-agent.service.j2", {**ctx, "reloads": reloads})
    files.append((units + "kubeplat-agent.service", "0644", agent))
    return [{"path": p, "mode": m, "content": c} for p, m, c in sorted(files)]


PKI_DIR = "/etc/kubernetes/pki"
_PKI_PATH = re.compile(re.escape(PKI_DIR) + r"/([A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*)")
_KUBECONFIG_PATH = re.compile(r"/etc/kubernetes/[A-Za-z0-9_-]+\.conf")
# The systemd units that read PKI files, and the files that say which (the static pods say it
# in their manifests): the node agent restarts a unit when one of them changes.
_UNIT_READS = {
    "etcd.service": ("/etc/etcd/etcd.conf.yml.tmpl",),
    "kubelet.service": (
        "/etc/kubeplat/kubelet-config.yaml",
        "/etc/kubeplat/bootstrap-kubelet.conf",
        "/etc/kubernetes/node.conf",
    ),
    "kubeplat-addons.service": ("/opt/kubeplat/bin/apply-addons",),
}
# Files a unit names but reads afresh whenever it uses them: no restart when they change (the
# kubelet reads its bootstrap token only when it asks for a certificate).
_READ_WHEN_USED = {"kubelet.service": {"bootstrap-token"}}


def pki_files_read(text: str) -> set[str]:
    """The PKI files (names under pki/) a configuration text names by path."""
    return set(_PKI_PATH.findall(text))


def _fill_pki_names(text: str, written: Mapping[str, str]) -> str:
    """A static pod's `@PKI@` becomes `@PKI:names@`: every PKI file it names, directly or
    through a kubeconfig it mounts (the node agent digests those files into it)."""
    names = pki_files_read(text)
    for kubeconfig in set(_KUBECONFIG_PATH.findall(text)):
        names |= pki_files_read(written.get(kubeconfig, ""))
    return text.replace("@PKI@", "@PKI:" + ",".join(sorted(names)) + "@")


def _addons(env: Environment) -> dict[str, str]:
    ctx = base_context(env)
    found = {}
    for template in sorted((templates_dir() / "addons").glob("*.yaml.j2")):
        name = template.name.removesuffix(".j2")
        text = _render(f"addons/{template.name}", ctx)
        if not [line for line in text.splitlines() if line.strip() and not line.startswith("#")]:
            continue  # an addon the environment turned off
        found[name] = _yaml_checked(f"addons/{name}", text).decode()
    return found


NODE_USER = "core"


def cloudconfig(env: Environment, layer: Layer) -> bytes:
    """The layer's cloud-config (standard cloud-init, no `coreos:` section).

    It also creates the node user of the seed (`core`, on any distribution); its SSH keys are
    not in here (a new key would replace every node) but in the PKI's common prefix, which the
    bootstrap and the agent install as its authorized_keys.
    """
    text = _render(
        "cloudconfig/layer.yaml.j2",
        {
            **_layer_context(env, layer),
            "files": _node_files(env, layer),
            "node_user": NODE_USER,
        },
    )
    return _yaml_checked(f"cloudconfig/{layer.cloudconfig}", text)


def userdata(env: Environment, layer: Layer, config: bytes) -> bytes:
    """The small stub each instance boots with; it names its configuration by sha256."""
    pki_prefixes = ["common", layer.name]
    text = _render(
        "userdata/stub.sh.j2",
        {
            **_layer_context(env, layer),
            "cloudconfig": f"cloudconfig/{layer.cloudconfig}",
            "config_sha256": hashlib.sha256(config).hexdigest(),
            "pki_prefixes": pki_prefixes,
            "node_user": NODE_USER,
        },
    )
    data = text.encode()
    if len(data) > USERDATA_LIMIT:
        raise KubeplatError(
            f"userdata/{layer.name} is {len(data)} bytes, over AWS's 16 KB limit", "shrink the stub"
        )
    return data


def manifests(env: Environment, layer: Layer) -> dict[str, bytes]:
    """The layer's static pods, as the node agent syncs them."""
    ctx = _layer_context(env, layer)
    sources: list[str] = []
    if layer.control_plane:
        sources += [
            f"manifests/control-plane/{p.name}" for p in _templates("manifests/control-plane")
        ]
    # Every node runs the pod network (flannel) and kube-proxy, control-plane nodes included:
    # webhooks and aggregated APIs served by pods must be reachable from the API servers.
    sources += [f"manifests/node/{p.name}" for p in _templates("manifests/node")]
    written = {f["path"]: f["content"] for f in _node_files(env, layer)}
    found = {}
    for source in sources:
        name = f"manifests/{layer.name}/{Path(source).name.removesuffix('.j2')}"
        found[name] = _yaml_checked(name, _fill_pki_names(_render(source, ctx), written))
    return found


def _templates(folder: str) -> list[Path]:
    return sorted((templates_dir() / folder).glob("*.j2"))


def admin_kubeconfig(
    env: Environment, files: Mapping[str, bytes], server: str | None = None
) -> bytes:
    """The admin kubeconfig: embedded x509 client certificate, the API's https URL."""
    import yaml

    from kubeplat import pki

    def b64(name: str) -> str:
        return base64.b64encode(files[name]).decode()

    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": env.environment,
                "cluster": {
                    "certificate-authority-data": base64.b64encode(
                        pki.trust_bundle(files, "ca")
                    ).decode(),
                    "server": server or f"https://{env.api_dns_name}",
                },
            }
        ],
        "contexts": [
            {
                "name": f"admin@{env.environment}",
                "context": {"cluster": env.environment, "user": f"admin@{env.environment}"},
            }
        ],
        "current-context": f"admin@{env.environment}",
        "preferences": {},
        "users": [
            {
                "name": f"admin@{env.environment}",
                "user": {
                    "client-certificate-data": b64("admin.crt"),
                    "client-key-data": b64("admin.key"),
                },
            }
        ],
    }
    return _yaml_checked("kubeconfig/admin.conf", yaml.safe_dump(document, sort_keys=True))


def stubs(env: Environment) -> dict[str, bytes]:
    """The user-data stubs alone (Terraform's only rendered input), as `bundle` names them:
    rendered from the environment file, without the PKI."""
    return {
        f"userdata/{layer.name}": userdata(env, layer, cloudconfig(env, layer))
        for layer in layers(env)
    }


def bundle(env: Environment, files: Mapping[str, bytes]) -> dict[str, bytes]:
    """Everything a node would get, as SPEC's `render --out DIR` layout."""
    out: dict[str, bytes] = {}
    for layer in layers(env):
        config = cloudconfig(env, layer)
        out[f"cloudconfig/{layer.cloudconfig}"] = config
        out[f"userdata/{layer.name}"] = userdata(env, layer, config)
        out.update(manifests(env, layer))
    out.update({f"pki/{k}": v for k, v in pki_layout(env, files).items()})
    out["kubeconfig/admin.conf"] = admin_kubeconfig(env, files)
    return dict(sorted(out.items()))
