"""Command-line tools built from their Go modules: Helm and kubectl."""

from __future__ import annotations

import subprocess
from pathlib import Path

from aion.infra.component import InfraError
from aion.infra.paths import BUILD_SCRIPT, Layout, versions


def ensure_built(target: str) -> None:
    """Run deploy/local/build.sh for `target` (a no-op when it is cached)."""
    proc = subprocess.run(["bash", str(BUILD_SCRIPT), target], check=False)
    if proc.returncode != 0:
        raise InfraError(target, f"build failed (deploy/local/build.sh {target})")


def helm(layout: Layout | None = None) -> Path:
    """The Helm CLI, built once from helm.sh/helm/v3 at the pinned version."""
    layout = layout or Layout.from_env()
    ensure_built("helm")
    return layout.cache / f"helm-{versions()['HELM_VERSION']}" / "bin" / "helm"


def kubectl(layout: Layout | None = None) -> Path:
    """kubectl, built with the control plane from k8s.io/kubernetes."""
    layout = layout or Layout.from_env()
    ensure_built("kube")
    return layout.cache / f"kubernetes-{versions()['KUBERNETES_VERSION']}" / "bin" / "kubectl"
