"""Which version folder a run writes, claimed exclusively (versions.py describes the claim files).

    new config, no name     the next free vN whose claim this run creates first
    same config, killed     its incomplete version, once the claim's heartbeat is stale
    same config, running    wait for that run; its complete version is the answer
    named version, in use   one line naming the owner (exit 2)

Two runs of one config that list the versions before either has claimed one both claim a
new number; each then looks below its number, and the higher one withdraws its claim and
waits for the lower (`_earlier_run_of`), so one config never writes two versions at once.

While a run holds a claim, a `Heartbeat` thread refreshes it; the run checks
`lost` before it assembles and before it marks the version complete.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid

from vico_pipeline import layout, storage, versions
from vico_pipeline.errors import RunError


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _claim_body(owner: str, fingerprint: str, name: str) -> dict:
    """`owner` names the run for people; `owner_id` lets another run prove it is gone (versions.owner_gone)."""
    return {"fingerprint": fingerprint, "version": name, "owner": owner, "owner_id": versions.owner_identity(),
            "heartbeat": time.time()}


def try_claim(version_root: str, owner: str, fingerprint: str, name: str) -> bool:
    """Create the folder's next claim generation exclusively; True when this run now owns it."""
    generation, claim = versions.read_claim(version_root)
    if claim is not None and not versions.claim_is_stale(claim) and claim.get("owner") != owner:
        return False
    body = storage.json_bytes(_claim_body(owner, fingerprint, name))
    return storage.create_exclusive(storage.join(version_root, versions.claim_name(generation + 1)), body)


def claim_version(config, dataset_root: str, fingerprint: str, owner: str, log, wait_s: float | None = None,
                  replacing: frozenset[str] | set[str] = frozenset()):
    """(version name, resumed) for this run, its claim created; or (name, None) when a run of the same
    config completed that version meanwhile. `replacing`: complete versions of this config that the
    caller chose to write anew (`--retry-failed`); they are not the answer."""
    wait_s = versions.STALE_S * 4 if wait_s is None else wait_s
    waited_since = time.time()
    announced: list[str] = []  # versions of this config another run was writing: we wait for them
    while True:
        found = versions.list_versions(dataset_root)
        if not config.dataset.version:
            fresh = [v["version"] for v in found if _is_ours_complete(v, fingerprint) and v["version"] not in replacing]
            if fresh:  # a run of this config completed a version while we looked
                return fresh[-1], None
        candidates = [config.dataset.version] if config.dataset.version else list(dict.fromkeys(
            announced + [v["version"] for v in found if v["status"] != "complete" and _claim_fp(v["path"]) == fingerprint]))
        for name in candidates:
            root = layout.version_dir(config.output.root, config.dataset.name, name)
            if versions.is_complete(root):
                if versions.read_manifest(root).get("fingerprint") == fingerprint:
                    return name, None
                raise RunError(f"version {name} exists with another config; choose another dataset.version")
            _, claim = versions.read_claim(root)
            if claim is None and name in announced and not config.dataset.version:
                announced.remove(name)  # the run we waited for withdrew: it found an earlier run of this config
                break  # look again
            if claim is None or versions.claim_is_stale(claim) or claim.get("owner") == owner:
                resumed = claim is not None and claim.get("fingerprint") == fingerprint
                if try_claim(root, owner, fingerprint, name):
                    return name, resumed
                break  # another run took it first: look again
            if claim.get("fingerprint") != fingerprint:
                raise RunError(f"version {name} is being written by {claim.get('owner', 'another run')} "
                               "with another config; choose another dataset.version")
            # The same config is being written right now: its result is ours; wait for it.
            if name not in announced:
                log(f"version {name} is being written by {claim.get('owner', 'another run')} with this config; waiting for it")
                announced.append(name)
            if time.time() - waited_since > wait_s:
                raise RunError(f"version {name} is still being written by {claim.get('owner', 'another run')}; "
                               "try again when it has finished")
            time.sleep(min(2.0, versions.HEARTBEAT_S))
            break
        else:
            if config.dataset.version:
                continue
            # A new version: the first free number this run creates the claim of.
            number = max([layout.version_number(v["version"]) or 0 for v in found], default=0) + 1
            while True:
                name = f"v{number}"
                root = layout.version_dir(config.output.root, config.dataset.name, name)
                if not storage.exists(root) or not storage.listdir(root):
                    if storage.create_exclusive(storage.join(root, versions.CLAIM),
                                                storage.json_bytes(_claim_body(owner, fingerprint, name))):
                        earlier = _earlier_run_of(dataset_root, number, fingerprint, owner, replacing)
                        if earlier is None:
                            return name, False
                        _withdraw(root)  # two runs of one config listed before either claimed: the lower number wins
                        if earlier[1]:
                            return earlier[0], None
                        break  # look again: the loop above waits for that run
                number += 1


def _is_ours_complete(version: dict, fingerprint: str) -> bool:
    return version["status"] == "complete" and version["manifest"].get("fingerprint") == fingerprint


def _earlier_run_of(dataset_root: str, number: int, fingerprint: str, owner: str, replacing):
    """(name, complete) of a version numbered below `number` that another run of this config claimed
    live or completed (and the caller is not replacing); None when there is none and our claim stands.

    Without this, two runs of one config that both listed the versions before either had claimed
    one would each claim a new number and write the same data twice."""
    for version in versions.list_versions(dataset_root):
        below = (layout.version_number(version["version"]) or 1 << 30) < number
        if not below or version["version"] in replacing:
            continue
        if _is_ours_complete(version, fingerprint):
            return version["version"], True
        claim = _settled_claim(version["path"])
        if (claim and claim.get("fingerprint") == fingerprint and claim.get("owner") != owner
                and not versions.claim_is_stale(claim)):
            return version["version"], False
    return None


def _settled_claim(version_root: str, tries: int = 20) -> dict | None:
    """The folder's claim, read again for a moment while it is being written (created, not yet filled)."""
    for _ in range(tries):
        _, claim = versions.read_claim(version_root)
        if claim is None or "owner" in claim:
            return claim
        time.sleep(0.05)
    return claim


def _withdraw(version_root: str) -> None:
    """Remove the claim we just created, and the folder if nothing else is in it."""
    storage.remove(storage.join(version_root, versions.CLAIM))
    if storage.is_local(version_root):
        try:
            os.rmdir(storage.local_path(version_root))
        except OSError:
            pass  # someone else's file arrived meanwhile: the folder is theirs now


def _claim_fp(version_root: str) -> str | None:
    _, claim = versions.read_claim(version_root)
    return (claim or {}).get("fingerprint")


class Heartbeat:
    """Refreshes this run's claim every HEARTBEAT_S; `lost` turns true if another run took the folder."""

    def __init__(self, version_root: str, owner: str, fingerprint: str, name: str):
        self.version_root, self.owner, self.fingerprint, self.name = version_root, owner, fingerprint, name
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vico-claim-heartbeat", daemon=True)

    def beat(self, **extra) -> None:
        generation, claim = versions.read_claim(self.version_root)
        if claim is None or claim.get("owner") not in (self.owner, None):
            self.lost = (claim or {}).get("owner", "another run")
            return
        body = {**_claim_body(self.owner, self.fingerprint, self.name), **extra}
        storage.write_json(storage.join(self.version_root, versions.claim_name(generation)), body)

    def _loop(self) -> None:
        while not self._stop.wait(versions.HEARTBEAT_S):
            try:
                self.beat()
            except OSError:
                continue  # a store hiccup: the next beat tries again, well before the claim goes stale
            if self.lost:
                return

    def check(self) -> None:
        """RunError when another run took this version over (this run must not write on)."""
        if self.lost:
            raise RunError(f"version {self.name} was taken over by {self.lost}; this run stops without writing")

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def stop(self, failed: bool = False) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if failed and not self.lost:
            try:
                self.beat(released=True)  # a failed run frees the folder at once for whoever waits
            except OSError:
                pass
