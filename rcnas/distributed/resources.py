"""Ray start-up and resource decisions taken from what the cluster reports, never assumed."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import ray

from rcnas.infra.errors import ConfigError
from rcnas.infra.files import open_nofollow


def ensure_ray(address: str | None = None, num_cpus: int | None = None, verbose: bool = True) -> None:
    """Connect to ``address`` (or $RAY_ADDRESS, or start a local Ray) unless already connected; unless ``verbose``,
    known-harmless library noise is silenced in every process of the job (``rcnas.infra.quiet``)."""
    if ray.is_initialized():
        return
    runtime_env = None
    if not verbose:
        from rcnas.infra.quiet import quiet

        quiet()
        runtime_env = {"worker_process_setup_hook": "rcnas.infra.quiet.quiet"}
    if os.environ.get("RAY_AUTH_MODE") == "disabled":
        # rcnas never switches it off: the token is what guards Ray's ports, which listen on the routable address
        print("warning: RAY_AUTH_MODE=disabled: anyone who can reach this machine's Ray ports can run code on it",
              file=sys.stderr, flush=True)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        if os.environ.get("RAY_AUTH_MODE") is None and _token_path().is_file():
            # an explicit address does not pick up the token file by itself (only a new local Ray does); a
            # cluster started with cluster.yaml checks it, and a shell from `ray attach` lacks the mode
            _token_mode()
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
    else:
        private_token()
        # "local": always a new instance of our own. Without an address, ray.init first joins whatever cluster
        # $TMPDIR/ray/ray_current_cluster names, a file any local user can write; their workers would then run our
        # tasks and we would unpickle what they return
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True,
                 runtime_env=runtime_env)
    if not verbose:
        _drop_harmless_worker_lines()


def _drop_harmless_worker_lines() -> None:
    """Filter what workers print to this driver through ``rcnas.infra.quiet.harmless_dropped``. Ray offers no
    public hook for it: its log printer is wrapped where it is registered (Ray 2.60's dispatcher); on another Ray
    layout nothing is filtered and nothing breaks."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    from rcnas.infra.quiet import harmless_dropped

    printers = [handler for name, handler in dispatcher.handlers if name == "ray_print_logs"]
    if not printers:
        return
    printer = printers[0]

    def filtered(data: dict) -> None:
        lines = harmless_dropped(list(data.get("lines", [])))
        if lines:
            printer({**data, "lines": lines})

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", filtered)  # same name: ray.shutdown removes it as it would Ray's


def _token_mode() -> None:
    """``RAY_AUTH_MODE=token`` for this process and its children. Ray reads the mode into its native config when it
    is imported, so the variable alone is not enough: its own switch re-reads it (Ray 2.60)."""
    os.environ["RAY_AUTH_MODE"] = "token"
    try:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth
    except ImportError:
        return
    _enable_token_auth()


def _token_path() -> Path:
    """Where Ray reads its token: ``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def private_token() -> None:
    """The token a local Ray is started with, readable by this user only: Ray writes it with the umask (0644 in a
    0755 folder by default), and whoever reads it can run code on the cluster. Created here (0600, folder 0700)
    when missing; an existing one of ours is narrowed to 0600 with one line saying so.

    Raises:
        ConfigError: the token file is a link or belongs to someone else (we cannot vouch for it).
    """
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_MODE") == "disabled":
        return
    import secrets
    import stat

    path = _token_path()
    if path.is_symlink() or (path.exists() and path.stat().st_uid != os.getuid()):
        raise ConfigError(f"{path}: Ray's token file is a link or belongs to another user; replace it with your own "
                          "(ray get-auth-token --generate after moving it away)")
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))  # what Ray itself generates: 256 random bits as hex
    elif stat.S_IMODE(path.stat().st_mode) & 0o077:
        os.chmod(path, 0o600)
        print(f"note: {path} was readable by others (anyone who reads it can run code on your Ray): now 0600",
              file=sys.stderr, flush=True)
    parent = path.parent
    if parent.name == ".ray" and parent.stat().st_uid == os.getuid() and stat.S_IMODE(parent.stat().st_mode) & 0o077:
        os.chmod(parent, 0o700)  # Ray's own folder only: a token kept elsewhere lives in a folder the user chose


def cluster_gpus() -> float:
    """GPUs the cluster has; Ray omits the key entirely when there are none."""
    return float(ray.cluster_resources().get("GPU", 0))


def worker_resources(gpus_per_worker: float = 1.0, cpus_without_gpu: float = 1.0) -> dict[str, float]:
    """Resources for one evaluation worker: a GPU (or fraction) each when the cluster has GPUs, CPUs otherwise.

    Asking for a GPU on a cluster without one would wait forever with no error, so the request is decided here.
    """
    if cluster_gpus() > 0:
        return {"num_gpus": gpus_per_worker, "num_cpus": 1}
    return {"num_gpus": 0, "num_cpus": cpus_without_gpu}


def whole_gpu(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """A worker spec for a long training (a teacher, a final network): ``spec`` with a whole GPU where it asks for a
    fraction, since a training of hours must not share its GPU's memory with evaluations; ``spec`` itself otherwise
    (``None``: no spec)."""
    if not spec or not 0 < float(spec.get("num_gpus", 0) or 0) < 1:
        return spec
    return {**spec, "num_gpus": 1}
