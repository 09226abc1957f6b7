#!/usr/bin/env python3
"""Build the minicloud guest disk image: a small bootable Debian bookworm qcow2.

Usage::

    python3 tools/build_guest_image.py [--force] [--output PATH]
                                       [--cache-dir DIR] [--mirror URI]

The last line on stdout is the path of the qcow2 (the ``--output`` copy when
one is asked for); progress goes to stderr.

What is in the image:

* a ``debootstrap --variant=minbase`` root file system with the packages in
  ``PACKAGES``, without documentation, translations or apt caches;
* Debian's cloud kernel (the package that ``linux-image-cloud-amd64``
  depends on) and an initramfs built here from busybox-static that loads
  the modules in ``tools/guest_image/modules.txt`` (with their dependencies)
  and switch_roots to the root file system;
* ``tools/guest_image/init.py`` as PID 1 (no systemd): it prints
  ``minicloud-guest: boot complete`` on the serial console, runs qemu-ga,
  the guest agent and a root shell on the console, powers off on the ACPI
  power button and grows the root file system to fill a bigger disk;
* the repository's ``guestagent/`` package, when there is one, in
  ``/usr/local/lib/minicloud/guestagent``.

The disk has an msdos label with one bootable partition at 1 MiB holding
ext4 (label ``minicloud-root``) and extlinux.

Images are cached in ``--cache-dir`` (default ``$MINICLOUD_CACHE``, else
``~/.cache/minicloud/images``) under a name derived from a hash of every
input: this script, the files in ``tools/guest_image/``, the ``guestagent/``
folder, the kernel package version and the package list. A cached image is
reported at once; ``--force`` rebuilds it all, debootstrap included. Builds
run in a temporary folder in the cache and are renamed into place, so an
interrupted build leaves no half image; a lock file serialises concurrent
builds. The debootstrap result is cached as well (``.base-*.tar``), so a
change to the guest agent rebuilds in seconds rather than a minute. Only the
three newest images are kept.

Needs root and, on the host: debootstrap, extlinux, e2fsprogs, qemu-utils,
busybox-static, cpio, kmod, and an apt whose package lists are current. The
Debian mirror comes from the host's apt sources, never from this file.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SUITE = "bookworm"
PACKAGES = (
    "python3-minimal",
    "python3",  # the full standard library (json, asyncio...) for the guest agent
    "iproute2",
    "qemu-guest-agent",
    "cloud-guest-utils",  # growpart, to grow the root partition on a bigger disk
    "procps",
)
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BASE_FORMAT = "1"  # bump when the debootstrap or trimming steps change
ROOT_LABEL = "minicloud-root"
HOSTNAME = "minicloud-guest"
PARTITION_OFFSET = 1024 * 1024
SECTOR = 512
MBR_CODE = Path("/usr/lib/EXTLINUX/mbr.bin")
APT_LISTS = Path("/var/lib/apt/lists")
APT_SOURCES = Path("/etc/apt")
REPO_ROOT = Path(__file__).resolve().parent.parent
GUEST_FILES = REPO_ROOT / "tools" / "guest_image"
GUEST_AGENT = REPO_ROOT / "guestagent"
AGENT_TARGET = Path("usr/local/lib/minicloud/guestagent")
REQUIRED_TOOLS = {
    "debootstrap": "debootstrap",
    "extlinux": "extlinux",
    "mkfs.ext4": "e2fsprogs",
    "qemu-img": "qemu-utils",
    "busybox": "busybox-static",
    "cpio": "cpio",
    "depmod": "kmod",
    "dpkg": "dpkg",
    "apt-get": "apt",
    "tar": "tar",
}
TRIMMED = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/log",
)
MKFS_OPTIONS = ("-q", "-F", "-T", "default", "-I", "256", "-i", "8192", "-m", "1")
KEEP_IMAGES = 3  # newest images kept in the cache; older ones are deleted
STARTED = time.monotonic()


class BuildError(RuntimeError):
    """A build step failed; the message says which and why."""


def log(message: str) -> None:
    """Print a progress line on stderr with the time since start."""
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def run(argv: list[str], cwd: Path | None = None, stdin: bytes | None = None) -> bytes:
    """Run a command and return its stdout; raise BuildError with its output.

    The command runs in its own session; if this process is interrupted, the
    command's whole process group is stopped before the interruption goes on.
    """
    try:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as error:
        raise BuildError(f"cannot run {argv[0]}: {error}") from error
    try:
        stdout, stderr = process.communicate(stdin)
    except BaseException:
        stop_process_group(process)
        raise
    if process.returncode != 0:
        output = (stdout + stderr).decode(errors="replace")
        tail = "\n".join(output.splitlines()[-30:])
        raise BuildError(f"{' '.join(argv)} exited {process.returncode}:\n{tail}")
    return stdout


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """Terminate a command and everything it started, killing it if need be."""
    for signum, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            break
        try:
            process.wait(grace)
            break
        except subprocess.TimeoutExpired:
            continue
    # the group may outlive its leader: make sure nothing of it is left
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


# --- inputs and cache key -------------------------------------------------


def default_cache_dir() -> Path:
    """Return $MINICLOUD_CACHE or ~/.cache/minicloud/images."""
    configured = os.environ.get("MINICLOUD_CACHE")
    return Path(configured) if configured else Path.home() / ".cache/minicloud/images"


def deb822_paragraphs(text: str) -> Iterator[dict[str, str]]:
    """Yield the paragraphs of a deb822 file as field dictionaries."""
    fields: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if fields:
                yield fields
            fields = {}
        elif not line.startswith(("#", " ", "\t")) and ":" in line:
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()


def mirrors_from_deb822(text: str) -> Iterator[str]:
    """Yield URIs of deb822 sources that carry SUITE."""
    for fields in deb822_paragraphs(text):
        if fields.get("enabled", "yes") == "no":
            continue
        if "deb" in fields.get("types", "").split() and SUITE in fields.get("suites", "").split():
            yield from fields.get("uris", "").split()


def mirrors_from_one_line(text: str) -> Iterator[str]:
    """Yield URIs of one-line "deb URI SUITE ..." sources that carry SUITE."""
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words[:1] != ["deb"]:
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2 and words[1] == SUITE:
            yield words[0]


def debian_mirror() -> str:
    """Return the host's apt mirror for SUITE (deb822 sources, then sources.list)."""
    for path in sorted((APT_SOURCES / "sources.list.d").glob("*.sources")):
        for uri in mirrors_from_deb822(path.read_text()):
            return uri
    one_line = sorted((APT_SOURCES / "sources.list.d").glob("*.list"))
    for path in [APT_SOURCES / "sources.list", *one_line]:
        if path.exists():
            for uri in mirrors_from_one_line(path.read_text()):
                return uri
    raise BuildError(f"no apt source for {SUITE} in {APT_SOURCES}; pass --mirror")


def apt_lists_signature() -> str:
    """Return a digest of the names, sizes and times of apt's package lists."""
    digest = hashlib.sha256()
    for path in sorted(APT_LISTS.glob("*")):
        if path.is_file():
            status = path.stat()
            digest.update(f"{path.name} {status.st_size} {status.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def query_kernel_package() -> tuple[str, str] | None:
    """Ask apt which cloud kernel package is current, and its version."""
    try:
        depends = run(["apt-cache", "depends", KERNEL_META_PACKAGE]).decode()
    except BuildError:
        return None
    names = [
        line.split(":", 1)[1].strip()
        for line in depends.splitlines()
        if line.strip().startswith("Depends: linux-image-")
    ]
    if not names:
        return None
    shown = run(["apt-cache", "show", "--no-all-versions", names[0]]).decode()
    versions = [
        line.split(":", 1)[1].strip() for line in shown.splitlines() if line.startswith("Version:")
    ]
    return (names[0], versions[0]) if versions else None


def kernel_package(cache: Path) -> tuple[str, str]:
    """Return (package, version) of the cloud kernel, memoised per apt lists."""
    memo = cache / ".kernel-package.json"
    signature = apt_lists_signature()
    try:
        saved = json.loads(memo.read_text())
        if saved["lists"] == signature:
            return saved["package"], saved["version"]
    except (OSError, ValueError, KeyError):
        pass
    found = query_kernel_package()
    if found is None:
        log(f"apt does not know {KERNEL_META_PACKAGE}: running apt-get update")
        run(["apt-get", "update"])
        signature = apt_lists_signature()
        found = query_kernel_package()
    if found is None:
        raise BuildError(f"apt has no {KERNEL_META_PACKAGE} (check the apt sources)")
    write_atomically(
        memo, json.dumps({"lists": signature, "package": found[0], "version": found[1]}).encode()
    )
    return found


def tree_digest(root: Path) -> bytes:
    """Return a digest of the relative paths and contents of a folder's files."""
    digest = hashlib.sha256()
    if not root.is_dir():
        return digest.digest()
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts or path.suffix == ".pyc" or not path.is_file():
            continue
        content = path.read_bytes()
        digest.update(f"{path.relative_to(root)} {len(content)}\n".encode())
        digest.update(content)
    return digest.digest()


def image_key(kernel: tuple[str, str]) -> str:
    """Return the hash of every input of the image."""
    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())
    digest.update(tree_digest(GUEST_FILES))
    digest.update(tree_digest(GUEST_AGENT))
    digest.update(f"kernel {kernel[0]} {kernel[1]}\n".encode())
    digest.update(f"suite {SUITE} packages {','.join(PACKAGES)}\n".encode())
    return digest.hexdigest()


def base_key() -> str:
    """Return the hash of the inputs of the debootstrap root file system."""
    text = f"{BASE_FORMAT} {SUITE} {','.join(PACKAGES)} {','.join(TRIMMED)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def image_path(cache: Path, key: str) -> Path:
    """Return where the image for a key lives in the cache."""
    return cache / f"minicloud-guest-{SUITE}-{key[:16]}.qcow2"


# --- files and mounts -----------------------------------------------------


def write_atomically(path: Path, content: bytes) -> None:
    """Write a file through a temporary sibling and a rename."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(content)
    os.replace(temporary, path)


def copy_atomically(source: Path, target: Path) -> None:
    """Copy a file through a temporary sibling and a rename."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def mounts_below(folder: Path) -> list[str]:
    """Return mount points inside a folder, deepest first."""
    prefix = str(folder.resolve()) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def remove_build_folder(folder: Path) -> None:
    """Unmount whatever is mounted inside a build folder, then delete it."""
    for point in mounts_below(folder):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def mounted_partition(disk: Path, size: int, mount_point: Path) -> Iterator[Path]:
    """Loop-mount the partition of a raw disk image for the duration."""
    mount_point.mkdir(parents=True, exist_ok=True)
    options = f"loop,offset={PARTITION_OFFSET},sizelimit={size}"
    run(["mount", "-t", "ext4", "-o", options, str(disk), str(mount_point)])
    try:
        yield mount_point
    finally:
        run(["umount", str(mount_point)])


@contextmanager
def cache_lock(cache: Path) -> Iterator[None]:
    """Hold the cache's build lock (one build at a time per cache)."""
    with open(cache / ".build.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another build holds the cache lock: waiting")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --- root file system ------------------------------------------------------


def debootstrap(rootfs: Path, mirror: str) -> None:
    """Install a minbase SUITE system with PACKAGES into rootfs."""
    log(f"debootstrap {SUITE} from {mirror} (about 40 s)")
    include = f"--include={','.join(PACKAGES)}"
    run(["debootstrap", "--variant=minbase", include, SUITE, str(rootfs), mirror])


def trim_rootfs(rootfs: Path) -> None:
    """Remove documentation, translations, caches and host leftovers."""
    for relative in TRIMMED:
        folder = rootfs / relative
        if folder.is_dir():
            shutil.rmtree(folder)
            folder.mkdir(mode=0o755)
    (rootfs / "var/lib/apt/lists/partial").mkdir()
    (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True)
    for leftover in ("etc/resolv.conf", "etc/hostname"):
        (rootfs / leftover).unlink(missing_ok=True)


def save_base(rootfs: Path, tarball: Path) -> None:
    """Store the trimmed root file system as a tar in the cache."""
    temporary = tarball.with_name(f".{tarball.name}.{os.getpid()}.tmp")
    try:
        run(
            [
                "tar",
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "-C",
                str(rootfs),
                "-cf",
                str(temporary),
                ".",
            ]
        )
        os.replace(temporary, tarball)
    finally:
        temporary.unlink(missing_ok=True)
    for stale in tarball.parent.glob(".base-*.tar"):
        if stale != tarball:
            stale.unlink()


def base_rootfs(workdir: Path, cache: Path, mirror: str, force: bool) -> Path:
    """Return a fresh root file system in workdir, from cache or debootstrap."""
    rootfs = workdir / "rootfs"
    rootfs.mkdir()
    tarball = cache / f".base-{base_key()}.tar"
    if tarball.exists() and not force:
        log(f"unpacking cached base system {tarball.name}")
        run(
            [
                "tar",
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "-C",
                str(rootfs),
                "-xf",
                str(tarball),
            ]
        )
        return rootfs
    debootstrap(rootfs, mirror)
    trim_rootfs(rootfs)
    save_base(rootfs, tarball)
    return rootfs


def install_file(source: Path, target: Path, mode: int = 0o644) -> None:
    """Copy one file into the image with a given mode."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(mode)


def replace_with_symlink(link: Path, target: str) -> None:
    """Make link a symbolic link to target, replacing what was there."""
    if link.exists() or link.is_symlink():
        link.unlink()
    link.symlink_to(target)


def install_guest_files(rootfs: Path, key: str, kernel: tuple[str, str]) -> None:
    """Install PID 1, the shutdown commands and the system identity."""
    sbin = rootfs / "usr/sbin"
    install_file(GUEST_FILES / "init.py", sbin / "minicloud-init", 0o755)
    replace_with_symlink(sbin / "init", "minicloud-init")
    install_file(GUEST_FILES / "shutdown.sh", sbin / "minicloud-shutdown", 0o755)
    for name in ("shutdown", "reboot", "poweroff", "halt"):
        replace_with_symlink(sbin / name, "minicloud-shutdown")
    install_file(GUEST_FILES / "extlinux.conf", rootfs / "boot/extlinux/extlinux.conf")
    # DHCP on every NIC (hot-plugged ones too): busybox udhcpc, run by init.
    install_file(static_busybox(), rootfs / "usr/local/bin/busybox", 0o755)
    install_file(GUEST_FILES / "udhcpc.sh", rootfs / "usr/local/share/minicloud/udhcpc.sh", 0o755)
    (rootfs / "etc/hostname").write_text(f"{HOSTNAME}\n")
    (rootfs / "etc/hosts").write_text(
        f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n::1 localhost ip6-localhost ip6-loopback\n"
    )
    (rootfs / "etc/fstab").write_text(f"LABEL={ROOT_LABEL} / ext4 defaults 0 1\n")
    release = {
        "image": image_path(Path("/"), key).name,
        "key": key,
        "suite": SUITE,
        "kernel_package": kernel[0],
        "kernel_version": kernel[1],
    }
    (rootfs / "etc/minicloud-image.json").write_text(json.dumps(release, indent=2) + "\n")


def install_guest_agent(rootfs: Path) -> None:
    """Copy the repository's guestagent package into the image, if any."""
    if not GUEST_AGENT.is_dir() or not any(GUEST_AGENT.iterdir()):
        log("no guestagent/ in the repository: the image has no guest agent")
        return
    target = rootfs / AGENT_TARGET
    shutil.copytree(GUEST_AGENT, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run(["chroot", str(rootfs), "python3", "-m", "compileall", "-q", f"/{AGENT_TARGET.parent}"])
    log(f"installed guestagent/ in /{AGENT_TARGET}")


# --- kernel and initramfs --------------------------------------------------


def unpack_kernel(workdir: Path, kernel: tuple[str, str]) -> Path:
    """Download the kernel package, unpack it and index its modules."""
    log(f"downloading {kernel[0]} {kernel[1]}")
    debs = workdir / "debs"
    debs.mkdir()
    run(
        ["apt-get", "download", "-o", "APT::Sandbox::User=root", f"{kernel[0]}={kernel[1]}"],
        cwd=debs,
    )
    root = workdir / "kernel"
    run(["dpkg", "-x", str(next(debs.glob("*.deb"))), str(root)])
    run(["depmod", "-b", str(root), kernel_release(root)])
    return root


def kernel_release(kernel_root: Path) -> str:
    """Return the release name (uname -r) of an unpacked kernel."""
    return next((kernel_root / "lib/modules").iterdir()).name


def module_name(path: str) -> str:
    """Return the canonical module name of a .ko path."""
    return Path(path).name.split(".ko")[0].replace("-", "_")


def module_index(modules: Path) -> tuple[dict[str, tuple[str, list[str]]], set[str]]:
    """Read modules.dep and modules.builtin: {name: (path, deps)}, builtins."""
    index: dict[str, tuple[str, list[str]]] = {}
    for line in (modules / "modules.dep").read_text().splitlines():
        path, _, deps = line.partition(":")
        index[module_name(path)] = (path, [module_name(dep) for dep in deps.split()])
    builtin = {module_name(line) for line in (modules / "modules.builtin").read_text().split()}
    return index, builtin


def wanted_modules() -> list[str]:
    """Return the module names listed in guest_image/modules.txt."""
    lines = (GUEST_FILES / "modules.txt").read_text().splitlines()
    return [
        line.split("#")[0].strip().replace("-", "_") for line in lines if line.split("#")[0].strip()
    ]


def module_load_order(modules: Path) -> list[str]:
    """Return module paths to load, dependencies first; log what is skipped."""
    index, builtin = module_index(modules)
    order: list[str] = []
    skipped_builtin, missing = [], []

    def visit(name: str) -> None:
        path, deps = index[name]
        for dep in deps:
            visit(dep)
        if path not in order:
            order.append(path)

    for name in wanted_modules():
        if name in index:
            visit(name)
        elif name in builtin:
            skipped_builtin.append(name)
        else:
            missing.append(name)
    log(
        f"initramfs modules: {len(order)}; built in: {', '.join(skipped_builtin) or '-'}; "
        f"not in this kernel: {', '.join(missing) or '-'}"
    )
    return order


def is_static_elf(path: Path) -> bool:
    """Tell whether an x86-64 ELF executable has no program interpreter."""
    with open(path, "rb") as binary:
        header = binary.read(64)
        if header[:4] != b"\x7fELF":
            return False
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        binary.seek(phoff)
        table = binary.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def static_busybox() -> Path:
    """Return the host's busybox-static binary."""
    found = shutil.which("busybox")
    if found is None or not is_static_elf(Path(found)):
        raise BuildError("a static busybox is needed: apt-get install busybox-static")
    return Path(found)


def stage_initramfs(staging: Path, kernel_root: Path) -> None:
    """Lay out the initramfs: busybox, /init, /dev/console and the modules."""
    modules = kernel_root / "lib/modules" / kernel_release(kernel_root)
    install_file(static_busybox(), staging / "bin/busybox", 0o755)
    install_file(GUEST_FILES / "initramfs-init.sh", staging / "init", 0o755)
    (staging / "dev").mkdir()
    os.mknod(staging / "dev/console", 0o600 | 0o020000, os.makedev(5, 1))
    target = staging / "lib/modules"
    target.mkdir(parents=True)
    names = []
    for path in module_load_order(modules):
        shutil.copyfile(modules / path, target / Path(path).name)
        names.append(Path(path).name)
    (target / "load-order").write_text("\n".join(names) + "\n")


def build_initramfs(workdir: Path, kernel_root: Path, output: Path) -> None:
    """Build a gzip-compressed newc cpio initramfs into output."""
    staging = workdir / "initramfs"
    stage_initramfs(staging, kernel_root)
    paths = sorted(str(path.relative_to(staging)) for path in staging.rglob("*"))
    archive = run(
        ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
        cwd=staging,
        stdin=("\n".join(paths) + "\n").encode(),
    )
    output.write_bytes(gzip.compress(archive, compresslevel=6, mtime=0))
    log(f"initramfs: {output.stat().st_size // 1024} KiB")


def install_kernel(rootfs: Path, workdir: Path, kernel_root: Path) -> None:
    """Put the kernel and a new initramfs in the image's /boot."""
    release = kernel_release(kernel_root)
    install_file(kernel_root / f"boot/vmlinuz-{release}", rootfs / "boot/vmlinuz")
    build_initramfs(workdir, kernel_root, rootfs / "boot/initrd.img")


# --- disk -------------------------------------------------------------------


def disk_usage(folder: Path) -> int:
    """Return the bytes a folder's files occupy."""
    return int(run(["du", "-s", "-B1", str(folder)]).split()[0])


def filesystem_size(rootfs: Path) -> int:
    """Choose the file system size: the content plus a fifth plus 160 MiB."""
    mib = 1024 * 1024
    wanted = disk_usage(rootfs) * 6 // 5 + 160 * mib
    step = 64 * mib
    return (wanted + step - 1) // step * step


def chs(lba: int) -> bytes:
    """Encode an LBA as an MBR cylinder/head/sector triple (255 heads, 63 sectors)."""
    cylinder, rest = divmod(lba, 255 * 63)
    head, sector = divmod(rest, 63)
    if cylinder > 1023:
        cylinder, head, sector = 1023, 254, 62
    return bytes([head, ((sector + 1) & 0x3F) | ((cylinder >> 2) & 0xC0), cylinder & 0xFF])


def master_boot_record(first: int, count: int, signature: bytes) -> bytes:
    """Return sector 0: extlinux's mbr.bin and one bootable Linux partition."""
    code = MBR_CODE.read_bytes()[:440].ljust(440, b"\0")
    entry = (
        b"\x80" + chs(first) + b"\x83" + chs(first + count - 1) + struct.pack("<II", first, count)
    )
    return code + signature[:4] + b"\0\0" + entry + bytes(48) + b"\x55\xaa"


def make_raw_disk(rootfs: Path, workdir: Path, key: str) -> Path:
    """Make the raw disk: MBR, then ext4 from rootfs at 1 MiB, with extlinux."""
    size = filesystem_size(rootfs)
    disk = workdir / "disk.raw"
    log(f"mkfs.ext4 -d: {size // 2**20} MiB file system")
    layout = ["-L", ROOT_LABEL, "-E", f"offset={PARTITION_OFFSET}", "-d", str(rootfs)]
    run(["mkfs.ext4", *MKFS_OPTIONS, *layout, str(disk), f"{size // 1024}k"])
    with open(disk, "r+b") as raw:
        raw.truncate(PARTITION_OFFSET + size)
        raw.write(
            master_boot_record(PARTITION_OFFSET // SECTOR, size // SECTOR, bytes.fromhex(key[:8]))
        )
    with mounted_partition(disk, size, workdir / "mnt") as mounted:
        run(["extlinux", "--install", str(mounted / "boot/extlinux")])
    return disk


def convert_to_qcow2(disk: Path, output: Path) -> None:
    """Convert the raw disk to qcow2."""
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk), str(output)])
    log(
        f"qcow2: {output.stat().st_size // 2**20} MiB on disk, "
        f"{disk.stat().st_size // 2**20} MiB virtual"
    )


# --- orchestration ----------------------------------------------------------


def check_host() -> None:
    """Fail early, naming the packages to install, if a tool is missing."""
    if os.geteuid() != 0:
        raise BuildError("building the guest image needs root (debootstrap, mounts)")
    missing = sorted(
        {package for tool, package in REQUIRED_TOOLS.items() if shutil.which(tool) is None}
    )
    if not MBR_CODE.exists():
        missing.append("extlinux")
    if missing:
        raise BuildError(f"missing host tools: apt-get install {' '.join(sorted(set(missing)))}")


def build_image(
    workdir: Path, cache: Path, key: str, kernel: tuple[str, str], mirror: str, force: bool
) -> Path:
    """Run every build step in workdir and return the qcow2 made there."""
    rootfs = base_rootfs(workdir, cache, mirror, force)
    install_guest_files(rootfs, key, kernel)
    install_guest_agent(rootfs)
    kernel_root = unpack_kernel(workdir, kernel)
    install_kernel(rootfs, workdir, kernel_root)
    disk = make_raw_disk(rootfs, workdir, key)
    output = workdir / "image.qcow2"
    convert_to_qcow2(disk, output)
    return output


def remove_stale_builds(cache: Path) -> None:
    """Delete build folders left by killed builds (call with the lock held)."""
    for folder in cache.glob(".build-*"):
        if folder.is_dir():
            log(f"removing stale build folder {folder.name}")
            remove_build_folder(folder)


def manifest(key: str, kernel: tuple[str, str]) -> bytes:
    """Return the JSON description stored next to an image."""
    description = {
        "key": key,
        "suite": SUITE,
        "packages": list(PACKAGES),
        "kernel_package": kernel[0],
        "kernel_version": kernel[1],
        "guestagent": (GUEST_AGENT / "serve.py").exists(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return json.dumps(description, indent=2).encode()


def prune_old_images(cache: Path, keep: Path) -> None:
    """Delete all but the KEEP_IMAGES newest images, always keeping keep."""
    images = sorted(cache.glob(f"minicloud-guest-{SUITE}-*.qcow2"), key=lambda p: p.stat().st_mtime)
    for old in [image for image in images if image != keep][: -(KEEP_IMAGES - 1) or None]:
        log(f"deleting old image {old.name}")
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)


def build_into_cache(
    cache: Path, key: str, kernel: tuple[str, str], mirror: str, force: bool
) -> Path:
    """Build the image in a temporary folder and rename it into the cache."""
    target = image_path(cache, key)
    with cache_lock(cache):
        if target.exists() and not force:
            return target
        remove_stale_builds(cache)
        check_host()
        workdir = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
        try:
            built = build_image(workdir, cache, key, kernel, mirror, force)
            write_atomically(target.with_suffix(".json"), manifest(key, kernel))
            os.replace(built, target)
        finally:
            remove_build_folder(workdir)
        prune_old_images(cache, target)
    log(f"built {target}")
    return target


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--output", type=Path, help="also copy the image to this path")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="cache folder (default $MINICLOUD_CACHE or ~/.cache/minicloud/images)",
    )
    parser.add_argument("--mirror", help="Debian mirror URI (default: from apt sources)")
    return parser.parse_args(argv)


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that cleanup code runs."""

    def handler(_signum: int, _frame: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    """Print the path of an up-to-date guest image, building it if needed."""
    arguments = parse_arguments(argv)
    stop_on_sigterm()
    cache = (arguments.cache_dir or default_cache_dir()).expanduser().resolve()
    cache.mkdir(parents=True, exist_ok=True)
    try:
        kernel = kernel_package(cache)
        key = image_key(kernel)
        target = image_path(cache, key)
        if arguments.force or not target.exists():
            mirror = arguments.mirror or debian_mirror()
            target = build_into_cache(cache, key, kernel, mirror, arguments.force)
        if arguments.output:
            copy_atomically(target, arguments.output)
            target = arguments.output.resolve()
    except BuildError as error:
        log(f"error: {error}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
