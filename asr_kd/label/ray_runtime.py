"""Start or join Ray so that it lets no one in: loopback-only local clusters, token auth, no orphans.

``init_ray(None)`` (``asr-kd label`` without ``--address``, ``asr-kd train --workers N``) starts a
**local** cluster that

- listens on loopback only: GCS, raylet, object manager, core workers and agents bind 127.0.0.1
  (Ray binds its servers to the node IP; we pin the node IP to 127.0.0.1 — Ray's single-machine mode
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` — instead of the address of the first network interface),
  and Gloo (Ray Train DDP on CPU) uses the ``lo`` interface;
- uses Ray's token authentication with a random token made for this run (kept in the environment of
  the processes we start, never written to disk), unless ``RAY_AUTH_MODE=disabled`` or a token is
  already set (``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``);
- dies with the driver: a small reaper process (``asr_kd.label.ray_reaper``) waits for the driver to
  exit — normally, by Ctrl-C or by ``kill -9`` — and kills every process that carries this run's
  ``ASR_KD_RAY_OWNER`` marker in its environment (GCS, raylet, the dashboard and runtime-env agents,
  workers). Ray's own fate sharing stops GCS and raylet but left the agents running.

``init_ray("auto" | "HOST:PORT")`` joins an existing cluster with token authentication by default:
before connecting, the cluster's GCS is asked (one gRPC call) whether it checks tokens, and a missing
token, a rejected token, or a cluster that accepts anyone is an error naming what to set — never a
silent fallback to no authentication. ``RAY_AUTH_MODE=disabled`` is the explicit opt-in to join a
cluster without authentication.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from asr_kd.errors import AsrKdError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
OWNER_ENV = "ASR_KD_RAY_OWNER"  # marker in the environment of every process of a local cluster we start
AUTH_MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's node IP is loopback (its macOS/Windows default)
_TOKEN_HELP = (f"set {TOKEN_ENV} to the cluster's token (or {TOKEN_PATH_ENV} to a file holding it; "
               "`ray get-auth-token` on the head node prints it)")

_reaper: subprocess.Popen | None = None


class RayAuthError(AsrKdError):
    """Joining a Ray cluster would mean a missing, wrong or absent authentication."""


def auth_mode() -> str:
    """``RAY_AUTH_MODE`` as asr-kd uses it: ``token`` (the default) or ``disabled`` (explicit opt-in)."""
    mode = (os.environ.get(AUTH_MODE_ENV) or "token").strip().lower()
    if mode not in ("token", "disabled"):
        raise RayAuthError(f"{AUTH_MODE_ENV}={os.environ[AUTH_MODE_ENV]!r}: use 'token' (the default) or 'disabled'")
    return mode


def init_ray(address: str | None) -> bool:
    """Start a local Ray (``address=None``) or join a cluster, unless Ray is already initialized.

    Returns True when this call initialized Ray (the caller then calls ``ray.shutdown()``).
    """
    import ray

    if ray.is_initialized():
        return False
    # Ray reports usage statistics to usage-stats.ray.io by default; labeling must not phone home
    # (air-gapped clusters would also wait on the timeout). A user can still opt in with =1.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    common = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=False, configure_logging=True)
    if address is None:
        _prepare_local_cluster()
        ray.init(address="local", _node_ip_address=LOOPBACK, **common)
    else:
        gcs = _check_cluster_auth(address)
        if gcs.rsplit(":", 1)[0].strip("[]") in ("127.0.0.1", "localhost", "::1"):
            _pin_to_loopback()  # a cluster on this machine's loopback: join it as a loopback node too
        ray.init(address=gcs, **common)
    return True


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[bool]:
    """``init_ray(address)`` for a ``with`` block, yielding whether it started Ray; when the block ends, normally
    or by any exception (Ctrl-C included), a Ray started here is shut down. A Ray that was already up (a
    caller's, a test session's) is left running; a start that failed halfway is shut down too."""
    import ray

    was_up = ray.is_initialized()
    started = False
    try:
        started = init_ray(address)
        yield started
    finally:
        if started or (not was_up and ray.is_initialized()):
            ray.shutdown()


# --------------------------------------------------------------------------------------- local cluster


def _pin_to_loopback() -> None:
    """Ray derives every bind address from the node IP; in single-machine mode the node IP is
    127.0.0.1 instead of the address of the first network interface (ray.init would otherwise turn an
    explicit 127.0.0.1 into that address). Set for this process and the processes it starts."""
    from ray._private import ray_constants

    os.environ[SINGLE_NODE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # Ray Train DDP (gloo) between local workers
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")  # (NCCL bootstrap on GPUs)


LOCAL_RAY_ENV = {
    # No idle workers started ahead of tasks (by default one per CPU when the driver connects): labeling and
    # training run in actors, which get workers of their own, so the prestarted ones only sat idle, and on
    # 2 cores their threads took ~3 % of a core from the actors (label_throughput's breakdown). Read by the
    # raylet from its environment (ray.init's _system_config does not reach these two).
    "RAY_enable_worker_prestart": "0",
    "RAY_prestart_worker_first_driver": "0",
}
"""Ray settings of the local clusters ``init_ray`` starts (the user's environment wins); a cluster
joined with ``--address`` keeps its own."""


def _prepare_local_cluster() -> None:
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    _pin_to_loopback()
    mode = auth_mode()
    if mode == "token" and not (os.environ.get(TOKEN_ENV) or os.environ.get(TOKEN_PATH_ENV)):
        # a token for this run only: inherited by the processes we start, never written to disk
        os.environ[TOKEN_ENV] = secrets.token_hex(32)
    _set_auth_mode(mode)
    owner = f"{os.getpid()}-{secrets.token_hex(8)}"
    os.environ[OWNER_ENV] = owner
    start_reaper(owner)


def _set_auth_mode(mode: str) -> None:
    """Set RAY_AUTH_MODE and make this process's Ray see it (Ray caches its config and token)."""
    os.environ[AUTH_MODE_ENV] = mode
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):  # pragma: no cover - other Ray versions
        pass


def start_reaper(owner: str) -> subprocess.Popen:
    """Start the process that kills this run's Ray processes once the driver is gone.

    It reads its stdin (a pipe only we hold) until EOF, which comes when this process ends in any way,
    then kills every process whose environment carries ``ASR_KD_RAY_OWNER=<owner>``. It runs in its
    own session, so a Ctrl-C in the terminal reaches the driver, not the reaper.
    """
    global _reaper
    env = {k: v for k, v in os.environ.items() if k != OWNER_ENV}
    _reaper = subprocess.Popen([sys.executable, "-m", "asr_kd.label.ray_reaper", owner], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                               env=env)
    return _reaper


# --------------------------------------------------------------------------------------- joining a cluster


def _gcs_address(address: str) -> str:
    if address.startswith("ray://"):
        raise AsrKdError(f"--address {address}: Ray Client (ray://) is not supported; give the GCS address HOST:PORT or 'auto'")
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address_or_die

        try:
            return canonicalize_bootstrap_address_or_die("auto")
        except ConnectionError as exc:
            raise AsrKdError(f"--address auto: {exc}") from None
    return address


def gcs_accepts(gcs: str, token: str | None, timeout: float = 10.0) -> bool:
    """One GCS call with ``token`` (None: no token): True if served, False if refused as unauthenticated."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    metadata = [("authorization", f"Bearer {token}")] if token is not None else []
    with grpc.insecure_channel(gcs) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), metadata=metadata, timeout=timeout)
            return True
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                return False
            raise AsrKdError(f"the Ray cluster at {gcs} does not answer ({exc.code().name}: {exc.details()}); "
                             "is it running, and is the address the GCS address (HOST:PORT, default port 6379)?") from None


def configured_token() -> tuple[str | None, str]:
    """The token Ray would send, and where it comes from: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip(), TOKEN_ENV
    if os.environ.get(TOKEN_PATH_ENV):
        path = Path(os.environ[TOKEN_PATH_ENV]).expanduser()
        try:
            return path.read_text().strip() or None, f"{TOKEN_PATH_ENV}={path}"
        except OSError as exc:
            raise RayAuthError(f"{TOKEN_PATH_ENV}={path}: cannot read the token file ({exc.strerror})") from None
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file():
        return default.read_text().strip() or None, str(default)
    return None, ""


def _check_cluster_auth(address: str) -> str:
    """Refuse to join unless the cluster's authentication and ours agree (token by default); returns
    the GCS address."""
    mode = auth_mode()
    gcs = _gcs_address(address)
    # a random token no cluster has: served means the cluster checks no token at all
    open_to_anyone = gcs_accepts(gcs, secrets.token_hex(32))
    if mode == "token":
        if open_to_anyone:
            raise RayAuthError(
                f"the Ray cluster at {gcs} runs without authentication: anyone who can reach it can run code on it, "
                f"so asr-kd does not join it. Restart it with token authentication ({AUTH_MODE_ENV}=token ray start ...), "
                f"or set {AUTH_MODE_ENV}=disabled to join it anyway")
        token, source = configured_token()
        if not token:
            raise RayAuthError(f"the Ray cluster at {gcs} requires an authentication token and none is set: {_TOKEN_HELP}")
        if not gcs_accepts(gcs, token):
            raise RayAuthError(f"the Ray cluster at {gcs} rejected the token from {source}: {_TOKEN_HELP}")
    else:
        if not open_to_anyone:
            raise RayAuthError(
                f"the Ray cluster at {gcs} requires token authentication but {AUTH_MODE_ENV}=disabled: unset "
                f"{AUTH_MODE_ENV} (token is the default) and {_TOKEN_HELP}")
        log.warning("joining the Ray cluster at %s without authentication (%s=disabled)", gcs, AUTH_MODE_ENV)
    _set_auth_mode(mode)
    return gcs
