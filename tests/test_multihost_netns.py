"""A real multi-host Ray run: ``asr-kd label --address`` on two "hosts" made of Linux network namespaces.

``tests/test_label.py`` runs a two-node ``ray.cluster_utils.Cluster``: both raylets share one network
stack, bind one address and are started by Ray's test helper in the driver's own process tree. Here
each node is its own network host, as two machines on a private network are:

- namespace A (``10.213.n.1``, the head): ``ray start --head --node-ip-address 10.213.n.1``, and the
  ``asr-kd label --address 10.213.n.1:6379`` driver; namespace B (``10.213.n.2``, a worker host):
  ``ray start --address 10.213.n.1:6379 --node-ip-address 10.213.n.2``. Every process is started with
  ``ip netns exec``; the nodes can reach each other only over the veth pair between the namespaces.
  They share the file system (asr-kd assumes data, teacher and store on a shared filesystem).
- authentication as a user runs it: the nodes with ``RAY_AUTH_MODE=token`` and a token file, the
  driver with ``RAY_AUTH_TOKEN_PATH`` only (token mode is asr-kd's default); the GCS refuses a call
  without the token. Nothing is relaxed for this test.
- 2 logical CPUs per node, 2 actors of 1.5 CPUs each: one actor fits per node, so the pool must spread;
  the label summary's ``by node`` counts (utterances per node IP, reported by the actors) show that
  both hosts labeled.
- the worker host fails: every process of namespace B (raylet, agents, actor, workers) is killed with
  SIGKILL mid-run. (1) The driver keeps going: once the GCS has marked B dead, Ray retries the lost
  tasks on the head and the run completes. (2) The worker host and the driver die together: the store
  is left half-done; after B is back (``ray start`` again) the same command resumes it, labeling only
  the missing shards.
- every store equals the clean two-host run byte for byte: shard files, index, rejects, 1-best text;
  ``meta.json`` too except ``created.time`` (when the store was made).

No ``ray stop``: it kills Ray processes by name machine-wide, other users' clusters included; the
namespaces' processes are killed by namespace instead (``tests/netns.py``). Needs root (network
namespaces): ``pytest -m slow tests/test_multihost_netns.py``, about 5 minutes on 2 cores (7.5 on a loaded machine).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import netns
from factories import ROOT, make_data, make_teacher

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # ~5 min; 8 when the machine is loaded

RAY = str(Path(sys.executable).with_name("ray"))  # the ray CLI of this interpreter's environment
PORT = 6379  # a fresh namespace has no other listener: Ray's default GCS port cannot clash
N_UTTS, SHARD = 96, 4  # 24 shards


def _files(store: Path) -> dict[str, bytes]:
    """Every file of a store but meta.json (compared apart: it records when the store was made)."""
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.name != "meta.json"}


def _meta_without_time(store: Path) -> dict:
    meta = json.loads((store / "meta.json").read_text())
    meta["created"].pop("time")
    return meta


def _done(store: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (store / "shards").glob("shard-*.json"))


def _by_node(stdout: str) -> dict[str, int]:
    """``{node IP: utterances}`` from the label summary's ``; by node: IP N, IP N`` (empty: one node)."""
    m = re.search(r"; by node: (.*)$", stdout, re.M)
    return {ip: int(n) for ip, n in (part.split() for part in m.group(1).split(", "))} if m else {}


class TwoHosts:
    """A Ray head in namespace A, a Ray worker in namespace B, token auth, temp dirs of their own."""

    def __init__(self, net: netns.NetnsPair, work: Path):
        self.net, self.work = net, work
        self.token_file = work / "ray-token"
        self.token_file.write_text(secrets.token_hex(32) + "\n")
        self.token_file.chmod(0o600)
        home = work / "home"  # no ~/.ray/auth_token of the machine's user
        home.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "ASR_KD_TEST_"))}
        self.env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", KALDI_ROOT="/nonexistent-kaldi-root", HOME=str(home),
                        RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_TOKEN_PATH=str(self.token_file),
                        PYTHONPATH=str(ROOT))  # Ray workers on both nodes import this checkout's asr_kd
        self.gcs = f"{net.ip_a}:{PORT}"
        self.worker_starts = 0

    def _ray_start(self, ns: str, args: list[str]) -> None:
        proc = subprocess.run(self.net.cmd(ns, [RAY, "start", *args, "--num-cpus", "2", "--disable-usage-stats"]),
                              env={**self.env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, f"ray start in {ns}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"

    def start_head(self) -> None:
        self._ray_start(self.net.a, ["--head", "--node-ip-address", self.net.ip_a, "--port", str(PORT),
                                     "--temp-dir", str(self.work / "ray_a"), "--include-dashboard", "false"])

    def start_worker(self) -> None:
        """(Re)start the worker host's node: a temp dir of its own each time, as a rebooted host has."""
        self.worker_starts += 1
        self._ray_start(self.net.b, ["--address", self.gcs, "--node-ip-address", self.net.ip_b,
                                     "--temp-dir", str(self.work / f"ray_b{self.worker_starts}")])

    def in_a(self, *argv: str, **popen) -> subprocess.Popen:
        """A command in namespace A with the driver's environment (the token file, no RAY_AUTH_MODE)."""
        return subprocess.Popen(self.net.cmd(self.net.a, list(argv)), cwd=ROOT, env=self.env, text=True, **popen)

    def run_in_a(self, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = self.in_a(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"{argv[:4]} did not finish in {timeout} s: {err[-3000:]}")
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def cmdlines(self, ns: str) -> list[str]:
        out = []
        for pid in self.net.pids(ns):
            try:
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
        return out


@pytest.fixture
def two_hosts():
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    # a short private path: Ray's unix sockets live under --temp-dir (sun_path holds 107 bytes)
    work = Path(tempfile.mkdtemp(prefix="akd-mh-", dir="/tmp"))
    try:
        with netns.NetnsPair() as net:  # on exit: SIGKILL whatever runs in A or B, delete both and the veth
            hosts = TwoHosts(net, work)
            hosts.start_head()
            hosts.start_worker()
            yield hosts
        assert net.a not in netns.namespaces() and net.b not in netns.namespaces()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_label_on_two_hosts_survives_losing_the_worker_host_and_resumes_byte_identical(two_hosts):
    h, net = two_hosts, two_hosts.net
    teacher = make_teacher(h.work / "teacher")
    data = make_data(h.work / "corpus", N_UTTS)  # 96 real wav files (soundfile), 0.4-1.3 s
    vocab = len((teacher / "tokens.txt").read_text().splitlines())
    n_shards = N_UTTS // SHARD

    def label_cmd(out: Path) -> list[str]:
        # float16 with every unit kept is the store format most sensitive to float rounding
        return [sys.executable, "-m", "asr_kd.cli", "label", "--model", str(teacher), "--data", str(data),
                "--out", str(out), "--top-k", str(min(vocab, 64)), "--quantization", "float16",
                "--shard-size", str(SHARD), "--actors", "2", "--actor-cpus", "1.5", "--no-progress",
                "--address", h.gcs]

    # authentication is on: the GCS on A's veth address refuses a call without the token
    refused = h.run_in_a(sys.executable, "-c", "import sys; from asr_kd.label.ray_runtime import gcs_accepts; "
                         f"sys.exit(0 if gcs_accepts({h.gcs!r}, None) else 3)")
    assert refused.returncode == 3, refused.stderr[-2000:]

    # ---- a clean run: both hosts label
    ref = h.work / "store_ref"
    clean = h.run_in_a(*label_cmd(ref))
    assert clean.returncode == 0, clean.stderr[-4000:]
    assert f"labeled {N_UTTS} utterances" in clean.stdout and f"in {n_shards} shards (0 already done)" in clean.stdout
    nodes = _by_node(clean.stdout)
    assert set(nodes) == {net.ip_a, net.ip_b} and all(n > 0 for n in nodes.values()), clean.stdout
    assert sum(nodes.values()) == N_UTTS
    want = _files(ref)

    def kill_worker_host_mid_run(out: Path, driver: subprocess.Popen) -> list[int]:
        deadline = time.time() + 600
        while len(_done(out)) < 3:
            if driver.poll() is not None or time.time() > deadline:
                driver.kill()
                pytest.fail(f"the labeler {'ended' if driver.poll() is not None else 'wrote < 3 shards in 600 s'} "
                            f"before the worker host could be killed: {driver.communicate()[1][-3000:]}")
            time.sleep(0.05)
        on_b = h.cmdlines(net.b)
        assert any("raylet" in c for c in on_b) and any("TeacherActor" in c for c in on_b), on_b
        assert net.kill_all(net.b) > 0  # the whole worker host: raylet, agents, actor, workers
        done = _done(out)
        assert len(done) < n_shards, "the run finished before the worker host was killed; give it more data"
        return done

    # ---- (1) the worker host dies mid-run: the driver finishes on the head alone
    survived = h.work / "store_survived"
    driver = h.in_a(*label_cmd(survived), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kill_worker_host_mid_run(survived, driver)
    out, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, err[-4000:]
    assert f"in {n_shards} shards (0 already done)" in out, out
    assert _files(survived) == want, [n for n in want if _files(survived).get(n) != want[n]]
    assert _meta_without_time(survived) == _meta_without_time(ref)

    # ---- (2) the worker host and the driver die together; B comes back; the same command resumes
    h.start_worker()
    resumed = h.work / "store_resumed"
    driver = h.in_a(*label_cmd(resumed), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kill_worker_host_mid_run(resumed, driver)
    os.kill(driver.pid, signal.SIGKILL)  # `ip netns exec` execs the driver: this pid is the driver itself
    driver.communicate(timeout=60)
    assert driver.returncode == -signal.SIGKILL
    done_at_kill = _done(resumed)
    assert 3 <= len(done_at_kill) < n_shards and not (resumed / "index.tsv").exists()
    kept = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for s in done_at_kill for p in (resumed / "shards").glob(f"shard-{s:05d}.*")}
    h.start_worker()  # the worker host is back: a new node at the same address
    rerun = h.run_in_a(*label_cmd(resumed))
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert f"in {n_shards - len(done_at_kill)} shards ({len(done_at_kill)} already done)" in rerun.stdout, rerun.stdout
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in kept} == kept  # finished shards not rewritten
    assert set(_by_node(rerun.stdout)) == {net.ip_a, net.ip_b}, rerun.stdout  # the new B node labeled too
    got = _files(resumed)
    assert sorted(got) == sorted(want)
    assert [n for n in want if got[n] != want[n]] == [], "the resumed store differs from the clean run"
    assert _meta_without_time(resumed) == _meta_without_time(ref)
