"""Run a command inside a qemu guest that boots Debian's own kernel over this machine's root.

Why: this machine's kernel has no ip_vs and no dummy links; Debian's `linux-image-amd64` has both
as modules. The guest boots that kernel under TCG (no KVM here) with the host's root filesystem
shared read-only over 9p, tmpfs on the paths tests write (/tmp, /run, /var/tmp), loads what it
needs through the kernel's own module autoloading (pointed at the unpacked kernel package) and
runs one shell command as PID 1, then powers off. Its console is this process's output; the
command's exit status comes back on a marker line.

    python tests/vm/qemu.py [--cpus N] [--memory MB] -- COMMAND...

The kernel package is fetched with `apt-get download` and unpacked (never installed) under
.cache/vm/ in the repository, once; the initramfs is rebuilt per run (it is small).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import io
import os
import shlex
import shutil
import subprocess
import sys
import uuid

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CACHE = os.path.join(REPO, ".cache", "vm")
EXIT_MARKER = "PYPROXY-VM-EXIT"
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p")  # what mounting the root needs; the rest autoloads
GUEST_MODULES = ("br_netfilter",)  # what nothing autoloads (the lab needs bridge-nf-call-iptables)


class VmError(RuntimeError):
    pass


def kernel() -> tuple[str, str]:
    """(unpacked package root, kernel release), fetching Debian's current kernel once."""
    existing = sorted(glob.glob(os.path.join(CACHE, "linux-image-*", "root", "boot", "vmlinuz-*")))
    if existing:
        root = existing[-1].split("/boot/")[0]
        return root, os.path.basename(existing[-1])[len("vmlinuz-"):]
    package = _kernel_package()
    target = os.path.join(CACHE, package)
    os.makedirs(target, exist_ok=True)
    download = subprocess.run(["apt-get", "download", package], cwd=target, capture_output=True, text=True)
    if download.returncode:  # package lists may be missing on a fresh machine
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        download = subprocess.run(["apt-get", "download", package], cwd=target, capture_output=True, text=True)
    debs = glob.glob(os.path.join(target, "*.deb"))
    if not debs:
        raise VmError(f"could not download {package}: {download.stderr.strip()}")
    root = os.path.join(target, "root")
    subprocess.run(["dpkg-deb", "-x", debs[0], root], check=True)
    os.remove(debs[0])
    release = os.path.basename(glob.glob(os.path.join(root, "boot", "vmlinuz-*"))[0])[len("vmlinuz-"):]
    subprocess.run(["depmod", "-b", root, release], check=True)
    return root, release


def _kernel_package() -> str:
    out = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            return line.split()[1]
    raise VmError("apt-cache knows no linux-image-amd64 (run apt-get update)")


def _module_closure(root: str, release: str, names) -> list[str]:
    """Module files for `names` and their dependencies, dependencies first (modules.dep)."""
    base = os.path.join(root, "lib", "modules", release)
    deps: dict[str, list[str]] = {}
    with open(os.path.join(base, "modules.dep")) as f:
        for line in f:
            module, _, rest = line.partition(":")
            deps[module] = rest.split()
    by_name = {os.path.basename(m).split(".ko")[0].replace("-", "_"): m for m in deps}
    order: list[str] = []

    def visit(module: str) -> None:
        for dep in reversed(deps[module]):  # modules.dep lists the deepest dependency last
            visit(dep)
        if module not in order:
            order.append(module)

    for name in names:
        visit(by_name[name])
    return [os.path.join(base, m) for m in order]


def initramfs(root: str, release: str, script: str) -> bytes:
    """busybox, the boot modules and an /init that mounts the host root and runs `script`."""
    modules = _module_closure(root, release, BOOT_MODULES)
    busybox = shutil.which("busybox")
    if not busybox:
        raise VmError("busybox is missing (apt-get install busybox-static)")
    init = "\n".join([
        "#!/bin/busybox sh",
        "/bin/busybox --install -s /bin",
        "mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev",
        *(f"insmod /modules/{os.path.basename(m)}" for m in modules),
        "mkdir -p /newroot",
        "mount -t 9p -o trans=virtio,version=9p2000.L,cache=loose,msize=512000,ro hostroot /newroot"
        " || { echo 'cannot mount the host root'; echo o > /proc/sysrq-trigger; }",
        # tmpfs where tests write; a repository that lives under one of them is kept visible
        f"mkdir -p /keep && mount --bind /newroot{shlex.quote(REPO)} /keep",
        "for d in tmp run var/tmp; do mount -t tmpfs tmpfs /newroot/$d; done",
        f"mkdir -p /newroot{shlex.quote(REPO)} 2>/dev/null; mount --move /keep /newroot{shlex.quote(REPO)}",
        "mount -t proc proc /newroot/proc; mount -t sysfs sys /newroot/sys; mount -t devtmpfs dev /newroot/dev",
        "mkdir -p /newroot/dev/shm && mount -t tmpfs tmpfs /newroot/dev/shm",
        f"exec switch_root /newroot /bin/sh {shlex.quote(script)}",
        "",
    ])
    buf = io.BytesIO()
    # the kernel reads newc cpio archives; the cpio tool writes them
    staging = os.path.join(CACHE, f"initramfs-{uuid.uuid4().hex[:8]}")
    try:
        for d in ("bin", "proc", "sys", "dev", "modules", "newroot", "keep"):
            os.makedirs(os.path.join(staging, d))
        shutil.copy(busybox, os.path.join(staging, "bin", "busybox"))
        for m in modules:
            shutil.copy(m, os.path.join(staging, "modules"))
        with open(os.path.join(staging, "init"), "w") as f:
            f.write(init)
        os.chmod(os.path.join(staging, "init"), 0o755)
        files = subprocess.run(["find", "."], cwd=staging, capture_output=True, text=True, check=True).stdout
        archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=staging, input=files.encode(),
                                 capture_output=True, check=True).stdout
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1) as gz:
        gz.write(archive)
    return buf.getvalue()


def guest_script(command: list[str], root: str, release: str, env: dict[str, str]) -> str:
    """What PID 1 runs in the guest: module autoloading from the unpacked package, the command,
    its status on the marker line, power off."""
    modprobe = os.path.join(CACHE, "modprobe")
    with open(modprobe, "w") as f:
        f.write(f"#!/bin/sh\nexec /usr/sbin/modprobe -d {shlex.quote(root)} \"$@\"\n")
    os.chmod(modprobe, 0o755)
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    return (
        "echo\n"  # the command's output starts on a line of its own, after the firmware's escape codes
        "echo 1 > /proc/sys/kernel/sysrq\n"
        f"echo {modprobe} > /proc/sys/kernel/modprobe\n"
        f"{modprobe} -a {' '.join(GUEST_MODULES)}\n"
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp\n"
        f"{exports}"
        f"cd {shlex.quote(REPO)}\n"
        f"{shlex.join(command)}\n"
        f"echo {EXIT_MARKER} $?\n"
        "echo o > /proc/sysrq-trigger\n"
        "while :; do :; done\n"  # until the power-off lands (sleep itself may fail as 9p goes)
    )


def run(command: list[str], cpus: int = 2, memory_mb: int = 2048, timeout: float = 1800,
        env: dict[str, str] | None = None, echo=None) -> tuple[int, str]:
    """Boot, run `command` as root in the repository, power off: (exit status, console text)."""
    root, release = kernel()
    os.makedirs(CACHE, exist_ok=True)
    run_id = uuid.uuid4().hex[:8]
    script_path = os.path.join(CACHE, f"run-{run_id}.sh")
    initrd_path = os.path.join(CACHE, f"initrd-{run_id}.gz")
    with open(script_path, "w") as f:
        f.write(guest_script(command, root, release, env or {}))
    with open(initrd_path, "wb") as f:
        f.write(initramfs(root, release, script_path))
    qemu = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "max",
            "-smp", str(cpus), "-m", str(memory_mb), "-nographic", "-no-reboot", "-nodefaults",
            "-serial", "stdio", "-kernel", os.path.join(root, "boot", f"vmlinuz-{release}"), "-initrd", initrd_path,
            "-append", "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"]
    lines: list[str] = []
    status = None
    try:
        proc = subprocess.Popen(qemu, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, errors="replace")
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\r\n")
                lines.append(line)
                if echo:
                    echo(line)
                if line.startswith(EXIT_MARKER):
                    status = int(line.split()[1])
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        for path in (script_path, initrd_path):
            if os.path.exists(path):
                os.remove(path)
    if status is None:
        raise VmError("the guest stopped without reporting the command's status:\n" + "\n".join(lines[-40:]))
    return status, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--memory", type=int, default=2048, help="MB")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args()
    status, _ = run(args.command, args.cpus, args.memory, echo=print)
    sys.exit(status)


if __name__ == "__main__":
    main()
