"""Where a diffusers model's files are: a local folder, or a hub id in the Hugging Face cache (fetched where reachable).

Only config and text files are fetched when a model is looked up; the weights come when it is loaded
(``fetch_weights``). The environment (HF_HUB_OFFLINE, HF_HUB_CACHE, HF_HOME) is read as set now, not
as huggingface_hub read it at import.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import diffbench

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


def read_json(path: Path) -> dict[str, Any]:
    """A config file's JSON object; ParamError naming the file where it cannot be read or holds no object."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, and bytes that are not UTF-8
        raise diffbench.ParamError(f"cannot read {path}: {one_line(exc)}") from None
    if not isinstance(config, dict):
        kinds = {list: "a list", str: "a string", bool: "true or false", type(None): "null"}
        kind = kinds.get(type(config), "a number")
        raise diffbench.ParamError(f"{path} must hold a JSON object ({{...}}), not {kind}")
    return config


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def resolve(path: str, revision: str) -> Path:
    """The local folder of ``path``: a folder, or a hub id already cached (or fetched where the hub is reachable).

    Only config and text files are fetched here; the weights come when the model is loaded.
    """
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise diffbench.ParamError(f"path '{path}' is a file; give the folder a diffusers pipeline saved")
    if not HUB_ID.match(path):
        raise diffbench.ParamError(f"path '{path}' holds no model: no such folder (nor a hub id owner/name)")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            path,
            revision=revision or None,
            allow_patterns=["*.json", "*.txt"],
            cache_dir=hub_cache(),
            local_files_only=offline_mode(),
        )
    except Exception as exc:
        raise diffbench.ParamError(not_found(path, revision, exc)) from None
    return Path(folder)


def not_found(hub_id: str, revision: str, exc: Exception) -> str:
    """One line: which hub model could not be had, where diffbench looked, and the three ways to mend it."""
    at = f" at revision '{revision}'" if revision else ""
    fixes = (
        f"download it first (hf download {hub_id}{' --revision ' + revision if revision else ''}), "
        "unset HF_HUB_OFFLINE, or give a local folder as path="
    )
    if offline_mode():
        return (
            f"hub model '{hub_id}'{at} is not in the local Hugging Face cache {hub_cache()} and HF_HUB_OFFLINE is set, "
            f"so nothing is downloaded (nor is there a folder '{hub_id}'): {fixes}"
        )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"hub model '{hub_id}'{at} is neither a folder, nor in the local Hugging Face cache {hub_cache()}, "
        f"nor reachable on the hub ({first}): check the id and the network, or give a local folder as path="
    )


def offline_mode() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now (huggingface_hub reads it once, at import)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in ("1", "ON", "YES", "TRUE")


def hub_cache() -> str:
    """The hub cache folder as the environment says now: HF_HUB_CACHE, else HF_HOME/hub, else huggingface_hub's default.

    huggingface_hub reads these once, at import; diffbench reads them when a model is looked up, like HF_HUB_OFFLINE.
    """
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return os.path.expandvars(os.path.expanduser(os.environ[name]))
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expandvars(os.path.expanduser(os.environ["HF_HOME"])), "hub")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "huggingface", "hub")


def from_hub(source: str) -> bool:
    """Whether ``source`` (a path or hub id as given) names a hub model rather than a local folder."""
    return not Path(source).expanduser().is_dir()


def without_weights(root: Path, folders: list[str]) -> list[str]:
    """The ``folders`` of ``root`` that hold no ``*.safetensors`` or ``*.bin`` file."""
    return [f for f in folders if not any(any((root / f).glob(p)) for p in WEIGHT_PATTERNS)]


def fetch_weights(source: str, root: Path, folders: list[str]) -> None:
    """A hub model's weights for ``folders`` (safetensors where there are any); no-op for a local folder.

    They come from the snapshot the configs were read from (its commit, ``root``'s name), so config and
    weights always match.
    """
    if not from_hub(source):
        return
    from huggingface_hub import snapshot_download

    for folder in folders:
        for pattern in WEIGHT_PATTERNS:
            where = f"{folder}/{pattern}" if folder != "." else pattern
            snapshot_download(
                source,
                revision=root.name,
                allow_patterns=[where],
                cache_dir=hub_cache(),
                local_files_only=offline_mode(),
            )
            if any((root / folder).glob(pattern)):
                break


def content_hash(root: Path) -> str:
    """A sha256 over every file's relative path and bytes (a hub snapshot: its commit hash instead)."""
    if root.parent.name == "snapshots":
        return root.name
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        with path.open("rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
