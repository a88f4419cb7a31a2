"""Where the local infrastructure keeps its builds, data, logs and pid files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[5]
VERSIONS_FILE = REPO / "deploy" / "local" / "versions.env"
BUILD_SCRIPT = REPO / "deploy" / "local" / "build.sh"

# World-traversable so that Postgres, which refuses to run as root, can reach
# its data as an unprivileged user when the machine runs everything as root.
DEFAULT_HOME = Path("/var/tmp/aion-infra")


@dataclass(frozen=True)
class Layout:
    """The folders of one machine's local infrastructure.

    home:  AION_INFRA_HOME, default /var/tmp/aion-infra: data, logs, pid files.
    cache: AION_CACHE, default ~/.cache/aion: builds, one folder per version.
    """

    home: Path
    cache: Path

    @classmethod
    def from_env(cls) -> Layout:
        home = Path(os.environ.get("AION_INFRA_HOME") or DEFAULT_HOME)
        cache_dir = Path(os.environ.get("AION_CACHE") or Path.home() / ".cache" / "aion")
        return cls(home=home, cache=cache_dir)

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def pidfile(self, name: str) -> Path:
        return self.home / "run" / f"{name}.pid"

    def data(self, name: str) -> Path:
        return self.home / name

    def ensure(self) -> None:
        for d in (self.home, self.logs, self.home / "run"):
            d.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o755)


@cache
def versions() -> dict[str, str]:
    """The pinned versions in deploy/local/versions.env."""
    out: dict[str, str] = {}
    for raw in VERSIONS_FILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip()
    return out
