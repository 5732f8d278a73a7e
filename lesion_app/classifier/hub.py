"""Weights from a Hugging Face model repo, pinned to one commit: hf://ORG/NAME@<40-hex sha>.

`resolve_weights(value)` turns LESION_APP_WEIGHTS into a local folder. A plain path is
returned as is. An hf:// URI is fetched through huggingface_hub's own download and cache
functions (`hf_hub_download`: manifest.json first, then every file the manifest names), so
HF_HUB_CACHE and HF_HUB_OFFLINE apply as everywhere else, and a revision already in the
cache costs no network call, online or not. The result is the cache's snapshot folder,
`<HF_HUB_CACHE>/models--ORG--NAME/snapshots/<sha>/`, which the Predictor then loads and
verifies exactly like the bundled weights/ folder.

Only a full commit sha is accepted: a branch or tag moves, and a served model must not
change under a running Space. Every failure is a WeightsError whose message names the
repo, the revision and the fix (the app prints it and exits; no traceback).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .manifest import Manifest, ManifestNotJSON
from .weights import WeightsError, sha256_file

PREFIX = "hf://"
FULL_SHA = re.compile(r"[0-9a-f]{40}")
HEX = re.compile(r"[0-9a-fA-F]+")
EXAMPLE = "hf://ORG/NAME@<40-hex commit sha>"


@dataclass(frozen=True)
class HubWeights:
    repo_id: str
    revision: str

    def __str__(self) -> str:
        return f"{PREFIX}{self.repo_id}@{self.revision}"


def is_hub_uri(value) -> bool:
    return str(value).strip().startswith(PREFIX)


def parse_hub_uri(uri: str) -> HubWeights:
    """hf://ORG/NAME@SHA -> HubWeights; a WeightsError for anything but a model repo pinned to a
    full 40-hex commit sha (a branch, a tag, a short sha, no revision, a path inside the repo)."""
    from huggingface_hub import parse_hf_uri
    from huggingface_hub.errors import HfUriError

    uri = str(uri).strip()
    try:
        parsed = parse_hf_uri(uri)
    except HfUriError as e:
        raise WeightsError(f"LESION_APP_WEIGHTS={uri} is not a Hub address ({e}). "
                           f"Expected {EXAMPLE}.") from None
    if parsed.type != "model":
        raise WeightsError(f"LESION_APP_WEIGHTS={uri} names a {parsed.type} repo; the weights live "
                           f"in a model repo: {EXAMPLE}.")
    rev = parsed.revision
    if parsed.path_in_repo:
        raise WeightsError(f"LESION_APP_WEIGHTS={uri} points inside the repo ('{parsed.path_in_repo}'); "
                           f"give the repo and its revision only: {EXAMPLE}.")
    pin = (f"Pin what you serve: hf://{parsed.id}@<the full 40-hex commit sha> (the one "
           f"`python -m train.release.publish` printed, or the repo's commit history on the Hub).")
    if not rev:
        raise WeightsError(f"LESION_APP_WEIGHTS={uri} has no revision. {pin}")
    if FULL_SHA.fullmatch(rev.lower()):
        return HubWeights(parsed.id, rev.lower())
    if HEX.fullmatch(rev):
        why = (f"'{rev}' is not a full commit sha ({len(rev)} hex digits): a pinned revision is all 40 "
               f"digits of the commit sha (the Hub does not resolve short ones).")
    else:
        why = (f"'{rev}' is a branch or tag name, which can move to another commit: the app refuses "
               f"it so that what it serves cannot change without a deliberate new pin.")
    raise WeightsError(f"LESION_APP_WEIGHTS={uri}: {why} {pin}")


def cache_dir() -> str:
    from huggingface_hub import constants
    return constants.HF_HUB_CACHE


def _repo_cache(ref: HubWeights) -> Path:
    from huggingface_hub.file_download import repo_folder_name
    return Path(cache_dir()) / repo_folder_name(repo_id=ref.repo_id, repo_type="model")


def _fetch(ref: HubWeights, filename: str, offline: bool) -> Path:
    """One file of the pinned revision through huggingface_hub's cache (download when online)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                        LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    where = f"{ref} ({filename})"
    try:
        return Path(hf_hub_download(ref.repo_id, filename, revision=ref.revision, repo_type="model",
                                    local_files_only=offline))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        cached = (_repo_cache(ref) / "snapshots" / ref.revision).is_dir()
        what = (f"{filename} of revision {ref.revision} of {ref.repo_id} is missing from the Hugging Face cache"
                if cached else f"revision {ref.revision} of {ref.repo_id} is not in the Hugging Face cache")
        if offline:
            raise WeightsError(
                f"{ref}: {what} ({cache_dir()}), and HF_HUB_OFFLINE=1 forbids downloading it. Fix: download it "
                f"once with the network on (`hf download {ref.repo_id} --revision {ref.revision}`, or start the "
                f"app with HF_HUB_OFFLINE=0), or set HF_HUB_CACHE to a cache that holds it.") from None
        raise WeightsError(
            f"{ref}: {what} ({cache_dir()}) and the Hub could not be reached to download it. Fix: check the "
            f"network (or HF_ENDPOINT), then start again.") from None
    except GatedRepoError:
        raise WeightsError(f"{where}: {ref.repo_id} is gated; accept its terms on the Hub and log in "
                           f"(`hf auth login`, or set HF_TOKEN).") from None
    except RepositoryNotFoundError:
        raise WeightsError(f"{where}: no model repo {ref.repo_id} is visible. Check the name; for a private "
                           f"repo log in (`hf auth login`, or set HF_TOKEN).") from None
    except RevisionNotFoundError:
        raise WeightsError(f"{where}: {ref.repo_id} has no commit {ref.revision}. Use the sha "
                           f"`python -m train.release.publish` printed.") from None
    except EntryNotFoundError:
        raise WeightsError(f"{where}: revision {ref.revision} of {ref.repo_id} has no {filename}; it was "
                           f"not made by `python -m train.release.publish` (or the manifest names a file it lacks). "
                           f"Publish again and pin the new sha.") from None
    except (HfHubHTTPError, OSError) as e:
        raise WeightsError(f"{where}: download failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
                           f"Start again once the Hub is reachable, or use the cached revision offline.") from None


def fetch_hub_weights(ref: HubWeights) -> Path:
    """The pinned revision's snapshot folder, holding manifest.json (checked as Manifest.load checks
    it) and every file it names, each checked against the manifest's sha256 (the Predictor checks
    them again on load)."""
    from huggingface_hub import constants
    offline = constants.is_offline_mode()
    manifest_path = _fetch(ref, "manifest.json", offline)
    folder = manifest_path.parent
    try:
        manifest = Manifest.from_text(manifest_path.read_text(), manifest_path)
    except (OSError, UnicodeDecodeError, ManifestNotJSON) as e:
        cause = e.cause if isinstance(e, ManifestNotJSON) else e
        raise WeightsError(f"{ref}: its manifest.json ({manifest_path}) is unreadable ({type(cause).__name__}). "
                           f"{_refetch_hint(ref)}") from None
    for entry in manifest.file_entries():
        path = _fetch(ref, entry["file"], offline)
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise WeightsError(
                f"{ref}: the cached {entry['file']} ({path.resolve()}) is corrupted: its sha256 is "
                f"{digest[:12]}…, the manifest expects {entry['sha256'][:12]}…. {_refetch_hint(ref)}")
    return folder


def _refetch_hint(ref: HubWeights) -> str:
    return (f"Fix: delete the cached copy (`hf cache rm model/{ref.repo_id}`, or remove "
            f"{_repo_cache(ref)}) and download it again with the network on "
            f"(`hf download {ref.repo_id} --revision {ref.revision}`).")


def resolve_weights(value) -> Path:
    """LESION_APP_WEIGHTS -> the folder to load: a local path as given, or the cached snapshot
    of hf://ORG/NAME@SHA. Raises WeightsError with the reason and the fix."""
    if is_hub_uri(value):
        return fetch_hub_weights(parse_hub_uri(str(value)))
    return Path(value)
