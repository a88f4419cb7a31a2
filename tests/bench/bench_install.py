"""``make bench-install``: aion installed with Helm on the local cluster's real nodes.

1. ``make images`` twice in this run: the first builds what changed (cold on a new
   machine), the second finds every image in the registry by its content tag
   (``seconds_images_warm``).
2. ``helm install`` from no release to every Deployment Ready
   (``seconds_install_to_ready``).
3. ``kubectl apply -f deploy/examples/agent-cpu.yaml`` from no Agent to the first
   token streamed through the in-cluster gateway (``seconds_agent_apply_to_first_token``:
   placement, two executor pods pulled and started, the model loaded, registration).
4. Each image's size in the registry (``image_mb``, compressed layers + config).

The release and the Agent are removed at the end. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aion.infra import images
from aion.infra.cluster import Cluster
from aion.infra.paths import Layout
from aion.infra.release import API_KEY, CPU_AGENT_FILE, Release
from aion.infra.tools import helm
from aion.sdk import AsyncClient, errors

AGENT, AGENT_NAMESPACE = "assistant", "default"


async def first_token(target: str, timeout: float = 900) -> float:
    """Streams to the Agent until a token comes; returns when it came (monotonic)."""
    deadline = time.monotonic() + timeout
    async with AsyncClient(target, api_key=API_KEY) as client:
        while True:
            try:
                async for event in client.stream(AGENT, "Say hello.", max_tokens=8, timeout=120):
                    if event.WhichOneof("event") == "token":
                        return time.monotonic()
            except (errors.NotFound, errors.Unavailable, errors.FailedPrecondition):
                pass  # not registered yet, or its executors not reachable yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"no token from {AGENT} within {timeout:.0f} s")
            await asyncio.sleep(0.5)


def main() -> int:
    layout = Layout.from_env()
    cluster = Cluster(layout)
    cluster.up()
    started = time.monotonic()
    first = images.build()
    seconds_images = time.monotonic() - started
    started = time.monotonic()
    built = images.build()
    seconds_images_warm = time.monotonic() - started
    with tempfile.TemporaryDirectory() as tmp:
        values = images.write_values(built, Path(tmp) / "images.yaml")
        release = Release(cluster, helm(), Path(tmp))
        release.kubectl(
            "delete",
            "-f",
            str(CPU_AGENT_FILE),
            "-n",
            AGENT_NAMESPACE,
            "--ignore-not-found",
            "--wait=true",
            check=False,
            timeout=180,
        )
        release.uninstall()
        started = time.monotonic()
        release.install(values)
        seconds_install = time.monotonic() - started
        try:
            target = release.gateway_target()
            started = time.monotonic()
            release.kubectl("apply", "-n", AGENT_NAMESPACE, "-f", str(CPU_AGENT_FILE))
            seconds_first_token = asyncio.run(first_token(target)) - started
        finally:
            release.kubectl(
                "delete",
                "-f",
                str(CPU_AGENT_FILE),
                "-n",
                AGENT_NAMESPACE,
                "--ignore-not-found",
                "--wait=true",
                check=False,
                timeout=180,
            )
            release.uninstall()
    report: dict[str, Any] = {
        "seconds_images": round(seconds_images, 1),
        "images_built_this_run": [b.service for b in first if b.built],
        "seconds_images_warm": round(seconds_images_warm, 1),
        "seconds_install_to_ready": round(seconds_install, 1),
        "seconds_agent_apply_to_first_token": round(seconds_first_token, 1),
        "image_mb": {b.service: b.size_mb for b in built},
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
