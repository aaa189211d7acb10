"""Container images without a registry: OCI image archives written here from files on this
machine, and imported into a lab node's containerd (`ctr -n k8s.io images import`).

    pause    a static C program (pause.c below, compiled with `gcc -static`) that sleeps until
             SIGINT/SIGTERM and reaps the zombies it inherits as a sandbox's PID 1
    agnhost  upstream's test program (built by build-upstream.sh) at /agnhost, ENTRYPOINT
             /agnhost as upstream's image has it, with Debian's busybox-static for a shell and
             the small tools, and this host's nc (netcat-openbsd), curl, dig, bash, ip and ss with
             their libraries (AGNHOST_TOOLS), as upstream's alpine-based image has them

An archive holds both an OCI image layout (index.json naming the image with containerd's
`io.containerd.image.name` annotation and the OCI ref name) and Docker's manifest.json
(RepoTags), so `ctr images import` names it under the registry name the components expect.
Archives are written deterministically (mtime 0, sorted entries), so the same inputs give the
same image digest. They are cached under the upstream cache (`images/`), never in the work tree.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass

from . import upstream

PAUSE_IMAGE = "registry.k8s.io/pause:3.10.2"  # what kubelet/containerd 2.x and e2e 1.37 name
AGNHOST_IMAGE = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"  # e2e 1.37's agnhost
# e2e's DNS tests query with a glibc `dig` from this image: the agnhost image's dig (this host's,
# glibc) serves, under that name
DNS_TESTING_IMAGE = "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1"
BUSYBOX = "/bin/busybox"  # Debian's busybox-static

PAUSE_C = r"""
/* The sandbox's PID 1: sleep until told to stop, reap inherited zombies (upstream pause.c). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { _exit(0); }
static void reap(int sig) { while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "-v") == 0) { printf("pause (pyproxy lab)\n"); return 0; }
  if (getpid() != 1) fprintf(stderr, "pause: warning: not PID 1\n");
  struct sigaction sa = {0};
  sa.sa_handler = stop;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sa.sa_handler = reap;
  sa.sa_flags = SA_NOCLDSTOP;
  sigaction(SIGCHLD, &sa, NULL);
  for (;;) pause();
  return 42;
}
"""


class ImageError(RuntimeError):
    pass


@dataclass(frozen=True)
class File:
    """One entry of a layer: a regular file (from `source` or `data`), a directory or a symlink."""

    path: str  # inside the image, absolute
    source: str = ""
    data: bytes | None = None
    mode: int = 0o755
    symlink: str = ""
    directory: bool = False


def _layer(files: list[File]) -> bytes:
    buf = io.BytesIO()
    dirs: set[str] = set()
    entries: list[tuple[str, File | None]] = []
    for f in files:
        parts = f.path.strip("/").split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                entries.append((d, None))
        entries.append((f.path.strip("/"), f))
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        seen: set[str] = set()
        for name, f in sorted(entries, key=lambda e: e[0]):
            if name in seen:
                continue
            seen.add(name)
            info = tarfile.TarInfo(name)
            info.mtime = 0
            info.uid = info.gid = 0
            if f is None or f.directory:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif f.symlink:
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, f.symlink, 0o777
                tar.addfile(info)
            else:
                data = f.data if f.data is not None else open(f.source, "rb").read()
                info.size, info.mode = len(data), f.mode
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _blob(blobs: dict[str, bytes], data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return digest


def write_archive(out: str, name: str, layers: list[list[File]], entrypoint: list[str],
                  cmd: list[str] | None = None, env: list[str] | None = None, workdir: str = "/") -> str:
    """Write an image archive (OCI layout + Docker manifest.json) for `name` to `out`; return the
    manifest digest."""
    blobs: dict[str, bytes] = {}
    layer_descs, diff_ids, layer_files = [], [], []
    for files in layers:
        raw = _layer(files)
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        gz = gzip.compress(raw, mtime=0)
        digest = _blob(blobs, gz)
        layer_files.append(f"blobs/sha256/{digest[7:]}")
        layer_descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest,
                            "size": len(gz)})
    config = {"architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
              "config": {"Entrypoint": entrypoint, "Cmd": cmd, "WorkingDir": workdir,
                         "Env": env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "pyproxy lab images.py"}]}
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_digest = _blob(blobs, config_bytes)
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                           "size": len(config_bytes)},
                "layers": layer_descs}
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    manifest_digest = _blob(blobs, manifest_bytes)
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
                            "size": len(manifest_bytes), "platform": {"architecture": "amd64", "os": "linux"},
                            "annotations": {"io.containerd.image.name": name,
                                            "org.opencontainers.image.ref.name": tag}}]}
    docker = [{"Config": f"blobs/sha256/{config_digest[7:]}", "RepoTags": [name], "Layers": layer_files}]
    tmp = out + ".tmp"
    with tarfile.open(tmp, "w") as tar:
        def add(path: str, data: bytes) -> None:
            info = tarfile.TarInfo(path)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", json.dumps(index).encode())
        add("manifest.json", json.dumps(docker).encode())
        for digest in sorted(blobs):
            add(f"blobs/sha256/{digest[7:]}", blobs[digest])
    os.replace(tmp, out)
    return manifest_digest


# -- the images the lab needs ------------------------------------------------------------------


def images_dir() -> str:
    path = os.path.join(upstream.cache_dir(), "images")
    os.makedirs(path, exist_ok=True)
    return path


def pause_binary() -> str:
    """Compile pause.c statically (gcc, glibc's libc.a); cached beside the images."""
    out = os.path.join(images_dir(), "pause")
    if os.access(out, os.X_OK):
        return out
    src = out + ".c"
    with open(src, "w") as f:
        f.write(PAUSE_C)
    proc = subprocess.run(["gcc", "-static", "-Os", "-s", "-o", out + ".tmp", src], capture_output=True, text=True)
    if proc.returncode:
        raise ImageError(f"gcc -static pause.c failed: {proc.stderr.strip()}")
    os.replace(out + ".tmp", out)
    return out


def busybox_files(busybox: str = BUSYBOX, exclude: frozenset[str] = frozenset()) -> list[File]:
    """busybox-static at /bin/busybox and a symlink per applet (sh, nc, wget, ip, ...), but for the
    paths in `exclude` (where another layer puts the real program)."""
    if not os.access(busybox, os.X_OK):
        raise ImageError(f"{busybox} not found (apt-get install busybox-static)")
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    files = [File("/bin/busybox", source=busybox)]
    files += [File("/" + a, symlink="/bin/busybox") for a in applets
              if a.strip("/") != "bin/busybox" and "/" + a.strip("/") not in exclude]
    files += [File("/tmp", directory=True), File("/etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n", mode=0o644),
              File("/etc/group", data=b"root:x:0:\n", mode=0o644)]
    return files


# What upstream's agnhost image (alpine + bind-tools curl netcat-openbsd iproute2 bash ...) gives the
# e2e tests that exec into it, taken from this Debian host with the libraries they load (busybox's
# nc lacks the -v/-z the tests pass). /usr/bin comes first on the image's PATH, before busybox's /bin.
AGNHOST_TOOLS = {"/usr/bin/nc": "/usr/bin/nc.openbsd", "/usr/bin/curl": "/usr/bin/curl", "/usr/bin/dig": "/usr/bin/dig",
                 "/usr/bin/bash": "/usr/bin/bash", "/usr/bin/ip": "/usr/bin/ip", "/usr/bin/ss": "/usr/bin/ss",
                 "/usr/bin/getent": "/usr/bin/getent"}


def host_files(binaries: dict[str, str]) -> list[File]:
    """Host programs (image path -> host path) and every shared library `ldd` says they load, at
    the paths the loader looks for them."""
    files: dict[str, File] = {}
    for image_path, host_path in binaries.items():
        real = os.path.realpath(host_path)
        if not os.access(real, os.X_OK):
            raise ImageError(f"{host_path} not found on this machine (see images.AGNHOST_TOOLS for the packages)")
        files[image_path] = File(image_path, source=real)
        out = subprocess.run(["ldd", real], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            lib = parts[2] if "=>" in parts and len(parts) > 2 else parts[0] if parts and parts[0].startswith("/") else ""
            if lib.startswith("/") and lib not in files:
                files[lib] = File(lib, source=os.path.realpath(lib), mode=0o755)
    return list(files.values())


def pause_archive() -> str:
    out = os.path.join(images_dir(), "pause.tar")
    if not os.path.exists(out):
        write_archive(out, PAUSE_IMAGE, [[File("/pause", source=pause_binary())]], ["/pause"])
    return out


def agnhost_archive() -> str:
    out = os.path.join(images_dir(), "agnhost.tar")
    if not os.path.exists(out):
        write_archive(out, AGNHOST_IMAGE, agnhost_layers(), ["/agnhost"], ["pause"])
    return out


def agnhost_layers() -> list[list[File]]:
    bin_dir = upstream.ensure("agnhost")
    # /bin/sh is bash: Debian's busybox shell runs its own applets before PATH ("nc" would be
    # busybox's even with /usr/bin/nc present)
    tools = host_files(AGNHOST_TOOLS) + [File("/bin/sh", symlink="/usr/bin/bash")]
    # the TLS pair upstream's image adds for `agnhost porter` (e2e's proxy tests), from the module
    porter = os.path.join(_gomodcache(), f"k8s.io/kubernetes@{upstream.K8S_VERSION}", "test/images/agnhost/porter")
    tls = [File(f"/localhost.{ext}", source=os.path.join(porter, f"localhost.{ext}"), mode=0o644) for ext in ("crt", "key")]
    return [busybox_files(exclude=frozenset([*AGNHOST_TOOLS, "/bin/sh"])), tools,
            [File("/agnhost", source=os.path.join(bin_dir, "agnhost")), *tls]]


def _gomodcache() -> str:
    return subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True).stdout.strip()


def dns_testing_archive() -> str:
    out = os.path.join(images_dir(), "glibc-dns-testing.tar")
    if not os.path.exists(out):
        write_archive(out, DNS_TESTING_IMAGE, agnhost_layers(), ["/bin/sh"])
    return out


def archives() -> dict[str, str]:
    """Image name -> archive, for every image a lab node imports."""
    return {PAUSE_IMAGE: pause_archive(), AGNHOST_IMAGE: agnhost_archive(), DNS_TESTING_IMAGE: dns_testing_archive()}


def import_archive(ctr: str, address: str, archive: str, pin: bool = False) -> str:
    """Import into a node's containerd (namespace k8s.io, the CRI's); pin (the sandbox image)
    keeps the kubelet's image GC off it. Returns ctr's output."""
    proc = subprocess.run([ctr, "--address", address, "-n", "k8s.io", "images", "import", "--local", archive],
                          capture_output=True, text=True)
    if proc.returncode:
        raise ImageError(f"ctr images import {archive} failed: {proc.stderr.strip()}")
    if pin:
        with tarfile.open(archive) as tar:
            index = json.load(tar.extractfile("index.json"))
        name = index["manifests"][0]["annotations"]["io.containerd.image.name"]
        label = subprocess.run([ctr, "--address", address, "-n", "k8s.io", "images", "label", name,
                                "io.cri-containerd.pinned=pinned"], capture_output=True, text=True)
        if label.returncode:
            raise ImageError(f"ctr images label {name} failed: {label.stderr.strip()}")
    return proc.stdout


def remove_cache() -> None:
    shutil.rmtree(images_dir(), ignore_errors=True)
