"""pyproxy's image as a user builds it: the repository's Dockerfile, built with podman, on a
`debian:12-slim` base made here (no registry is reachable) and saved as an archive that lab
nodes import (`ctr images import`) under the name daemonset.yaml runs.

The base is a `debootstrap --variant=minbase bookworm` from Debian's mirror, carrying this
machine's local CA certificates and /etc/pip.conf (the egress here re-signs TLS: without them the
Dockerfile's `pip install` fails certificate verification, as it would behind any such proxy).
Both live outside the work tree: podman's own storage, and the archive under the upstream cache
(`images/`, beside images.py's). The build runs with `--network=host` so podman makes no bridge or rules in this
machine's namespace; `--pull=never` so the base made here is the one used.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from . import upstream

BASE_IMAGE = "docker.io/library/debian:12-slim"  # the Dockerfile's FROM, normalised
MIRROR = "http://deb.debian.org/debian"
LOCAL_TRUST = ("/usr/local/share/ca-certificates", "/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf")


class ImageBuildError(RuntimeError):
    pass


def _podman(*args: str, input_file=None) -> subprocess.CompletedProcess:
    if shutil.which("podman") is None:
        raise ImageBuildError("podman is not installed (apt-get install podman)")
    # no systemd here: cgroupfs and a file event log
    return subprocess.run(["podman", "--cgroup-manager=cgroupfs", "--events-backend=file", *args],
                          stdin=input_file, capture_output=True, text=True)


def podman(*args: str, input_file=None) -> str:
    proc = _podman(*args, input_file=input_file)
    if proc.returncode:
        raise ImageBuildError(f"podman {args[0]} failed: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc.stdout


def image_exists(name: str) -> bool:
    return _podman("image", "exists", name).returncode == 0


def base_image() -> str:
    """debian:12-slim from debootstrap, once (about 4 minutes cold)."""
    if image_exists(BASE_IMAGE):
        return BASE_IMAGE
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed (apt-get install debootstrap)")
    rootfs = os.path.join(_cache(), "rootfs-bookworm")
    shutil.rmtree(rootfs, ignore_errors=True)
    proc = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", rootfs, MIRROR], capture_output=True, text=True)
    if proc.returncode:
        raise ImageBuildError(f"debootstrap failed: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    try:
        for path in LOCAL_TRUST:
            if os.path.isdir(path):
                shutil.copytree(path, rootfs + path, dirs_exist_ok=True)
            elif os.path.exists(path):
                # minbase has no ca-certificates package, so maybe no /etc/ssl/certs either
                os.makedirs(os.path.dirname(rootfs + path), exist_ok=True)
                shutil.copy(path, rootfs + path)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in os.listdir(os.path.join(rootfs, cache)):
                path = os.path.join(rootfs, cache, entry)
                if os.path.isfile(path):
                    os.unlink(path)
        tar = subprocess.Popen(["tar", "-C", rootfs, "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        podman("import", "-", BASE_IMAGE, input_file=tar.stdout)
        tar.wait()
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return BASE_IMAGE


def build_pyproxy_image(repo: str, name: str) -> str:
    """`podman build` of the repository's Dockerfile tagged `name` (normalised, as the kubelet
    resolves daemonset.yaml's image); returns a docker-archive of it for `ctr images import`."""
    return _build(repo, os.path.join(repo, "Dockerfile"), name, "pyproxy-image.tar")


KUBE_PROXY_CONTEXT = os.path.join(os.path.dirname(__file__), "kube-proxy")


def build_kube_proxy_image() -> tuple[str, str]:
    """The baseline's image, registry.k8s.io/kube-proxy:<version>, from the kube-proxy built here
    (kube-proxy/Dockerfile); returns its name and a docker-archive of it."""
    name = f"registry.k8s.io/kube-proxy:{upstream.K8S_VERSION}"
    context = os.path.join(_cache(), "kube-proxy-context")
    os.makedirs(context, exist_ok=True)
    shutil.copy(os.path.join(upstream.ensure("kube-proxy"), "kube-proxy"), os.path.join(context, "kube-proxy"))
    return name, _build(context, os.path.join(KUBE_PROXY_CONTEXT, "Dockerfile"), name, "kube-proxy-image.tar")


def _build(context: str, dockerfile: str, name: str, archive_name: str) -> str:
    base_image()
    podman("build", "--pull=never", "--network=host", "-t", name, "-f", dockerfile, context)
    archive = os.path.join(_cache(), archive_name)
    if os.path.exists(archive):
        os.unlink(archive)
    podman("save", "--format", "docker-archive", "-o", archive, name)
    return archive


def normalized(image: str) -> str:
    """What containerd's CRI calls `image`: docker.io/library/ for a bare name."""
    first = image.split("/", 1)[0]
    if "/" not in image:
        return f"docker.io/library/{image}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{image}"
    return image


def _cache() -> str:
    path = os.path.join(upstream.cache_dir(), "images")
    os.makedirs(path, exist_ok=True)
    return path
