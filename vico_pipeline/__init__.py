"""vico: long-video instruction data (VICO) on Ray, and the Video-XL model that learns from it.

The package's modules sit in layers (docs/design.md "Layers", checked by lint-imports): each may
import only from its own layer or those below it; `errors` and `text` import nothing of the project.
"""
import os as _os

__version__ = "0.1.0"

# An embedded local Ray binds to loopback only if this is set when `ray` is first imported (Ray reads
# it at import, and without it gcs_server, raylet and the workers listen on every interface). Set
# here, before any module of the package can import ray. Inside a Ray job (RAY_ADDRESS set by the
# job server) we join a cluster and change nothing; a config's `ray.address` undoes it in
# `runtime.init_ray` before joining.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
if not _os.environ.get("RAY_ADDRESS") and LOOPBACK_ENV not in _os.environ:
    _os.environ[LOOPBACK_ENV] = "0"
    _os.environ["VICO_SET_RAY_LOOPBACK"] = "1"  # so runtime.init_ray knows it may undo it for a cluster
