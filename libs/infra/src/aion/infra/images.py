"""aion's container images, built without Docker and pushed to the local registry.

    python -m aion.infra.images build [SERVICE...] [--values PATH] [--json]
    python -m aion.infra.images refs  [SERVICE...]     # the references, one a line
    python -m aion.infra.images skaffold SERVICE       # skaffold's custom builder ($IMAGE)
    python -m aion.infra.images prune                  # keep the newest image of each service

`build` (what `make images` runs):
1. installs buildah and mmdebstrap from Debian's packages when missing and
   builds distribution's registry from its Go module
   (deploy/local/images/build-tools.sh), then starts the registry component;
2. assembles the base images from Debian's packages with mmdebstrap (bookworm,
   minbase, no docs): `aion/base-python` (python3, libgomp1, ca-certificates)
   for the runtime stage, `aion/base-python-build` (the same plus pip) for the
   builder stages, each tagged with the hash of its recipe;
3. builds every service's image from its own Dockerfile with `buildah bud
   --isolation chroot --layers`, with the host's uv cache mounted so that locked
   wheels are neither downloaded nor compiled again;
4. tags each image with a hash of everything it is built from (the Dockerfile,
   the files its COPY lines take, the base images' tags, the build arguments) and
   skips the build when the registry already has that tag;
5. writes deploy/local/values-images.yaml, the chart values naming the images:
   `helm install ... -f deploy/local/values-local.yaml -f deploy/local/values-images.yaml`.

buildah keeps its images in $AION_CACHE/buildah (overlay storage, or vfs where
overlay is refused; AION_BUILDAH_DRIVER chooses).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from aion.infra.component import InfraError
from aion.infra.oci_registry import ImageRegistry, run_tools
from aion.infra.paths import REPO, Layout

SERVICES = ("gateway", "router", "agent", "knowledge", "executor", "operator")
PROJECT = "aion"  # the registry namespace: localhost:5000/aion/<service>
VALUES_FILE = REPO / "deploy" / "local" / "values-images.yaml"
# Bump to rebuild every image when the way they are built changes.
SCHEME = "aion-images/1"

SUITE = "bookworm"
SOURCES = (
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
)
RUNTIME_PACKAGES = ("python3", "libgomp1", "ca-certificates")
BASES: dict[str, tuple[str, ...]] = {
    "base-python": RUNTIME_PACKAGES,
    # The builder stages install uv from PyPI with pip.
    "base-python-build": (*RUNTIME_PACKAGES, "python3-pip"),
}
# The tag the Dockerfiles name by default; `build` also passes the exact one.
BASE_DEFAULT_TAG = SUITE
# Documentation, manuals and translations stay out (also for later apt installs).
DPKG_EXCLUDES = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
)
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Where the build stages see the host's uv cache (UV_CACHE_DIR in the Dockerfiles).
UV_CACHE_MOUNT = "/host-uv-cache"
LOCAL_WHEELS_MOUNT = "/host-wheels"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def log(text: str) -> None:
    print(f"images: {text}", file=sys.stderr, flush=True)


@dataclass
class Built:
    """One image: where it is, whether this run built it, how long that took."""

    service: str
    reference: str
    repository: str
    tag: str
    built: bool
    seconds: float
    size_mb: float  # in the registry (compressed layers)
    unpacked_mb: float | None  # on a node once pulled; None when buildah no longer has it


# -- what an image depends on ------------------------------------------------------
def _dockerignore(context: Path) -> list[str]:
    path = context / ".dockerignore"
    if not path.exists():
        return []
    lines = (raw.strip() for raw in path.read_text().splitlines())
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def _ignored(rel: str, patterns: Sequence[str]) -> bool:
    """Whether a context path is left out by .dockerignore (its plain patterns:
    `name`, `dir/name` and `**/glob`; aion's file uses no negations)."""
    parts = rel.split("/")
    for pat in patterns:
        if pat.startswith("**/"):
            if any(fnmatch.fnmatchcase(p, pat[3:]) for p in parts):
                return True
        elif fnmatch.fnmatchcase("/".join(parts[: pat.count("/") + 1]), pat):
            return True
    return False


def copy_sources(dockerfile: Path) -> list[str]:
    """The context paths the Dockerfile's COPY/ADD lines take (not `--from` ones)."""
    out: list[str] = []
    text = dockerfile.read_text().replace("\\\n", " ")
    for raw in text.splitlines():
        words = raw.split()
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if any(w.startswith("--from") for w in words[1:]) or len(args) < 2:
            continue
        out.extend(args[:-1])
    return out


def context_files(context: Path, sources: Sequence[str]) -> list[Path]:
    patterns = _dockerignore(context)
    files: set[Path] = set()
    for src in sources:
        root = context / src
        candidates = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        if not root.exists():
            raise InfraError("images", f"{src}: named by a COPY line but not in {context}")
        for p in candidates:
            if not _ignored(p.relative_to(context).as_posix(), patterns):
                files.add(p)
    return sorted(files)


def content_tag(dockerfile: Path, context: Path, build_args: dict[str, str]) -> str:
    """A hash of everything the image is built from: same inputs, same tag."""
    h = hashlib.sha256()
    h.update(SCHEME.encode() + b"\0")
    h.update(dockerfile.read_bytes() + b"\0")
    for key in sorted(build_args):
        h.update(f"{key}={build_args[key]}\0".encode())
    for path in context_files(context, copy_sources(dockerfile)):
        h.update(path.relative_to(context).as_posix().encode() + b"\0")
        h.update(b"x" if os.access(path, os.X_OK) else b"-")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def base_recipe(name: str) -> dict[str, object]:
    return {
        "scheme": SCHEME,
        "name": name,
        "suite": SUITE,
        "variant": "minbase",
        "sources": list(SOURCES),
        "include": list(BASES[name]),
        "exclude": list(DPKG_EXCLUDES),
        "env": {"PATH": IMAGE_PATH, "LANG": "C.UTF-8"},
    }


def base_tag(name: str) -> str:
    return hashlib.sha256(json.dumps(base_recipe(name), sort_keys=True).encode()).hexdigest()[:16]


# -- buildah -----------------------------------------------------------------------
class Builder:
    """buildah with aion's own storage, and the local registry it pushes to."""

    def __init__(self, layout: Layout, registry: ImageRegistry) -> None:
        self.layout = layout
        self.registry = registry
        self.root = layout.cache / "buildah"
        self._driver: str | None = None

    # storage ------------------------------------------------------------------------
    @property
    def driver(self) -> str:
        """overlay when this kernel and file system take it, else vfs."""
        if self._driver is None:
            chosen = os.environ.get("AION_BUILDAH_DRIVER")
            if chosen:
                self._driver = chosen
            else:
                marker = self.root / "driver"
                if marker.exists():  # a storage folder keeps the driver it was made with
                    self._driver = marker.read_text().strip()
                else:
                    self._driver = "overlay" if self._works("overlay") else "vfs"
                    self.root.mkdir(parents=True, exist_ok=True)
                    marker.write_text(self._driver + "\n")
        return self._driver

    def _flags(self, driver: str) -> list[str]:
        return [
            "--root",
            str(self.root / f"storage-{driver}"),
            "--runroot",
            str(self.root / f"run-{driver}"),
            "--storage-driver",
            driver,
        ]

    def _works(self, driver: str) -> bool:
        """Whether buildah can make and mount a container with this driver."""
        flags = self._flags(driver)
        made = subprocess.run(
            ["buildah", *flags, "from", "--name", "aion-probe", "scratch"],
            capture_output=True,
            text=True,
            check=False,
        )
        if made.returncode != 0:
            log(f"storage driver {driver} refused: {made.stderr.strip()}")
            return False
        mounted = subprocess.run(
            ["buildah", *flags, "mount", "aion-probe"], capture_output=True, text=True, check=False
        )
        subprocess.run(["buildah", *flags, "rm", "aion-probe"], capture_output=True, check=False)
        if mounted.returncode != 0:
            log(f"storage driver {driver} refused: {mounted.stderr.strip()}")
        return mounted.returncode == 0

    def buildah(self, *args: str, quiet: bool = False) -> str:
        argv = ["buildah", *self._flags(self.driver), *args]
        proc = subprocess.run(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if quiet else None,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            err = f": {proc.stderr.strip()[-2000:]}" if quiet and proc.stderr else ""
            raise InfraError("images", f"`buildah {' '.join(args[:3])} ...` failed{err}")
        return proc.stdout.strip()

    def has_local(self, ref: str) -> bool:
        proc = subprocess.run(
            ["buildah", *self._flags(self.driver), "inspect", "--type", "image", ref],
            capture_output=True,
            check=False,
        )
        return proc.returncode == 0

    def push(self, ref: str) -> None:
        # Fast gzip: the registry is on this machine, and default-level gzip of the
        # executor's torch layer costs minutes of CPU for little. (buildah 1.28
        # compresses whatever is asked for a registry: --disable-compression is
        # ignored by its docker:// transport.)
        self.buildah(
            "push",
            "--tls-verify=false",
            "--compression-format",
            "gzip",
            "--compression-level",
            "1",
            "--quiet",
            ref,
            f"docker://{ref}",
        )

    def unpacked_mb(self, ref: str) -> float | None:
        """The image's size in buildah's storage, unpacked (None when it is not there)."""
        proc = subprocess.run(
            ["buildah", *self._flags(self.driver), "images", "--json", ref],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            return None
        number, _, unit = json.loads(proc.stdout)[0]["size"].partition(" ")
        scale = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}.get(unit, 1)
        return float(number) * scale / 2**20

    def forget_older(self, repository: str, keep: str) -> None:
        """Untag this repository's other images in buildah's storage (the registry
        keeps them): a changed service does not pile up gigabytes here."""
        listed = self.buildah("images", "--format", "{{.Name}}:{{.Tag}}", quiet=True)
        for ref in listed.splitlines():
            if ref.startswith(f"{repository}:") and ref != keep:
                self.buildah("rmi", ref, quiet=True)

    def run(self, ref: str, *argv: str, user: str | None = None) -> str:
        """Run a command in a container of a local image (chroot isolation); its stdout."""
        ctr = self.buildah("from", "--quiet", "--pull=false", ref)
        try:
            return self.buildah(
                "run",
                "--isolation",
                "chroot",
                *(["--user", user] if user else []),
                ctr,
                "--",
                *argv,
            )
        finally:
            self.buildah("rm", ctr, quiet=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One image build at a time on this machine (make images, tests)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # images -------------------------------------------------------------------------
    def repository(self, name: str) -> str:
        return f"{self.registry.host}/{PROJECT}/{name}"

    def ensure_base(self, name: str) -> str:
        """The base image's reference (by recipe hash), built and pushed when missing."""
        tag = base_tag(name)
        ref = f"{self.repository(name)}:{tag}"
        path = f"{PROJECT}/{name}"
        if self.registry.client.has(path, tag):
            return ref
        if not self.has_local(ref):
            started = time.monotonic()
            self._assemble_base(name, ref)
            log(f"{name}: assembled from Debian's packages in {time.monotonic() - started:.1f}s")
        self.buildah("tag", ref, f"{self.repository(name)}:{BASE_DEFAULT_TAG}")
        self.push(ref)
        self.push(f"{self.repository(name)}:{BASE_DEFAULT_TAG}")
        return ref

    def _assemble_base(self, name: str, ref: str) -> None:
        recipe = base_recipe(name)
        with tempfile.TemporaryDirectory(dir=self.layout.cache, prefix=".base-") as tmp:
            rootfs = Path(tmp) / "rootfs.tar"
            argv = [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                f"--include={','.join(BASES[name])}",
                '--aptopt=APT::Install-Recommends "false"',
                *[f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES],
                # Keep the licences.
                "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin '
                '"$1"/var/cache/debconf/*-old "$1"/var/log/apt "$1"/var/log/dpkg.log',
                SUITE,
                str(rootfs),
                *SOURCES,
            ]
            proc = subprocess.run(argv, check=False)
            if proc.returncode != 0:
                raise InfraError("images", f"mmdebstrap failed for {name} (exit {proc.returncode})")
            ctr = self.buildah("from", "--quiet", "scratch")
            try:
                self.buildah("add", "--quiet", ctr, str(rootfs), "/")
                env = recipe["env"]
                assert isinstance(env, dict)
                self.buildah(
                    "config",
                    *[a for k, v in env.items() for a in ("--env", f"{k}={v}")],
                    "--cmd",
                    "python3",
                    "--label",
                    f"org.opencontainers.image.title=aion {name} (Debian {SUITE})",
                    "--label",
                    f"dev.aion.recipe={base_tag(name)}",
                    ctr,
                )
                self.buildah("commit", "--quiet", "--rm", ctr, ref)
            except InfraError:
                subprocess.run(["buildah", *self._flags(self.driver), "rm", ctr], check=False)
                raise

    def build_service(self, service: str, bases: dict[str, str], uv_cache: Path) -> Built:
        dockerfile = REPO / "services" / service / "Dockerfile"
        args = {
            "PYTHON_IMAGE": bases["base-python"],
            "BUILDER_IMAGE": bases["base-python-build"],
            "UV_CACHE_DIR": UV_CACHE_MOUNT,
        }
        volumes = ["--volume", f"{uv_cache}:{UV_CACHE_MOUNT}"]
        hashed = dict(args)
        if service == "executor":
            # llama-cpp-python as `make setup` compiled it here, not compiled again.
            version = locked_version("llama-cpp-python")
            wheel = host_built_wheel(uv_cache, "llama-cpp-python", version)
            if wheel is not None:
                wheels = self.root / "wheels"
                shutil.rmtree(wheels, ignore_errors=True)
                wheels.mkdir(parents=True)
                shutil.copy2(wheel, wheels / wheel.name)
                volumes += ["--volume", f"{wheels}:{LOCAL_WHEELS_MOUNT}:ro"]
                args |= {"BUILD_PACKAGES": "", "LOCAL_WHEELS": LOCAL_WHEELS_MOUNT}
                digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
                hashed |= args | {"llama-cpp-python wheel": f"{wheel.name} {digest}"}
            else:
                log(f"executor: no llama-cpp-python {version} wheel in {uv_cache}: compiling it")
        tag = content_tag(dockerfile, REPO, hashed)
        repo = self.repository(service)
        ref = f"{repo}:{tag}"
        started = time.monotonic()
        built = False
        if not self.registry.client.has(f"{PROJECT}/{service}", tag):
            if not self.has_local(ref):
                log(f"{service}: building {ref}")
                ca = Path(os.environ.get("SSL_CERT_FILE") or CA_BUNDLE)
                if ca.is_file():  # this machine's trusted CAs, for pip and uv in RUN steps
                    volumes += ["--volume", f"{ca}:{CA_BUNDLE}:ro"]
                self.buildah(
                    "bud",
                    "--isolation",
                    "chroot",
                    "--layers",
                    "--force-rm",  # no working containers left behind by a failed step
                    "--pull=false",
                    "--tls-verify=false",
                    "--quiet",
                    "--file",
                    str(dockerfile),
                    *[a for k, v in args.items() for a in ("--build-arg", f"{k}={v}")],
                    # Not part of the tag: only reruns the Dockerfiles' `uv` stage.
                    "--build-arg",
                    f"UV_STAGE_RUN={time.time_ns()}",
                    *volumes,
                    "--label",
                    f"dev.aion.service={service}",
                    "--tag",
                    ref,
                    str(REPO),
                )
            pushing = time.monotonic()
            self.push(ref)
            log(f"{service}: pushed in {time.monotonic() - pushing:.1f}s")
            built = True
            self.forget_older(repo, ref)
        seconds = time.monotonic() - started
        size = image_size_mb(self.registry, f"{PROJECT}/{service}", tag)
        unpacked = self.unpacked_mb(ref)
        how = f"built and pushed in {seconds:.1f}s" if built else "unchanged, in the registry"
        unpacked_text = "?" if unpacked is None else f"{unpacked:.0f}"
        log(f"{service}: {how}, {size:.0f} MiB ({unpacked_text} MiB unpacked): {ref}")
        return Built(
            service,
            ref,
            repo,
            tag,
            built,
            round(seconds, 1),
            round(size, 1),
            None if unpacked is None else round(unpacked, 1),
        )


def image_size_mb(registry: ImageRegistry, name: str, tag: str) -> float:
    manifest = registry.client.manifest(name, tag)
    total = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
    return float(total) / (1024 * 1024)


def locked_version(package: str) -> str:
    """The version uv.lock pins for `package`."""
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    for entry in lock.get("package", []):
        if entry.get("name") == package:
            return str(entry["version"])
    raise InfraError("images", f"{package} is not in uv.lock")


def host_built_wheel(uv_cache: Path, package: str, version: str) -> Path | None:
    """The newest wheel uv built on this host from `package`'s sdist at `version`."""
    stem = package.replace("-", "_")
    found = list(uv_cache.glob(f"sdists-v*/pypi/{package}/{version}/*/*/{stem}-{version}-*.whl"))
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def uv_cache_dir() -> Path:
    """The host's uv cache (where `make setup` left the locked wheels)."""
    if env := os.environ.get("UV_CACHE_DIR"):
        return Path(env)
    uv = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    proc = subprocess.run([uv, "cache", "dir"], capture_output=True, text=True, check=False)
    if proc.returncode == 0 and proc.stdout.strip():
        return Path(proc.stdout.strip())
    return Path.home() / ".cache" / "uv"


def build(services: Sequence[str] = SERVICES, layout: Layout | None = None) -> list[Built]:
    """Build (or find) every service's image in the local registry; see the module doc."""
    unknown = [s for s in services if s not in SERVICES]
    if unknown:
        raise InfraError(
            "images", f"unknown service(s) {', '.join(unknown)}; known: {', '.join(SERVICES)}"
        )
    layout = layout or Layout.from_env()
    run_tools("apt", "registry")
    registry = ImageRegistry(layout)
    registry.up()
    registry.detach()  # the cluster's runtime pulls from it after this process exits
    builder = Builder(layout, registry)
    uv_cache = uv_cache_dir()
    with builder.lock():
        bases = {name: builder.ensure_base(name) for name in BASES}
        return [builder.build_service(s, bases, uv_cache) for s in services]


def values_yaml(images: Sequence[Built]) -> str:
    """Chart values naming the images (`<service>.image.repository/tag`)."""
    lines = [
        "# Written by `make images` (python -m aion.infra.images build): the images it",
        "# pushed to the local registry, by content tag. Use it after the local values:",
        "#   helm install aion charts/aion -f deploy/local/values-local.yaml \\",
        "#     -f deploy/local/values-images.yaml",
    ]
    for img in images:
        lines += [
            f"{img.service}:",
            "  image:",
            f"    repository: {img.repository}",
            f'    tag: "{img.tag}"',
        ]
    return "\n".join(lines) + "\n"


def write_values(images: Sequence[Built], path: Path = VALUES_FILE) -> Path:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(values_yaml(images))
    tmp.replace(path)
    return path


def prune(layout: Layout | None = None) -> list[str]:
    """Delete from the registry every image but the newest of each repository (and
    the base images' current tags), then collect the freed layers. Returns what
    was deleted. A lock change leaves gigabytes of old torch layers otherwise."""
    layout = layout or Layout.from_env()
    registry = ImageRegistry(layout)
    client = registry.client
    deleted: list[str] = []
    repos = [f"{PROJECT}/{s}" for s in SERVICES] + [f"{PROJECT}/{b}" for b in BASES]
    for name in repos:
        tags = client.tags(name)
        if not tags:
            continue
        if name.removeprefix(f"{PROJECT}/") in BASES:
            keep_tags = {base_tag(name.removeprefix(f"{PROJECT}/")), BASE_DEFAULT_TAG}
        else:
            created = {t: str(client.config(name, t).get("created", "")) for t in tags}
            keep_tags = {max(tags, key=lambda t: created[t])}
        keep = {client.digest(name, t) for t in keep_tags}
        for tag in tags:
            digest = client.digest(name, tag)
            if tag not in keep_tags and digest is not None and digest not in keep:
                client.delete(name, digest)
                keep.add(digest)  # deleted once; its other tags went with it
                deleted.append(f"{name}:{tag}")
    with Builder(layout, registry).lock():  # no build pushes while the registry stops
        summary = registry.collect_garbage()
    log(f"registry: deleted {len(deleted)} images; {summary}")
    return deleted


def publish_as(image: Built, ref: str, push: bool, layout: Layout | None = None) -> None:
    """Name a built image `ref` too (skaffold's tag): in the registry when `push`
    (a manifest put under the new tag, no layer moves), else in buildah's storage."""
    layout = layout or Layout.from_env()
    registry = ImageRegistry(layout)
    repository, _, tag = ref.rpartition(":")
    if push:
        if repository != image.repository:
            raise InfraError("images", f"{ref}: not in {image.repository}")
        name = repository.removeprefix(f"{registry.host}/")
        try:
            registry.client.retag(name, image.tag, tag)
        except RuntimeError as exc:
            raise InfraError("images", str(exc)) from None
        return
    builder = Builder(layout, registry)
    if not builder.has_local(image.reference):
        builder.buildah("pull", "--quiet", "--tls-verify=false", image.reference)
    builder.buildah("tag", image.reference, ref)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aion.infra.images",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=["build", "refs", "skaffold", "prune"])
    parser.add_argument("services", nargs="*", help=f"default: all ({', '.join(SERVICES)})")
    parser.add_argument(
        "--values",
        type=Path,
        default=VALUES_FILE,
        help="where `build` writes the chart values (default: %(default)s)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object: images and times"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.action == "prune":
        try:
            for ref in prune():
                print(ref)
        except (InfraError, RuntimeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.action == "skaffold" and (len(args.services) != 1 or not os.environ.get("IMAGE")):
        parser.error("skaffold: give one service, with skaffold's IMAGE in the environment")
    try:
        images = build(args.services or SERVICES)
        if args.action == "skaffold":
            publish_as(images[0], os.environ["IMAGE"], os.environ.get("PUSH_IMAGE") == "true")
            return 0
    except InfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.action == "refs":
        for img in images:
            print(img.reference)
        return 0
    if not args.services:  # the values name every image, so only a full build writes them
        write_values(images, args.values)
        log(f"chart values: {args.values}")
    if args.json:
        report = {
            "seconds": round(time.monotonic() - started, 1),
            "images": [asdict(i) for i in images],
        }
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
