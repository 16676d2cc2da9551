"""Podman for the container tier, set up as CONTAINERS.md says, and cached debootstrap base images.

Nothing can be pulled on our machines, so base images are made with debootstrap once and kept: the
rootfs tarball under ~/.cache/chutes-wrappers-test/ and the imported images in podman storage, both
named by a hash of what goes into them. Reruns find them and cost seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("CW_TEST_CACHE") or Path.home() / ".cache" / "chutes-wrappers-test")

PODMAN_GLOBAL_FLAGS = ("--cgroup-manager=cgroupfs", "--runtime", "runc")
CONTAINERS_CONF_TEXT = "[containers]\ndefault_ulimits = []\n"

DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = (
    "python3",
    "python3-fastapi",
    "python3-uvicorn",
    "python3-multipart",
    "python3-venv",
    "ca-certificates",
)
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"
# Bump when the recipe below changes in a way the package list does not show.
RECIPE_VERSION = "1"

DEMO_SERVICE = ROOT / "tools" / "demo_service.py"
DEMO_PORT = 8020
DEBIAN_PY_REPO = "localhost/cw-test-debian-py"
DEBIAN_ROOTFS_REPO = "localhost/cw-test-debian-rootfs"
BUSYBOX_REPO = "localhost/cw-test-busybox"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def skip_reason() -> str | None:
    """Why the container tier cannot run here (one line), or None."""
    missing = [tool for tool in ("podman", "runc", "debootstrap") if not shutil.which(tool)]
    if missing:
        return f"container tier needs {', '.join(missing)} (apt-get install podman runc debootstrap)"
    if os.geteuid() != 0:
        return "container tier needs root (debootstrap and rootful podman)"
    return None


class Podman:
    """The podman CLI with the flags and containers.conf our machines need, plus a `docker` shim."""

    def __init__(self, bin_dir: Path):
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        self.conf = CACHE_DIR / "containers.conf"
        if not self.conf.exists() or self.conf.read_text() != CONTAINERS_CONF_TEXT:
            _write_atomic(self.conf, CONTAINERS_CONF_TEXT)
        self.bin_dir = bin_dir
        shim = bin_dir / "docker"
        shim.write_text(
            "#!/bin/sh\n"
            "# docker -> podman (tests/container/engine.py), so `chutes build --local` runs here.\n"
            f"CONTAINERS_CONF={shlex.quote(str(self.conf))}\n"
            "export CONTAINERS_CONF\n"
            "# One layer per build, no intermediate images left behind (tests remove what they build).\n"
            "BUILDAH_LAYERS=false\n"
            "export BUILDAH_LAYERS\n"
            f"exec podman {' '.join(PODMAN_GLOBAL_FLAGS)} \"$@\"\n"
        )
        shim.chmod(0o755)

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses: CONTAINERS_CONF set, builds without intermediate images,
        and the docker shim first on PATH."""
        env = dict(os.environ)
        env["CONTAINERS_CONF"] = str(self.conf)
        env["BUILDAH_LAYERS"] = "false"
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 600, input: str | bytes | None = None, **kwargs
    ) -> subprocess.CompletedProcess:
        cmd = ["podman", *PODMAN_GLOBAL_FLAGS, *args]
        kwargs.setdefault("capture_output", True)
        if not isinstance(input, bytes):
            kwargs.setdefault("text", True)
        proc = subprocess.run(cmd, env=self.env, timeout=timeout, input=input, **kwargs)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}:\n{_tail(proc.stderr)}")
        return proc

    def image_exists(self, ref: str) -> bool:
        return self("image", "exists", ref, check=False).returncode == 0

    def remove_image(self, ref: str) -> None:
        self("rmi", "--force", ref, check=False)

    def image_tags(self, repo: str) -> list[str]:
        out = self("images", "--format", "{{.Repository}}:{{.Tag}}", repo, check=False).stdout
        return [line for line in out.split() if line.startswith(f"{repo}:")]

    def image_size(self, ref: str) -> int:
        return int(self("image", "inspect", "--format", "{{.Size}}", ref).stdout.strip())


@contextlib.contextmanager
def podman_engine() -> Iterator[Podman]:
    """A Podman whose docker shim lives in a temp dir removed on exit."""
    bin_dir = Path(tempfile.mkdtemp(prefix="cw-engine-"))
    try:
        yield Podman(bin_dir)
    finally:
        shutil.rmtree(bin_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Cached base images


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (the one that is reachable), else deb.debian.org."""
    override = os.environ.get("CW_TEST_DEBIAN_MIRROR")
    if override:
        return override
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for url in re.findall(r"(?:^URIs:|^deb(?:\s+\[[^]]*\])?)\s+(\S+)", text, re.M):
            if url.rstrip("/").endswith("/debian"):
                return url.rstrip("/")
    return DEFAULT_DEBIAN_MIRROR


def _key(*parts: str | bytes | Sequence[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, (list, tuple)):
            part = "\0".join(part)
        digest.update(part if isinstance(part, bytes) else str(part).encode())
        digest.update(b"\x01")
    return digest.hexdigest()[:12]


def debian_rootfs_key() -> str:
    return _key(DEBIAN_SUITE, DEBIAN_PACKAGES, RECIPE_VERSION, "minbase")


def debian_rootfs_tarball() -> Path:
    """debootstrap minbase with DEBIAN_PACKAGES, as a tarball cached by the package list and recipe."""
    key = debian_rootfs_key()
    tarball = CACHE_DIR / f"debian-{DEBIAN_SUITE}-{key}.tar"
    if tarball.exists():
        return tarball
    with _lock("debootstrap"):
        if tarball.exists():
            return tarball
        rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE_DIR))
        try:
            cmd = [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(DEBIAN_PACKAGES)}",
                DEBIAN_SUITE,
                str(rootfs),
                debian_mirror(),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0:
                log = rootfs / "debootstrap" / "debootstrap.log"
                detail = log.read_text(errors="replace") if log.exists() else proc.stderr + proc.stdout
                raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}:\n{_tail(detail)}")
            _unmount_below(rootfs)
            # Downloaded .debs and apt lists are not needed in the image.
            for leftover in [*rootfs.glob("var/cache/apt/archives/*.deb"), *rootfs.glob("var/lib/apt/lists/*_*")]:
                leftover.unlink()
            partial = tarball.with_suffix(".tar.partial")
            subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."], check=True)
            os.replace(partial, tarball)
        finally:
            _unmount_below(rootfs)
            shutil.rmtree(rootfs, ignore_errors=True)
    return tarball


def debian_python_base(podman: Podman) -> str:
    """`localhost/cw-test-debian-py:<key>`: Debian bookworm + Python + FastAPI + the demo service.

    Host CA certificates are copied in (HTTPS goes through a TLS-intercepting proxy here), the demo
    service is its CMD (port 8020) and /srv/demo its WORKDIR. Built once per key; older tags of the
    same repository are removed when a new one is made.
    """
    if not DEMO_SERVICE.exists():
        raise FileNotFoundError(f"{DEMO_SERVICE} is missing; the debian-py base image bundles it")
    ca_files = sorted(HOST_CA_DIR.glob("*.crt")) if HOST_CA_DIR.is_dir() else []
    bundle = HOST_CA_BUNDLE.read_bytes() if HOST_CA_BUNDLE.exists() else b""
    containerfile = _debian_py_containerfile(ca_files, bool(bundle))
    rootfs_key = debian_rootfs_key()
    key = _key(
        rootfs_key,
        containerfile,
        DEMO_SERVICE.read_bytes(),
        bundle,
        *[path.name.encode() + b"\0" + path.read_bytes() for path in ca_files],
    )
    tag = f"{DEBIAN_PY_REPO}:{key}"
    if podman.image_exists(tag):
        return tag
    with _lock("debian-py"):
        if podman.image_exists(tag):
            return tag
        rootfs_tag = f"{DEBIAN_ROOTFS_REPO}:{rootfs_key}"
        if not podman.image_exists(rootfs_tag):
            podman("import", str(debian_rootfs_tarball()), rootfs_tag, timeout=900)
        with tempfile.TemporaryDirectory(prefix="cw-base-") as context:
            ctx = Path(context)
            (ctx / "certs").mkdir()
            for path in ca_files:
                shutil.copy(path, ctx / "certs" / path.name)
            if bundle:
                (ctx / "ca-certificates.crt").write_bytes(bundle)
            shutil.copy(DEMO_SERVICE, ctx / "demo_service.py")
            (ctx / "Containerfile").write_text(containerfile.replace("@ROOTFS@", rootfs_tag))
            podman("build", "--pull=never", "-t", tag, "-f", str(ctx / "Containerfile"), str(ctx), timeout=900)
        for old in podman.image_tags(DEBIAN_PY_REPO):
            if old != tag:
                podman.remove_image(old)
    return tag


def busybox_base(podman: Podman) -> str:
    """`localhost/cw-test-busybox:<key>`: busybox and nothing else (no Python, no package manager).

    Made from Debian's busybox-static package (fetched with `apt-get download`, cached).
    """
    deb = _busybox_deb()
    key = _key(deb.name, RECIPE_VERSION)
    tag = f"{BUSYBOX_REPO}:{key}"
    if podman.image_exists(tag):
        return tag
    with _lock("busybox"), tempfile.TemporaryDirectory(prefix="cw-busybox-") as scratch:
        if podman.image_exists(tag):
            return tag
        unpacked = Path(scratch) / "deb"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
        busybox = unpacked / "bin" / "busybox"
        applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True).stdout
        tarball = Path(scratch) / "rootfs.tar"
        with tarfile.open(tarball, "w") as tar:
            for directory, mode in [("bin", 0o755), ("sbin", 0o755), ("usr", 0o755), ("usr/bin", 0o755),
                                    ("usr/sbin", 0o755), ("etc", 0o755), ("root", 0o700), ("tmp", 0o1777)]:
                info = tarfile.TarInfo(directory)
                info.type, info.mode = tarfile.DIRTYPE, mode
                tar.addfile(info)
            tar.add(busybox, "bin/busybox")
            for applet in sorted(set(applets.split()) - {"bin/busybox"}):
                info = tarfile.TarInfo(applet)
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, "/bin/busybox", 0o777
                tar.addfile(info)
            for name, text in [("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"), ("etc/group", "root:x:0:\n")]:
                data = text.encode()
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        podman("import", "--change", 'CMD ["/bin/sh"]', str(tarball), tag)
    return tag


def _busybox_deb() -> Path:
    found = sorted(CACHE_DIR.glob("busybox-static_*.deb"))
    if found:
        return found[-1]
    if not shutil.which("apt-get"):
        raise FileNotFoundError("apt-get is needed to fetch busybox-static for the busybox base image")
    with _lock("busybox-deb"), tempfile.TemporaryDirectory(prefix="cw-deb-", dir=CACHE_DIR) as scratch:
        proc = subprocess.run(["apt-get", "download", "busybox-static"], cwd=scratch, capture_output=True, text=True)
        debs = sorted(Path(scratch).glob("busybox-static_*.deb"))
        if proc.returncode != 0 or not debs:
            raise RuntimeError(f"apt-get download busybox-static failed:\n{_tail(proc.stderr)}")
        target = CACHE_DIR / debs[0].name.replace("%3a", "_")
        os.replace(debs[0], target)
    return target


def _debian_py_containerfile(ca_files: Sequence[Path], has_bundle: bool) -> str:
    lines = ["FROM @ROOTFS@"]
    if ca_files:
        lines.append("COPY certs/ /usr/local/share/ca-certificates/")
    if has_bundle:
        lines.append("COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt")
    lines += [
        "COPY demo_service.py /srv/demo/demo_service.py",
        "WORKDIR /srv/demo",
        f"EXPOSE {DEMO_PORT}",
        f'CMD ["python3", "/srv/demo/demo_service.py", "--host", "0.0.0.0", "--port", "{DEMO_PORT}"]',
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Helpers


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    """Serialise cache builds between concurrent test runs."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _unmount_below(root: Path) -> None:
    """Unmount whatever debootstrap left mounted inside the rootfs (/proc, /sys), deepest first,
    so removing the rootfs never walks into a live filesystem."""
    prefix = str(root.resolve()) + "/"
    try:
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return
    for point in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _tail(text: str | bytes | None, lines: int = 40) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").splitlines()[-lines:])
