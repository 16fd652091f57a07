"""Is a model engine's model here? Checked in the driver before Ray starts (run.py).

A `transformers` or `vllm` engine loads `model` in its workers: a local folder, or a Hugging
Face hub name that the workers download into the Hugging Face cache. Without the hub, that
download retries for minutes in every worker and ends in a Ray traceback. So the driver checks
first, in this order:

1. a local folder: fine;
2. a path that is no folder (`/models/x`, `./x`, `~/x`): a mistake;
3. a hub name in the local Hugging Face cache (HF_HOME / HF_HUB_CACHE): fine;
4. with HF_HUB_OFFLINE set: a mistake (nothing may be downloaded);
5. else one request to the hub (HF_ENDPOINT): the model must be there and the hub reachable.

A mistake is one line naming the model and how to fetch it. On a cluster (ray.address or a
Ray job) the workers' disks and caches are not the driver's, so nothing is checked there.
"""
from __future__ import annotations

import importlib.util
import os

from vico_pipeline.engines.base import EngineError

MODEL_ENGINES = ("transformers", "vllm")
HUB_TIMEOUT_S = 10.0
# The engine's package and the vico extra that installs it.
ENGINE_PACKAGES = {"transformers": ("transformers", "transformers"), "vllm": ("vllm", "vllm")}


def fetch_hint(name: str) -> str:
    return f"fetch it with: hf download {name} (older huggingface_hub: huggingface-cli download {name})"


def looks_like_path(name: str) -> bool:
    """A folder's path, not a hub name (`org/name` has one slash)."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def check_model(section, role: str, on_cluster: bool = False) -> None:
    """Raise EngineError (one line) when `section`'s engine cannot have its model; see the module doc."""
    if section.engine not in MODEL_ENGINES or not section.model or on_cluster:
        return
    package, extra = ENGINE_PACKAGES[section.engine]
    if importlib.util.find_spec(package) is None:
        raise EngineError(f"{role}.engine {section.engine} needs the {extra} extra ({package} not installed); "
                          f"install it from the vico checkout with: pip install -e '.[{extra}]'")
    name = section.model
    if os.path.isdir(os.path.expanduser(name)):
        return
    if looks_like_path(name):
        raise EngineError(f"{role}.model: no model folder at {name}")
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    where = f"{name} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE})"
    if constants.HF_HUB_OFFLINE:
        raise EngineError(f"{role}.model: {where} and HF_HUB_OFFLINE is set; {fetch_hint(name)}")
    problem = hub_problem(name)
    if problem:
        raise EngineError(f"{role}.model: {where} and {problem}; {fetch_hint(name)} "
                          f"where the hub is reachable, or set {role}.model to a local folder")


def hub_problem(name: str) -> str | None:
    """Why the workers could not download `name` from the hub; None when they can (one request)."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        huggingface_hub.model_info(name, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return "it is gated on the hub (accept its terms there and set HF_TOKEN)"
    except RepositoryNotFoundError:
        return f"the hub ({constants.ENDPOINT}) has no model named {name} (or it is private: set HF_TOKEN)"
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 404:
            return f"the hub ({constants.ENDPOINT}) has no model named {name}"
        return f"the hub ({constants.ENDPOINT}) answered {status or 'an error'}"
    except Exception as exc:  # no network, DNS, refused, timed out: whatever the HTTP library raises
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        return f"the hub ({constants.ENDPOINT}) cannot be reached ({reason})"
    return None
