"""deploy/container/Containerfile builds and runs: with podman (rootful, chroot isolation,
so no nested namespaces are needed to build), on a Debian base made from Debian packages
alone by deploy/container/base.sh (no container registry), the image runs `nrm demo` as its
unprivileged user with a read-only root file system, no capabilities and no network.

The base image is kept in the test's podman storage (NRM_TEST_PODMAN_ROOT, default
~/.cache/nrm-test-podman) and made only when missing (about 1.5 minutes with debootstrap);
the image itself is built every time (about half a minute)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .support import unavailable

ROOT = Path(__file__).resolve().parent.parent
CONTAINER = ROOT / "deploy" / "container"
BASE = "localhost/nrm-base:bookworm"
IMAGE = "localhost/nrm-exchange:test"
STORAGE = Path(os.environ.get("NRM_TEST_PODMAN_ROOT", Path.home() / ".cache" / "nrm-test-podman"))


def podman_command() -> list[str]:
    """podman with the test's own storage and, where present, runc: crun refuses this
    kind of machine's hybrid cgroup hierarchy."""
    podman = shutil.which("podman")
    if podman is None:
        unavailable("podman is not installed (Debian: apt-get install podman runc debootstrap)")
    if os.geteuid() != 0:
        unavailable("the image test runs rootful podman: it needs root")
    command = [
        podman,
        "--root", str(STORAGE / "root"),
        "--runroot", str(STORAGE / "run"),
        "--storage-driver", "overlay",
    ]  # fmt: skip
    runc = shutil.which("runc")
    return [*command, "--runtime", runc] if runc else command


def run(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    assert done.returncode == 0, f"{argv}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done


@pytest.mark.timeout(900)
def test_the_image_builds_from_debian_packages_and_runs_the_demo(tmp_path: Path) -> None:
    """Base from debootstrap, the wheels built here, one image with `nrm` and nats-server;
    `nrm demo` passes inside it, locked down as the compose file and manifests run it."""
    podman = podman_command()
    if subprocess.run([*podman, "image", "exists", BASE], check=False).returncode != 0:
        if shutil.which("debootstrap") is None:
            unavailable("debootstrap is not installed (Debian: apt-get install debootstrap)")
        run(str(CONTAINER / "base.sh"), BASE, env={**os.environ, "PODMAN": " ".join(podman)})

    context = tmp_path / "context"
    context.mkdir()
    shutil.copy(CONTAINER / "Containerfile", context)
    dist = context / "dist"
    run(sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT))
    [wheel] = dist.glob("nrm_exchange-*.whl")
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(dist), str(wheel))

    run(
        *podman, "build", "--isolation", "chroot", "--build-arg", f"BASE={BASE}",
        "-f", str(context / "Containerfile"), "-t", IMAGE, str(context),
    )  # fmt: skip
    try:
        locked = [
            *podman, "run", "--rm", "--network", "none", "--read-only",
            "--tmpfs", "/tmp",  # noqa: S108 (a tmpfs inside the container)
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            # below this machine's limits (no CAP_SYS_RESOURCE to raise them to podman's)
            "--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:4096",
        ]  # fmt: skip
        assert run(*locked, "--entrypoint", "id", IMAGE, "-u").stdout.strip() == "10001"
        version = run(*locked, "--entrypoint", "/opt/nrm/bin/nats-server", IMAGE, "--version")
        assert version.stdout.startswith("nats-server: v")
        assert "ledger" in run(*locked, IMAGE, "--help").stdout
        demo = run(*locked, IMAGE, "demo", timeout=300)
        assert "signature verified; every agent proved its events are included" in demo.stdout
    finally:
        subprocess.run([*podman, "rmi", "--force", IMAGE], capture_output=True, check=False)
