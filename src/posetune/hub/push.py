"""`posetune push`: a run's timm folder uploaded to the Hugging Face Hub (huggingface_hub)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from posetune.errors import UsageError

if TYPE_CHECKING:
    pass

from posetune.hub.folder import MARKER, TIMM_FILES, export_timm


def push(run: str | Path, repo_id: str, private: bool = False, token: str | None = None,
         out: str | Path | None = None, dry_run: bool = False, commit_message: str | None = None) -> dict:
    """Export RUN as a timm folder (``out``, default RUN/timm/) and upload it to the Hub repo ``repo_id``.

    Before anything is exported: the repo id is checked, a token found (``token``, else HF_TOKEN or a stored
    login), and the Hub reached within seconds; otherwise a one-line :class:`UsageError` says what to check.
    ``dry_run`` exports and returns the folder and its files without a token or the network. A repo that already
    holds a model or card posetune did not upload is refused; over an earlier push the upload is a new commit.
    """
    hf = _huggingface_hub()
    try:
        hf.utils.validate_repo_id(repo_id)
    except hf.errors.HFValidationError as exc:
        raise UsageError(f"REPO_ID '{repo_id}' is not a Hugging Face repo id: give NAME or USER/NAME (letters, digits, "
                         f"'-', '_', '.'): {str(exc).splitlines()[0]}") from exc
    if not dry_run:
        token = token or hf.get_token()
        if not token:
            raise UsageError("no Hugging Face token: pass --token, set HF_TOKEN, or log in with `hf auth login` "
                             "(a token with write access); nothing was uploaded")
        _require_hub()
    exported = export_timm(run, out=out, repo_id=repo_id, strict=True)
    folder = Path(exported["path"])
    result = {"repo_id": repo_id, "folder": str(folder), "private": private, "dry_run": dry_run, "uploaded": False,
              "files": [{"path": n, "bytes": (folder / n).stat().st_size} for n in sorted(exported["files"])],
              "parity": exported["parity"]}
    if dry_run:
        return result
    from posetune.version import __version__

    # huggingface_hub's own timeouts are long; a hub that went away after the preflight still fails in seconds.
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    api = hf.HfApi(token=token, library_name="posetune", library_version=__version__)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        _check_remote(api, url.repo_id)
        commit = api.upload_folder(repo_id=url.repo_id, folder_path=str(folder), allow_patterns=exported["files"],
                                   commit_message=commit_message or f"posetune {__version__}: {Path(run).name}")
    except hf.errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise UsageError(f"the Hub refused the token for {repo_id} (HTTP {status}): give a token with write "
                             "access to that namespace (--token or HF_TOKEN); nothing was uploaded") from exc
        raise UsageError(f"the Hub answered {status or 'an error'} for {repo_id}: {str(exc).splitlines()[0][:200]}"
                         ) from exc
    except Exception as exc:  # noqa: BLE001 - the HTTP client's network errors come in many types
        raise UsageError(f"the upload to {_endpoint()} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                         f"check the network and HF_ENDPOINT, then run the same command again") from exc
    return {**result, "uploaded": True, "url": str(url), "commit_url": getattr(commit, "commit_url", None)}


def _check_remote(api, repo_id: str) -> None:
    """Refuse a repo that holds a model or card posetune did not upload: it would be overwritten (the Hub keeps its
    history, but posetune never replaces what it did not create)."""
    present = set(api.list_repo_files(repo_id, repo_type="model")) & set(TIMM_FILES)
    if not present:
        return
    theirs = sorted(present)
    if "config.json" in present:
        try:
            config = json.loads(Path(api.hf_hub_download(repo_id, "config.json", repo_type="model")).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            config = None
        if isinstance(config, dict) and isinstance(config.get(MARKER), dict):
            return  # an earlier push of posetune's: a new commit replaces it
    raise UsageError(f"{repo_id} already holds files posetune did not upload ({', '.join(theirs)}); choose another "
                     "REPO_ID (posetune never overwrites what it did not create); nothing was uploaded")


def _huggingface_hub():
    try:
        import huggingface_hub
        import huggingface_hub.errors
        import huggingface_hub.utils
    except ImportError as exc:
        raise UsageError("push needs huggingface_hub, which is not installed; pip install 'posetune[train]'") from exc
    return huggingface_hub


def _endpoint() -> str:
    from posetune.weights import hub_endpoint

    return hub_endpoint()


def _require_hub() -> None:
    """Fail in seconds, naming what to check, when the Hub cannot be reached (no retries, no long timeouts)."""
    from posetune.weights import hub_offline, hub_reachable

    if hub_offline():
        raise UsageError("HF_HUB_OFFLINE is set, so nothing can be uploaded: unset it to push (`posetune push --dry-run` "
                         "shows what would go up)")
    proxied = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    if not proxied and not hub_reachable():  # through a proxy only the HTTP client can tell
        raise UsageError(f"the Hugging Face Hub at {_endpoint()} is unreachable from this machine: check the network "
                         "(or proxy) and HF_ENDPOINT, then run the same command again; nothing was uploaded "
                         "(`--dry-run` shows what would go up)")
