"""Ray stages let no one in and leave nothing behind (real local Ray clusters, no mocks).

- A local ``asr-kd label`` and ``asr-kd train --workers 2`` (no ``--address``, ``RAY_AUTH_MODE`` unset):
  every socket that any process of the run listens on is bound to a loopback address, and the GCS
  refuses a call without the run's token.
- ``kill -9`` of a local ``asr-kd label`` driver mid-run: within a few seconds no process the run
  started (GCS, raylet, dashboard and runtime-env agents, actors, workers) is left.
- ``--address`` to a cluster whose authentication does not match ours is an error that names what to
  set, never a silent fallback to no authentication; the right token joins.

Processes are found two ways that do not rely on each other: the driver's descendants, polled while it
runs, and (after the kill) any process whose environment carries the run's owner marker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
import psutil  # noqa: E402

from asr_kd.label.ray_runtime import OWNER_ENV, gcs_accepts
from factories import ROOT, make_data, make_teacher, tiny_train_config

pytestmark = pytest.mark.timeout(400)

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def safe_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a user who configured nothing: no RAY_AUTH_MODE, no token, an empty HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "ASR_KD_TEST_"))}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", KALDI_ROOT="/nonexistent-kaldi-root", ASR_KD_LOG="WARNING",
               HOME=str(home))
    env.update(extra)
    return env


class Watch:
    """Polls the descendants of a process: who they are and which sockets they listen on."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.seen: dict[tuple[int, float], str] = {}  # (pid, create_time) -> name
        self.listening: dict[tuple[str, int], str] = {}  # (ip, port) -> process name
        self.gcs_port: int | None = None
        self.gcs_refuses_no_token: bool | None = None

    def poll(self) -> None:
        try:
            procs = [psutil.Process(self.proc.pid)] + psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return
        for p in procs:
            try:
                self.seen[(p.pid, p.create_time())] = p.name()
                for c in p.net_connections(kind="inet"):
                    if c.status == psutil.CONN_LISTEN or (c.type == 2 and c.laddr):  # TCP listening, UDP bound
                        self.listening[(c.laddr.ip, c.laddr.port)] = p.name()
                        if p.name() == "gcs_server" and c.status == psutil.CONN_LISTEN and self.gcs_port is None:
                            self.gcs_port = c.laddr.port
            except psutil.Error:
                continue
        if self.gcs_port is not None and self.gcs_refuses_no_token is None:
            self.gcs_refuses_no_token = not gcs_accepts(f"127.0.0.1:{self.gcs_port}", None, timeout=20)

    def until(self, done, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None and not done():
            self.poll()
            time.sleep(0.1)

    def alive(self) -> list[str]:
        """Processes seen during the run that still exist (zombies count as gone)."""
        out = []
        for (pid, created), name in self.seen.items():
            if pid == self.proc.pid:
                continue
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(f"{pid} {name}")
            except psutil.Error:
                pass
        return out

    def assert_loopback_only(self, expect: tuple[str, ...]) -> None:
        names = set(self.listening.values())
        assert all(any(e in n for n in names) for e in expect), f"expected listeners of {expect}, saw {self.listening}"
        exposed = {a: n for a, n in self.listening.items() if a[0] not in LOOPBACK}
        assert exposed == {}, f"listening beyond loopback: {exposed}"
        assert self.gcs_refuses_no_token is True, "the local cluster's GCS served a call without the run's token"


def marked(driver_pid: int) -> list[str]:
    """Live processes whose environment carries this driver's owner marker."""
    needle = f"{OWNER_ENV}={driver_pid}-".encode()
    out = []
    for p in psutil.process_iter(["pid", "name"]):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            with open(f"/proc/{p.pid}/environ", "rb") as f:
                if any(v.startswith(needle) for v in f.read().split(b"\0")):
                    out.append(f"{p.pid} {p.info['name']}")
        except (OSError, psutil.Error):
            continue
    return out


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "asr_kd.cli", *args]


def test_local_label_listens_on_loopback_only_and_dies_with_its_driver(tmp_path):
    teacher = make_teacher(tmp_path / "teacher")
    data = make_data(tmp_path / "corpus", 80)
    out = tmp_path / "store"
    proc = subprocess.Popen(cli("label", "--model", str(teacher), "--data", str(data), "--out", str(out), "--top-k", "4",
                                "--shard-size", "4", "--no-progress"),
                            cwd=ROOT, env=safe_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watch = Watch(proc)
    # run until the teacher actors have finished a few shards: GCS, raylet, agents, actors and readers exist
    watch.until(lambda: len(list((out / "shards").glob("shard-*.json"))) >= 3, timeout=300)
    watch.poll()
    assert proc.poll() is None, "the labeler finished before it could be killed: " + proc.communicate()[1][-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    killed_at = time.time()

    watch.assert_loopback_only(expect=("gcs_server", "raylet", "ray::"))

    left: list[str] = []
    while time.time() - killed_at < 15:  # once in a full-suite run on 2 busy cores the agents took > 8 s
        left = watch.alive() + marked(proc.pid)
        if not left:
            break
        time.sleep(0.25)
    # Ray's dashboard and runtime-env agents outlived the driver in 6 of 14 runs until the reaper remembered
    # the run's process tree while the driver runs (fate sharing stops the raylet first, and its agents are
    # re-parented); in none of 19 runs since, 10 of them back to back on cores busy with training
    assert left == [], f"processes of the killed run still alive {time.time() - killed_at:.1f} s after kill -9: {left}"
    assert len(watch.seen) >= 6, watch.seen  # gcs, raylet, agents, workers were there to be reaped


def test_local_train_with_two_workers_listens_on_loopback_only(tmp_path):
    data = make_data(tmp_path / "lab", 12, with_text=True)
    conf = tiny_train_config(tmp_path / "conf.yaml", [str(data)], max_steps=4, checkpoint_every=2)
    proc = subprocess.Popen(cli("train", "--config", str(conf), "--out", str(tmp_path / "model"), "--workers", "2",
                                "--no-progress"),
                            cwd=ROOT, env=safe_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watch = Watch(proc)
    watch.until(lambda: False, timeout=300)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert (tmp_path / "model" / "model.pt").exists()
    # the DDP workers ran (Ray Train worker processes were seen) and nothing listened beyond loopback
    assert sum("RayTrainWo" in n for n in watch.seen.values()) >= 2  # (process names may be cut at 15 chars), sorted(set(watch.seen.values()))
    watch.assert_loopback_only(expect=("gcs_server", "raylet", "RayTrainWo"))
    time.sleep(3)
    assert watch.alive() + marked(proc.pid) == []


HEAD = r"""
import sys, time
from asr_kd.label.ray_runtime import init_ray
import ray
init_ray(None)
print(ray._private.worker._global_node.gcs_address, flush=True)
sys.stdin.read()
"""


def start_head(tmp_path: Path, **env: str) -> tuple[subprocess.Popen, str]:
    """A local cluster (loopback) in its own process; it ends when its stdin is closed."""
    head = subprocess.Popen([sys.executable, "-c", HEAD], cwd=ROOT, env=safe_env(tmp_path, **env), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = head.stdout.readline().strip()
    assert line.startswith("127.0.0.1:"), head.stderr.read()[-3000:] if head.poll() is not None else line
    return head, line


def stop_head(head: subprocess.Popen) -> None:
    head.stdin.close()
    head.wait(timeout=60)


def test_address_with_mismatched_authentication_is_a_clear_error(tmp_path):
    teacher = make_teacher(tmp_path / "teacher")
    data = make_data(tmp_path / "corpus", 6)
    token = "0123456789abcdef" * 4

    def label(address: str, out: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(cli("label", "--model", str(teacher), "--data", str(data), "--out", str(tmp_path / out),
                                  "--top-k", "2", "--no-progress", "--address", address),
                              cwd=ROOT, env=safe_env(tmp_path, **env), capture_output=True, text=True, timeout=300)

    head, address = start_head(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    try:
        no_token = label(address, "s1")
        assert no_token.returncode == 2, no_token.stderr[-2000:]
        assert "requires an authentication token" in no_token.stderr and "RAY_AUTH_TOKEN" in no_token.stderr
        wrong = label(address, "s2", RAY_AUTH_TOKEN="f" * 64)
        assert wrong.returncode == 2 and "rejected the token" in wrong.stderr and "RAY_AUTH_TOKEN" in wrong.stderr
        opted_out = label(address, "s3", RAY_AUTH_MODE="disabled")
        assert opted_out.returncode == 2 and "requires token authentication" in opted_out.stderr
        assert "RAY_AUTH_MODE" in opted_out.stderr
        # a refused connection leaves no store behind (a half-made store dir would look like a started run)
        assert not any((tmp_path / out).exists() for out in ("s1", "s2", "s3"))
        token_file = tmp_path / "token"
        token_file.write_text(token + "\n")
        right = label(address, "s4", RAY_AUTH_TOKEN_PATH=str(token_file))
        assert right.returncode == 0, right.stderr[-3000:]
        assert "labeled 6 utterances" in right.stdout
    finally:
        stop_head(head)

    head, address = start_head(tmp_path, RAY_AUTH_MODE="disabled")
    try:
        open_cluster = label(address, "s5", RAY_AUTH_TOKEN=token)  # default mode: token
        assert open_cluster.returncode == 2, open_cluster.stderr[-2000:]
        assert "runs without authentication" in open_cluster.stderr and "RAY_AUTH_MODE=disabled" in open_cluster.stderr
        assert not (tmp_path / "s5").exists()
    finally:
        stop_head(head)


def test_reaper_kills_children_that_lack_the_owner_marker(tmp_path):
    """Ray's raylet starts its agents without our environment marker: the reaper must find them as
    descendants of the marked processes (read before anything is killed), and leave other processes be."""
    import signal
    import subprocess
    import time

    from asr_kd.label.ray_reaper import OWNER_ENV, reap

    owner = f"test-{os.getpid()}"
    # marked parent -> unmarked child (env -i, like an agent started with a clean environment)
    parent = subprocess.Popen(["bash", "-c", "env -i sleep 60 & echo $! > child.pid; wait"], cwd=tmp_path,
                              env={**os.environ, OWNER_ENV: owner})
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        for _ in range(100):
            if (tmp_path / "child.pid").exists() and (tmp_path / "child.pid").read_text().strip():
                break
            time.sleep(0.05)
        child = int((tmp_path / "child.pid").read_text())
        for _ in range(100):  # $! is known before the forked shell has exec'd 'env -i sleep' (it still has our env)
            if open(f"/proc/{child}/cmdline", "rb").read().startswith(b"sleep"):
                break
            time.sleep(0.05)
        assert OWNER_ENV.encode() not in open(f"/proc/{child}/environ", "rb").read()
        assert reap(owner, timeout=5.0) >= 2
        parent.wait(timeout=5)
        time.sleep(0.2)
        state = open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0] if os.path.exists(f"/proc/{child}") else "gone"
        assert state in ("gone", "Z"), f"unmarked child {child} survived the reaper ({state})"
        assert bystander.poll() is None, "the reaper killed a process that is not the run's"
    finally:
        for proc in (parent, bystander):
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
