"""A real single-node SLURM cluster for the tests: munge, MariaDB, slurmdbd, slurmctld and slurmd, as root.

Debian's `slurm-wlm`, `slurmdbd`, `munge` and `mariadb-server` are installed by the Makefile's install step (as
root); the tests install nothing. Everything a cluster writes lives in one folder (configs, state, spool, the
accounting database, logs); the daemons listen on free local ports, so a cluster the machine already runs is not
touched. `sacct` works (submitit reads job states from it), as on a lab's cluster.

Run by hand: `python -m tests.slurm.cluster /tmp/slurm` starts one and prints the `SLURM_CONF` to export.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sacctmgr", "sbatch")
CLUSTER = "unbackdoor-test"
PARTITION = "debug"


class ClusterError(RuntimeError):
    """The cluster could not start: the message says which part and where its log is."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _find(name: str) -> str:
    for where in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if where and Path(where).is_file():
            return where
    raise ClusterError(f"{name} is not installed: run `make install` as root (it installs slurm-wlm, slurmdbd, "
                       "munge and mariadb-server from Debian)")  # fmt: skip


def _wait(what: str, ok, log: Path | None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-2000:] if log and log.is_file() else "(no log)"
    raise ClusterError(f"{what} did not come up within {timeout:.0f} s; its log ({log}):\n{tail}")


def _quiet(cmd: list[str], env: dict[str, str] | None = None) -> bool:
    return subprocess.run(cmd, capture_output=True, env=env, check=False).returncode == 0


class Cluster:
    """`with Cluster(folder) as c:` a running cluster; `c.env` holds the `SLURM_CONF` every SLURM command needs."""

    def __init__(self, folder: Path, cpus: int | None = None):
        self.folder = Path(folder)
        self.cpus = cpus or os.cpu_count() or 1
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ)

    def __enter__(self) -> Cluster:
        if os.geteuid() != 0:
            raise ClusterError("the test cluster runs its daemons as root (slurmd must); run the tests as root")
        for name in DAEMONS:
            _find(name)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, cmd: list[str], log: Path) -> subprocess.Popen:
        out = log.open("ab")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def _start(self) -> None:
        f = self.folder
        for sub in ("state", "spool", "log", "db"):
            (f / sub).mkdir(parents=True, exist_ok=True)
        self._munge()
        db_port, dbd_port, ctld_port, d_port = (_free_port() for _ in range(4))
        # the accounting database: a private MariaDB without grant tables, on 127.0.0.1 only
        install = subprocess.run(
            [_find("mariadb-install-db"), "--no-defaults", f"--datadir={f / 'db'}", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if install.returncode:
            raise ClusterError(f"mariadb-install-db failed: {install.stderr.strip()[-500:]}")
        self._spawn([_find("mariadbd"), "--no-defaults", f"--datadir={f / 'db'}", f"--socket={f / 'db.sock'}",
                     f"--port={db_port}", "--bind-address=127.0.0.1", "--user=root", "--skip-grant-tables",
                     f"--pid-file={f / 'db.pid'}"], f / "log" / "mariadb.log")  # fmt: skip
        _wait("MariaDB", lambda: _port_open(db_port), f / "log" / "mariadb.log")
        host = socket.gethostname().split(".")[0]
        (f / "slurmdbd.conf").write_text(
            f"DbdHost=localhost\nDbdPort={dbd_port}\nSlurmUser=root\nStorageType=accounting_storage/mysql\n"
            f"StorageHost=127.0.0.1\nStoragePort={db_port}\nStorageUser=root\nStorageLoc=slurm_acct_db\n"
            f"PidFile={f / 'slurmdbd.pid'}\nLogFile={f / 'log' / 'slurmdbd.log'}\n"
        )
        (f / "slurmdbd.conf").chmod(0o600)
        (f / "slurm.conf").write_text(
            f"ClusterName={CLUSTER}\nSlurmctldHost={host}(127.0.0.1)\nSlurmctldPort={ctld_port}\nSlurmdPort={d_port}\n"
            "SlurmUser=root\nAuthType=auth/munge\nProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\nJobAcctGatherType=jobacct_gather/none\n"
            f"AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\n"
            f"AccountingStoragePort={dbd_port}\nJobCompType=jobcomp/none\nMpiDefault=none\nReturnToService=2\n"
            f"StateSaveLocation={f / 'state'}\nSlurmdSpoolDir={f / 'spool'}\n"
            f"SlurmctldPidFile={f / 'slurmctld.pid'}\nSlurmdPidFile={f / 'slurmd.pid'}\n"
            f"SlurmctldLogFile={f / 'log' / 'slurmctld.log'}\nSlurmdLogFile={f / 'log' / 'slurmd.log'}\n"
            "SchedulerType=sched/backfill\nSchedulerParameters=sched_interval=1\nMinJobAge=600\n"
            "SlurmctldTimeout=30\nSlurmdTimeout=30\nInactiveLimit=0\nKillWait=5\n"
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN\n"
            f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP\n"
        )
        self.env["SLURM_CONF"] = str(f / "slurm.conf")
        self._spawn([_find("slurmdbd"), "-D"], f / "log" / "slurmdbd.out")
        _wait("slurmdbd", lambda: _port_open(dbd_port), f / "log" / "slurmdbd.log")
        sacctmgr = [_find("sacctmgr"), "-i"]
        _wait("the accounting cluster entry",
              lambda: _quiet([*sacctmgr, "add", "cluster", CLUSTER], self.env) or self._registered(),
              f / "log" / "slurmdbd.log", 30)  # fmt: skip
        self._spawn([_find("slurmctld"), "-D", "-i"], f / "log" / "slurmctld.out")
        _wait("slurmctld", lambda: _quiet(["sinfo", "-h"], self.env), f / "log" / "slurmctld.log")
        self._spawn([_find("slurmd"), "-D", "-N", host], f / "log" / "slurmd.out")
        _wait("slurmd (node idle)", self._idle, f / "log" / "slurmd.log")

    def _registered(self) -> bool:
        out = subprocess.run(["sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"], capture_output=True,
                             text=True, env=self.env, check=False)  # fmt: skip
        return CLUSTER in out.stdout.split()

    def _idle(self) -> bool:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=self.env, check=False)
        return out.stdout.strip() in ("idle", "mix", "alloc")

    def _munge(self) -> None:
        if _quiet(["sh", "-c", "munge -n | unmunge"]):
            return  # a munged already runs (the machine's own)
        run = Path("/run/munge")
        run.mkdir(parents=True, exist_ok=True)
        shutil.chown(run, "munge", "munge")
        log = self.folder / "log" / "munged.log"
        start = subprocess.run(["runuser", "-u", "munge", "--", _find("munged")], capture_output=True, text=True,
                               check=False)  # fmt: skip
        if start.returncode:
            raise ClusterError(f"munged did not start: {start.stderr.strip()[-500:]}")
        _wait("munged", lambda: _quiet(["sh", "-c", "munge -n | unmunge"]), log, 20)

    def stop(self) -> None:
        """Stop every daemon this cluster started (munged, shared with the machine, is left running)."""
        if self.procs and "SLURM_CONF" in self.env:
            _quiet(["scancel", "--full", "-u", "root"], self.env)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops the daemons as Ctrl-C does
    cluster = Cluster(Path(sys.argv[1])).__enter__()
    print(f"export SLURM_CONF={cluster.env['SLURM_CONF']}  # Ctrl-C or kill stops the cluster", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        cluster.stop()
