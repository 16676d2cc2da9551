"""Podman for the container tier, set up as CONTAINERS.md says; cached debootstrap base images; and
user projects (tools/, deploy.sh, a module made from the template) driven as a user drives them.

Nothing can be pulled on our machines, so base images are made with debootstrap once and kept: the
rootfs tarball under ~/.cache/chutes-wrappers-test/ and the imported images in podman storage, both
named by a hash of what goes into them (all named cw-test-*). Reruns find them and cost seconds.
Everything else a test makes (wrapper images, containers, processes) it removes.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import hashlib
import io
import json
import os
import pprint
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

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
FIXTURES = Path(__file__).resolve().parent / "fixtures"
WHISPER_SERVICE = FIXTURES / "whisper_like.py"
WHISPER_PORT = 8080
HTTPD_PORT = 8080
# Every cached base image is named cw-test-*: tests keep these and remove everything else they make.
CACHED_PREFIX = "localhost/cw-test-"
DEBIAN_PY_REPO = "localhost/cw-test-debian-py"
DEBIAN_ROOTFS_REPO = "localhost/cw-test-debian-rootfs"
DEBIAN_MINBASE_REPO = "localhost/cw-test-debian-minbase"
BUSYBOX_REPO = "localhost/cw-test-busybox"
SERVICES_REPO = "localhost/cw-test-services"
DEBIAN_NOPY_REPO = "localhost/cw-test-debian-nopy"
CONDA_REPO = "localhost/cw-test-conda"
EXITS_REPO = "localhost/cw-test-exits"
DEBIAN_NOVENV_REPO = "localhost/cw-test-debian-novenv"
# Debian without Python: what debootstrap minbase gives, plus the CA store apt and pip need.
DEBIAN_NOPY_PACKAGES = ("ca-certificates",)
START_SERVICES = "/usr/local/bin/start-services"
START_ASR = "/usr/local/bin/start-asr"
CONDA_PREFIX = "/opt/conda"
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

    def __init__(self, bin_dir: Path, layers: bool = False):
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        self.layers = layers
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
            "# Without layers: no intermediate images left behind (tests remove what they build).\n"
            "# With layers (bench/build): the build cache works as Docker's does.\n"
            f"BUILDAH_LAYERS={'true' if layers else 'false'}\n"
            "export BUILDAH_LAYERS\n"
            "# CW_BUILD_NO_CACHE=1: build from scratch, ignoring (but refilling) the build cache.\n"
            'if [ "$1" = build ] && [ -n "${CW_BUILD_NO_CACHE:-}" ]; then\n'
            "  shift\n"
            f"  exec podman {' '.join(PODMAN_GLOBAL_FLAGS)} build --no-cache \"$@\"\n"
            "fi\n"
            f"exec podman {' '.join(PODMAN_GLOBAL_FLAGS)} \"$@\"\n"
        )
        shim.chmod(0o755)

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses: CONTAINERS_CONF set, builds without intermediate images,
        and the docker shim first on PATH."""
        env = dict(os.environ)
        env["CONTAINERS_CONF"] = str(self.conf)
        env["BUILDAH_LAYERS"] = "true" if self.layers else "false"
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

    def containers(self, *filters: str) -> list[str]:
        """Names of containers (running or not) matching every `--filter` given."""
        args = ["ps", "-a", "--format", "{{.Names}}"]
        for item in filters:
            args += ["--filter", item]
        return self(*args).stdout.split()

    def remove_container(self, name: str) -> None:
        self("rm", "--force", "--time", "0", name, check=False, timeout=120)

    def logs(self, name: str) -> str:
        proc = self("logs", name, check=False)
        return proc.stdout + proc.stderr


@contextlib.contextmanager
def podman_engine(layers: bool = False) -> Iterator[Podman]:
    """A Podman whose docker shim lives in a temp dir removed on exit."""
    bin_dir = Path(tempfile.mkdtemp(prefix="cw-engine-"))
    try:
        yield Podman(bin_dir, layers=layers)
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


def debian_rootfs_key(packages: Sequence[str] = DEBIAN_PACKAGES) -> str:
    return _key(DEBIAN_SUITE, packages, RECIPE_VERSION, "minbase")


def debian_rootfs_tarball(packages: Sequence[str] = DEBIAN_PACKAGES) -> Path:
    """debootstrap minbase with `packages`, as a tarball cached by the package list and recipe."""
    key = debian_rootfs_key(packages)
    tarball = CACHE_DIR / f"debian-{DEBIAN_SUITE}-{key}.tar"
    if tarball.exists():
        return tarball
    with _lock("debootstrap"):
        if tarball.exists():
            return tarball
        rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE_DIR))
        try:
            cmd = ["debootstrap", "--variant=minbase"]
            if packages:
                cmd.append(f"--include={','.join(packages)}")
            cmd += [DEBIAN_SUITE, str(rootfs), debian_mirror()]
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


def debian_rootfs_image(
    podman: Podman, packages: Sequence[str] = DEBIAN_PACKAGES, repo: str = DEBIAN_ROOTFS_REPO
) -> str:
    """The debootstrap tarball imported as `<repo>:<key>` (no CMD, no certs); one repo per package set."""
    tag = f"{repo}:{debian_rootfs_key(packages)}"
    if not podman.image_exists(tag):
        with _lock(f"import-{tag.rpartition(':')[2]}"):
            if not podman.image_exists(tag):
                podman("import", str(debian_rootfs_tarball(packages)), tag, timeout=900)
    return tag


def debian_python_base(podman: Podman) -> str:
    """`localhost/cw-test-debian-py:<key>`: Debian bookworm + Python + FastAPI + the demo service.

    Host CA certificates are copied in (HTTPS goes through a TLS-intercepting proxy here), the demo
    service is its CMD (port 8020) and /srv/demo its WORKDIR. Built once per key; older tags of the
    same repository are removed when a new one is made.
    """
    if not DEMO_SERVICE.exists():
        raise FileNotFoundError(f"{DEMO_SERVICE} is missing; the debian-py base image bundles it")
    parent = debian_rootfs_image(podman)
    files, ca_lines = _ca_context()
    files["demo_service.py"] = (DEMO_SERVICE.read_bytes(), 0o644)
    containerfile = "\n".join([
        f"FROM {parent}",
        *ca_lines,
        "COPY demo_service.py /srv/demo/demo_service.py",
        "WORKDIR /srv/demo",
        f"EXPOSE {DEMO_PORT}",
        f'CMD ["python3", "/srv/demo/demo_service.py", "--host", "0.0.0.0", "--port", "{DEMO_PORT}"]',
    ]) + "\n"
    return _cached_image(podman, DEBIAN_PY_REPO, containerfile, files)


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


def services_base(podman: Podman) -> str:
    """`localhost/cw-test-services:<key>`: the journey's base, two services started by one sh script.

    The demo service (OpenAPI) on 8020 and a whisper.cpp-like service (stdlib only, no OpenAPI, a
    multipart upload at /inference) on 8080, both started by START_SERVICES, the image's CMD.
    """
    parent = debian_python_base(podman)
    containerfile = "\n".join([
        f"FROM {parent}",
        "COPY whisper_like.py /srv/whisper/whisper_like.py",
        f"COPY start-services.sh {START_SERVICES}",
        "WORKDIR /srv",
        f"EXPOSE {DEMO_PORT} {WHISPER_PORT}",
        f'CMD ["{START_SERVICES}"]',
    ]) + "\n"
    files = {"whisper_like.py": (WHISPER_SERVICE.read_bytes(), 0o644),
             "start-services.sh": ((FIXTURES / "start-services.sh").read_bytes(), 0o755)}
    return _cached_image(podman, SERVICES_REPO, containerfile, files)


def exits_base(podman: Podman) -> str:
    """`localhost/cw-test-exits:<key>`: a base whose entrypoint (START_ASR) prints an error and exits 3."""
    parent = debian_python_base(podman)
    containerfile = "\n".join([
        f"FROM {parent}",
        f"COPY start-asr.sh {START_ASR}",
        f'CMD ["{START_ASR}"]',
    ]) + "\n"
    files = {"start-asr.sh": ((FIXTURES / "start-asr.sh").read_bytes(), 0o755)}
    return _cached_image(podman, EXITS_REPO, containerfile, files)


def debian_nopython_base(podman: Podman) -> str:
    """`localhost/cw-test-debian-nopy:<key>`: Debian minbase with no Python at all (apt-get works).

    Its service is busybox httpd (the busybox-static binary, not a Debian package) serving a CGI
    script at /cgi-bin/status on 8080, like an image whose server is a compiled binary.
    """
    parent = debian_rootfs_image(podman, DEBIAN_NOPY_PACKAGES, DEBIAN_MINBASE_REPO)
    files, ca_lines = _ca_context()
    files["busybox"] = (_busybox_binary(), 0o755)
    files["www/cgi-bin/status"] = ((FIXTURES / "www" / "cgi-bin" / "status").read_bytes(), 0o755)
    containerfile = "\n".join([
        f"FROM {parent}",
        *ca_lines,
        "COPY busybox /usr/local/bin/busybox",
        "COPY www/ /srv/www/",
        "WORKDIR /srv/www",
        f"EXPOSE {HTTPD_PORT}",
        f'CMD ["/usr/local/bin/busybox", "httpd", "-f", "-v", "-p", "{HTTPD_PORT}", "-h", "/srv/www"]',
    ]) + "\n"
    return _cached_image(podman, DEBIAN_NOPY_REPO, containerfile, files, key_extra=parent)


def debian_novenv_base(podman: Podman) -> str:
    """`localhost/cw-test-debian-novenv:<key>`: Debian's python3 without python3-venv (no ensurepip),
    as `apt-get install python3` leaves it; its service is the whisper.cpp-like one."""
    parent = debian_nopython_base(podman)
    containerfile = "\n".join([
        f"FROM {parent}",
        "RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3"
        " && apt-get clean && rm -rf /var/lib/apt/lists/*"
        " && ! python3 -c 'import ensurepip' 2>/dev/null",
        "COPY whisper_like.py /srv/whisper/whisper_like.py",
        "WORKDIR /srv/whisper",
        f"EXPOSE {WHISPER_PORT}",
        f'CMD ["python3", "/srv/whisper/whisper_like.py", "--host", "0.0.0.0", "--port", "{WHISPER_PORT}"]',
    ]) + "\n"
    return _cached_image(podman, DEBIAN_NOVENV_REPO, containerfile, {"whisper_like.py": (WHISPER_SERVICE.read_bytes(), 0o644)})


def conda_base(podman: Podman) -> str:
    """`localhost/cw-test-conda:<key>`: the only Python lives in a conda-style prefix, /opt/conda.

    Conda images cannot be pulled here, so this is a look-alike: Debian's Python moved into
    /opt/conda/{bin,lib,include} (with its headers and ensurepip's wheels, as conda ships them),
    every Debian python package purged, PATH starting with /opt/conda/bin as in miniconda images.
    Its service is the whisper.cpp-like one, started with that `python`.
    """
    parent = debian_rootfs_image(podman)
    files, ca_lines = _ca_context()
    files["whisper_like.py"] = (WHISPER_SERVICE.read_bytes(), 0o644)
    prefix, version = CONDA_PREFIX, "3.11"
    script = " && ".join([
        "set -e",
        "apt-get update -q",
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libpython3.11-dev",
        f"mkdir -p {prefix}/bin {prefix}/lib {prefix}/include",
        f"cp /usr/bin/python{version} {prefix}/bin/python{version}",
        f"ln -s python{version} {prefix}/bin/python3",
        f"ln -s python{version} {prefix}/bin/python",
        f"cp -a /usr/lib/python{version} {prefix}/lib/python{version}",
        f"cp -a /usr/include/python{version} {prefix}/include/python{version}",
        # Debian's pyconfig.h only includes the multiarch one: conda ships the real file.
        f"cp /usr/include/x86_64-linux-gnu/python{version}/pyconfig.h {prefix}/include/python{version}/pyconfig.h",
        # conda rewrites its build prefix into the installed prefix: the compiler flags point there.
        f"sed -i -e 's|/usr/include/x86_64-linux-gnu/python{version}|{prefix}/include/python{version}|g'"
        f" -e 's|/usr/include/python{version}|{prefix}/include/python{version}|g'"
        f" {prefix}/lib/python{version}/_sysconfigdata_*.py",
        # ensurepip with its own wheels (Debian's look in /usr/share/python-wheels, purged below).
        f"cd {prefix}/lib/python{version}/ensurepip",
        "mkdir -p _bundled",
        "cp /usr/share/python-wheels/pip-*.whl /usr/share/python-wheels/setuptools-*.whl _bundled/",
        "PV=$(ls _bundled | sed -n 's/^pip-\\([^-]*\\)-.*/\\1/p')",
        "SV=$(ls _bundled | sed -n 's/^setuptools-\\([^-]*\\)-.*/\\1/p')",
        "sed -i -e \"s/^_PIP_VERSION = .*/_PIP_VERSION = '$PV'/\" -e \"s/^_SETUPTOOLS_VERSION = .*/_SETUPTOOLS_VERSION = '$SV'/\""
        " __init__.py",
        "cd /",
        "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q"
        " $(dpkg-query -W -f '${Package}\\n' | grep -E '^(lib)?python3' | sort -u)",
        "apt-get clean",
        "rm -rf /var/lib/apt/lists/* /usr/lib/python3 /usr/local/lib/python3*",
        "! command -v python3",
        f"{prefix}/bin/python -c 'import ssl, sqlite3, venv, ensurepip, ctypes'",
        f"{prefix}/bin/python -c 'import sysconfig as s; assert s.get_config_var(\"INCLUDEPY\").startswith(\"{prefix}/\")'",
        f"{prefix}/bin/python -m venv /tmp/venv-check",
        "rm -rf /tmp/venv-check",
    ])
    containerfile = "\n".join([
        f"FROM {parent}",
        *ca_lines,
        f"RUN {script}",
        "COPY whisper_like.py /srv/whisper/whisper_like.py",
        f'ENV PATH="{prefix}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"',
        "WORKDIR /srv/whisper",
        f"EXPOSE {WHISPER_PORT}",
        f'CMD ["python", "/srv/whisper/whisper_like.py", "--host", "0.0.0.0", "--port", "{WHISPER_PORT}"]',
    ]) + "\n"
    return _cached_image(podman, CONDA_REPO, containerfile, files, key_extra=parent)


def _ca_context() -> tuple[dict[str, tuple[bytes, int]], list[str]]:
    """The host's extra CA certificates and bundle (HTTPS goes through an intercepting proxy here)."""
    files: dict[str, tuple[bytes, int]] = {}
    lines = []
    ca_files = sorted(HOST_CA_DIR.glob("*.crt")) if HOST_CA_DIR.is_dir() else []
    for path in ca_files:
        files[f"certs/{path.name}"] = (path.read_bytes(), 0o644)
    if ca_files:
        lines.append("COPY certs/ /usr/local/share/ca-certificates/")
    if HOST_CA_BUNDLE.exists():
        files["ca-certificates.crt"] = (HOST_CA_BUNDLE.read_bytes(), 0o644)
        lines.append("COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt")
    return files, lines


def _cached_image(
    podman: Podman,
    repo: str,
    containerfile: str,
    files: dict[str, tuple[bytes, int]],
    key_extra: str = "",
) -> str:
    """`repo:<key>` built from `containerfile` and `files` (name -> (bytes, mode)), once per key.

    The key covers the Containerfile (which names its parent image by key), every file's name,
    mode and bytes, and RECIPE_VERSION. Older tags of the same repository are removed.
    """
    key = _key(
        RECIPE_VERSION,
        containerfile,
        key_extra,
        *[name.encode() + b"\0" + oct(mode).encode() + b"\0" + data for name, (data, mode) in sorted(files.items())],
    )
    tag = f"{repo}:{key}"
    if podman.image_exists(tag):
        return tag
    with _lock(repo.rpartition("/")[2]):
        if podman.image_exists(tag):
            return tag
        with tempfile.TemporaryDirectory(prefix="cw-base-") as context:
            ctx = Path(context)
            for name, (data, mode) in files.items():
                target = ctx / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                target.chmod(mode)
            (ctx / "Containerfile").write_text(containerfile)
            # Layers off: the base is one image, with no intermediate images left behind.
            podman("build", "--pull=never", "--layers=false", "-t", tag, "-f", str(ctx / "Containerfile"),
                   str(ctx), timeout=1200)
        _remove_older_tags(podman, tag)
        # The parent's older tags may have been kept for an older tag of this image: retry them.
        parent = containerfile.split("\n", 1)[0].removeprefix("FROM ").strip()
        if parent.startswith(CACHED_PREFIX):
            _remove_older_tags(podman, parent)
    return tag


def _remove_older_tags(podman: Podman, keep: str) -> None:
    """Remove the other tags of `keep`'s repository, without force: a tag still used by a container
    (another test run's) or by a derived image is kept, and removed by a later run."""
    repo = keep.rpartition(":")[0]
    for old in podman.image_tags(repo):
        if old != keep:
            podman("rmi", old, check=False)


def _busybox_binary() -> bytes:
    """/bin/busybox of Debian's busybox-static package (cached .deb)."""
    with tempfile.TemporaryDirectory(prefix="cw-busybox-") as scratch:
        subprocess.run(["dpkg-deb", "-x", str(_busybox_deb()), scratch], check=True)
        return (Path(scratch) / "bin" / "busybox").read_bytes()


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


# --------------------------------------------------------------------------------------------------
# User projects


TEMPLATE = ROOT / "deploy_example.py"
PROJECT_FILES = ("deploy.sh", ".dockerignore")


def make_project(directory: Path, module: str, values: Mapping[str, object]) -> Path:
    """`directory` laid out like a user's project, with `module`.py made from the template.

    A real copy of tools/ (a symlink would not reach the build context) without bytecode, deploy.sh
    and .dockerignore; the module is deploy_example.py with the top-level assignments named in
    `values` replaced, as README says ("copy deploy_example.py, then edit the variables at the top").
    A name that the template does not assign is an error, so a template change cannot go unnoticed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "tools", directory / "tools", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, directory / name)
    path = directory / f"{module}.py"
    path.write_text(edit_assignments(TEMPLATE.read_text(), values))
    return path


def edit_assignments(source: str, values: Mapping[str, object]) -> str:
    """`source` with the top-level `NAME = ...` statements of `values` replaced by `NAME = <repr>`."""
    spans = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            spans[node.targets[0].id] = (node.lineno, node.end_lineno)
    missing = sorted(set(values) - set(spans))
    if missing:
        raise KeyError(f"{TEMPLATE.name} no longer assigns {', '.join(missing)} at top level")
    lines = source.splitlines(keepends=True)
    for name in sorted(values, key=lambda n: spans[n][0], reverse=True):
        start, end = spans[name]
        text = pprint.pformat(values[name], width=100, sort_dicts=False)
        lines[start - 1:end] = [f"{name} = {text}\n"]
    return "".join(lines)


def project_env(podman: Podman) -> dict[str, str]:
    """The environment deploy.sh runs with in a project copy: the docker shim first on PATH, this
    test run's virtualenv, no colours, and no PYTHONPATH (tools/ comes from the project copy)."""
    env = podman.env
    env.pop("PYTHONPATH", None)
    env["CHUTES_WRAPPERS_VENV"] = sys.prefix
    env["NO_COLOR"] = "1"
    return env


def deploy_sh(project: Path, *args: str, env: Mapping[str, str], timeout: float = 1800) -> subprocess.CompletedProcess:
    """`./deploy.sh ARGS` in `project`, unattended (no terminal), output captured."""
    return subprocess.run(
        ["./deploy.sh", *args], cwd=project, env=dict(env), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout,
    )


def wrapper_lines(text: str) -> list[str]:
    """The lines the wrapper image's setup script prints about itself (`chutes-wrappers: ...`)."""
    return [line for line in text.splitlines() if line.startswith("chutes-wrappers: ")]


class Background:
    """A command in its own session (as a terminal would start it), its output in a file."""

    def __init__(self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: Path):
        self.log = log
        self._handle = open(log, "wb")
        self.proc = subprocess.Popen(
            list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=self._handle,
            stderr=subprocess.STDOUT, start_new_session=True,
        )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C as a terminal sends it (SIGINT to the process group); SIGKILL if it hangs."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._handle.close()
        return self.proc.returncode


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(method: str, url: str, body: object = None, timeout: float = 60) -> tuple[int, Message, bytes]:
    """(status, headers (case-insensitive), body) of one request; a JSON body when `body` is given.
    HTTP errors are answers too (their status is returned, not raised)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def wait_for_health(base_url: str, timeout: float, alive: Callable[[], bool], describe: Callable[[], str]) -> dict:
    """GET /health until it reports healthy; fails at once when `alive()` turns false."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not alive():
            raise AssertionError(f"stopped before the chute was healthy:\n{_tail(describe())}")
        try:
            status, _, body = http_json("GET", base_url + "/health", timeout=5)
            last = f"HTTP {status}: {body[:200]!r}"
            if status == 200 and json.loads(body).get("status") == "healthy":
                return json.loads(body)
        except (OSError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.25)
    raise AssertionError(f"{base_url}/health not healthy within {timeout:g}s ({last}):\n{_tail(describe())}")


def run_chute(podman: Podman, image: str, module: str, name: str, publish: int | None = None) -> None:
    """The wrapped image as Chutes starts it: `chutes run MODULE:chute` (dev mode), detached."""
    ports = ["-p", f"127.0.0.1:{publish}:8000"] if publish else []
    podman("run", "-d", "--pull=never", "--name", name, "--label", "cw-test=1", *ports,
           "-e", "CHUTES_EXECUTION_CONTEXT=REMOTE", image,
           "chutes", "run", f"{module}:chute", "--dev", "--host", "0.0.0.0", "--port", "8000",
           "--logging-port", "8001")


def wait_for_log(podman: Podman, name: str, text: str, timeout: float) -> str:
    """The container's log once it contains `text`, or once the container has exited, or at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        log = podman.logs(name)
        if text in log or time.monotonic() > deadline:
            return log
        state = podman("inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip()
        if state in ("exited", "stopped", ""):
            return podman.logs(name)
        time.sleep(0.25)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain `text` (containers' conmon, `logs -f` helpers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


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
