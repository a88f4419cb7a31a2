"""Each service imports only what its image installs.

The workspace's virtual environment holds every package of every service, so an
import of aiokafka in a module the operator loads passes every unit test and only
fails in the operator's image, on the cluster. Here each service's entry module is
imported in a fresh interpreter with the modules of aion-core's extras that the
service does not declare made unimportable.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.parent.name for p in (ROOT / "services").glob("*/pyproject.toml"))
# The top-level modules each aion-core extra brings (libs/core/pyproject.toml).
EXTRA_MODULES = {"kafka": ("aiokafka",), "postgres": ("psycopg", "psycopg_pool", "yoyo")}


def absent_modules(service: str) -> list[str]:
    """The extras' modules a service does not install: neither through aion-core's
    extras nor as a dependency of its own."""
    deps = tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    core = next(d for d in deps if d.startswith("aion-core"))
    extras = core.partition("[")[2].rstrip("]").split(",") if "[" in core else []
    own = {d.split("[")[0].split(">")[0].split("=")[0].lower() for d in deps}
    return [
        m
        for extra, modules in EXTRA_MODULES.items()
        if extra not in extras
        for m in modules
        if m.replace("_", "-") not in own and not (m == "yoyo" and "yoyo-migrations" in own)
    ]


def test_the_extras_table_matches_aion_cores_extras() -> None:
    extras = tomllib.loads((ROOT / "libs/core/pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert set(extras) == set(EXTRA_MODULES)


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_starts_without_the_extras_it_does_not_declare(service: str) -> None:
    blocked = absent_modules(service)
    code = f"import sys\nfor m in {blocked!r}: sys.modules[m] = None\nimport aion.{service}.main\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, (
        f"aion.{service}.main imports a module its image lacks (one of {blocked}); "
        f"declare the aion-core extra or import it lazily:\n{done.stderr[-2000:]}"
    )
