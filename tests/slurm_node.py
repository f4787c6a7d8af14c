"""A real single-node Slurm for the tests: munged, slurmctld and slurmd from Debian's ``munge`` and
``slurm-wlm``, each run in the foreground as a child of the test process, with a generated
``slurm.conf``, key and state in a temporary directory. Nothing is installed or changed outside it;
clients find it through ``SLURM_CONF``.

Two partitions: ``debug`` (the node, up) and ``full`` (down: jobs submitted there stay pending,
as in a partition with no free node). The node claims 8 CPUs whatever the machine has, so a few
one-core worker jobs run at once on a 2-core machine.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo")
PACKAGES = "slurm-wlm munge"


def missing_programs() -> list[str]:
    """The Slurm and munge programs this machine lacks (``[]``: a node can be started)."""
    return [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class SlurmNode:
    """A running single-node Slurm under ``root``; :meth:`stop` ends it (by process id)."""

    root: Path
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment a Slurm client needs to talk to this node."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self, timeout_s: float = 60.0) -> SlurmNode:
        for sub in ("munge", "state", "spool", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o600)
        socket_path = self.root / "munge" / "munge.socket"
        self.conf.write_text(self._config(socket_path))
        munge = self.root / "munge"
        self._spawn("munged", ["munged", "--foreground", "--force", f"--socket={socket_path}", f"--key-file={key}",
                               f"--log-file={munge / 'munged.log'}", f"--pid-file={munge / 'munged.pid'}",
                               f"--seed-file={munge / 'munged.seed'}"])  # fmt: skip
        self._wait(lambda: socket_path.exists(), timeout_s, "munged to create its socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", self.node])
        self._wait(self._idle, timeout_s, f"node {self.node} to be idle in sinfo")
        return self

    def _config(self, munge_socket: Path) -> str:
        r = self.root
        return f"""\
ClusterName=agnsurvey-test
SlurmctldHost={socket.gethostname()}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}
SlurmctldPidFile={r / "slurmctld.pid"}
SlurmdPidFile={r / "slurmd.pid"}
SlurmctldLogFile={r / "logs" / "slurmctld.log"}
SlurmdLogFile={r / "logs" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
ReturnToService=2
KillWait=3
NodeName={self.node} NodeAddr=127.0.0.1 CPUs=8 RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
PartitionName=full Nodes={self.node} MaxTime=INFINITE State=DOWN
"""

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.root / "logs" / f"{name}.out", "w")  # noqa: SIM115 - the daemon holds it until stop()
        self.processes[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                                start_new_session=True)  # fmt: skip
        out.close()

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            dead = [name for name, proc in self.processes.items() if proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                self.stop()
                logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                                 for p in sorted((self.root / "logs").glob("*")))  # fmt: skip
                raise RuntimeError(f"Slurm did not start (waiting for {what}; exited: {dead or 'none'})\n{logs}")
            time.sleep(0.2)

    def _idle(self) -> bool:
        done = subprocess.run(["sinfo", "-h", "-n", self.node, "-p", "debug", "-o", "%T"], env=self.env,
                              capture_output=True, text=True)  # fmt: skip
        return done.returncode == 0 and done.stdout.strip() in ("idle", "mixed", "allocated")

    def jobs(self) -> dict[str, tuple[str, str, str]]:
        """Every job the controller knows: id → (partition, state, job name)."""
        done = subprocess.run(["squeue", "-h", "-o", "%i|%P|%T|%j"], env=self.env, capture_output=True, text=True,
                              check=True)  # fmt: skip
        return {i: (p, s, n) for i, p, s, n in (line.split("|") for line in done.stdout.split())}

    def cancel_all(self, timeout_s: float = 30.0) -> None:
        """Cancel every job and wait until the controller has none."""
        subprocess.run(["scancel", "--user", str(os.getuid())], env=self.env, capture_output=True)
        deadline = time.monotonic() + timeout_s
        while self.jobs() and time.monotonic() < deadline:
            time.sleep(0.5)

    def stop(self) -> None:
        """Cancel the jobs, then end the daemons by process id (slurmd, slurmctld, munged)."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            with contextlib.suppress(subprocess.CalledProcessError):
                self.cancel_all()
        for name in reversed(DAEMONS):
            proc = self.processes.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
