"""`vico submit`: the same run as a Ray job on a running cluster.

What travels with the job (its runtime environment):
- the code: `vico_pipeline/` and `stages/` as py_modules, so the cluster runs
  the code that was submitted, even over an older `vico` in its image;
- the resolved config (the file with every --set applied, relative local paths
  made absolute) as `vico-job.yaml` in the job's working dir, run with
  `vico run vico-job.yaml`; the job server sets RAY_ADDRESS for that process,
  so `vico run` joins the cluster (vico_pipeline.runtime);
- the S3 endpoint variables, never credentials: a runtime env is shown on the
  dashboard, so keys come from the cluster's own environment (a Kubernetes
  Secret in infra/raycluster.yaml, or an instance role).

`--wait` follows the job's logs and exits with its result.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import re
import shlex
import sys
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from vico_pipeline.config import ConfigError, to_plain
from vico_pipeline.errors import RunError
from vico_pipeline.redact import redact

JOB_CONFIG = "vico-job.yaml"
# Local paths in a config: relative ones mean "from where I typed the command".
RUN_PATH_KEYS = ("sources.manifest", "output.root", "download.cookies_file")
PATH_KEYS = (*RUN_PATH_KEYS, "train.data", "train.output", "eval.checkpoint", "eval.data", "eval.output")
# Shipped to the job: where the object store is, not who may use it.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "FSSPEC_S3_ENDPOINT_URL", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "AWS_PROFILE")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def package_root() -> Path:
    """The folder holding the `vico_pipeline` and `stages` packages (the repo, or site-packages)."""
    return Path(__file__).resolve().parent.parent


def job_address(address: str | None) -> str:
    if not address:
        raise ConfigError("no Ray cluster to submit to: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    if "://" not in address:
        address = "http://" + address
    if urlsplit(address).scheme not in ("http", "https"):
        raise ConfigError(f"--address {address}: expected the dashboard / job server URL, http://HEAD:8265")
    return address.rstrip("/")


def is_loopback(address: str) -> bool:
    """This machine only: a loopback IP (127.0.0.0/8, ::1) parsed as an address, or the name
    `localhost`. Any other name counts as remote, whatever it starts with (127.evil.example)."""
    host = (urlsplit(address).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_paths(plain: dict, cwd: str | None = None) -> list[str]:
    """Make relative local paths in `plain` absolute (in place); returns the keys that hold local paths."""
    cwd = cwd or os.getcwd()
    local = []
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = plain.get(section, {}).get(name)
        if not isinstance(value, str) or not value or "://" in value and not value.startswith("file://"):
            continue
        path = value[len("file://"):] if value.startswith("file://") else value
        plain[section][name] = os.path.abspath(os.path.join(cwd, os.path.expanduser(path)))
        local.append(key)
    return local


def job_config(config) -> tuple[dict, list[str]]:
    """The config the job runs: --set applied, paths absolute, Ray left to the job's cluster.

    It is shown on the dashboard and kept with the job, so it holds no secret: a config with a
    credential in it (a signed manifest URL, a key in engine_args) is refused, naming the keys."""
    plain = to_plain(config)
    local = resolve_paths(plain)
    plain["ray"]["address"] = None  # the job joins the cluster it runs on (RAY_ADDRESS)
    plain["ray"]["progress"] = False  # a job's log is not a terminal
    secrets = _secret_keys(plain, redact(plain))
    if secrets:
        raise RunError(f"vico submit uploads no secrets, and {', '.join(secrets)} hold credentials; give the job "
                       "its secrets through the cluster's environment (*_env keys, an instance role, a Secret)")
    return plain, local


def _secret_keys(plain, redacted, prefix: str = "") -> list[str]:
    """Dotted keys whose value redaction changed."""
    if isinstance(plain, dict):
        return [k for key in plain for k in _secret_keys(plain[key], redacted[key], f"{prefix}{key}.")]
    if isinstance(plain, list):
        return [k for i, v in enumerate(plain) for k in _secret_keys(v, redacted[i], f"{prefix}{i}.")]
    return [prefix.rstrip(".")] if plain != redacted else []


def check_transport(address: str, headers: dict, insecure: bool) -> None:
    """A token goes over plain http only to this machine, or with --insecure."""
    if headers and urlsplit(address).scheme == "http" and not is_loopback(address) and not insecure:
        raise RunError(f"refusing to send the Ray token over plain http to {address}: use https://, an SSH "
                       "tunnel to localhost, or pass --insecure on a network you trust")


def auth_headers(env=None) -> dict:
    """Ray's token auth: the token Ray's own CLI would send (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)."""
    env = os.environ if env is None else env
    if env.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = env.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(env.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        try:
            token = path.read_text().strip()
        except OSError:
            token = ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def job_python(address: str) -> str:
    """The job's Python: this one on a cluster on this machine, the image's `python` elsewhere."""
    return os.environ.get("VICO_JOB_PYTHON") or (sys.executable if is_loopback(address) else "python")


def submission_id(dataset: str) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"vico-{dataset}-{stamp}-{uuid.uuid4().hex[:6]}")


def _client(address: str):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address, headers=auth_headers())
    except AuthenticationError as exc:
        raise RunError(f"the Ray job server at {address} refused our token: {_first_line(exc)} "
                       "(set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to the cluster's token)") from None
    except (ConnectionError, OSError, RuntimeError) as exc:
        raise RunError(f"cannot reach the Ray job server at {address}: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def submit(config_path, config, overrides, address, wait, retry_failed: bool = False, insecure: bool = False) -> int:
    """Submit `vico run` for `config` as a Ray job; returns the exit code for the CLI."""
    address = job_address(address)
    check_transport(address, auth_headers(), insecure)
    plain, local_keys = job_config(config)
    run_keys = [k for k in local_keys if k in RUN_PATH_KEYS]
    if run_keys and not is_loopback(address):
        print(f"vico: note: {', '.join(run_keys)} are local paths; every node of the cluster must see them "
              "(use s3://... on a multi-node cluster)", file=sys.stderr)
    from ray.exceptions import AuthenticationError

    client = _client(address)
    root = package_root()
    with tempfile.TemporaryDirectory(prefix="vico-submit-") as staging:
        Path(staging, JOB_CONFIG).write_text(
            f"# resolved from {config_path} with {len(overrides)} --set override(s) by `vico submit`\n"
            + yaml.safe_dump(plain, sort_keys=False))
        runtime_env = {
            "working_dir": staging,
            "py_modules": [str(root / "vico_pipeline"), str(root / "stages")],
            "excludes": ["__pycache__", "*.pyc"],
            "env_vars": {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)},
        }
        entrypoint = f"{shlex.quote(job_python(address))} -m vico_pipeline.cli run {JOB_CONFIG}" \
            + (" --retry-failed" if retry_failed else "")
        try:
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                       submission_id=submission_id(config.dataset.name),
                                       metadata={"vico_config": str(config_path), "dataset": config.dataset.name},
                                       entrypoint_num_cpus=0)  # the driver only coordinates; CPUs go to stages
        except (RuntimeError, ConnectionError, AuthenticationError) as exc:  # refused: a bad token, runtime env...
            raise RunError(f"the Ray job server at {address} refused the job: {_first_line(exc)}") from None
    print(f"vico: submitted job {job_id} to {address}; dashboard: {address}/#/jobs/{job_id}", file=sys.stderr)
    print(job_id, flush=True)
    if not wait:
        print(f"vico: follow it with: ray job logs --follow --address {address} {job_id}", file=sys.stderr)
        return 0
    return follow(client, job_id, address)


def follow(client, job_id: str, address: str) -> int:
    """Stream the job's logs to stdout until it ends; 0 when it succeeded."""
    async def tail():
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        try:
            asyncio.run(tail())
        except RuntimeError as exc:  # the log stream closed early: the job's status still says how it ended
            print(f"vico: log stream of {job_id} ended: {exc}", file=sys.stderr)
        info = client.get_job_info(job_id)
        while str(getattr(info.status, "value", info.status)) not in TERMINAL:
            import time
            time.sleep(1.0)
            info = client.get_job_info(job_id)
    except KeyboardInterrupt:
        print(f"vico: stopped following {job_id}; it goes on (ray job stop --address {address} {job_id} ends it)",
              file=sys.stderr)
        return 130
    status = str(getattr(info.status, "value", info.status))
    if status == "SUCCEEDED":
        print(f"vico: job {job_id} succeeded", file=sys.stderr)
        return 0
    message = (info.message or "").strip().splitlines()
    print(f"vico: job {job_id} {status.lower()}" + (f": {message[-1]}" if message else ""), file=sys.stderr)
    code = getattr(info, "driver_exit_code", None)
    return code if isinstance(code, int) and code > 0 else 1
