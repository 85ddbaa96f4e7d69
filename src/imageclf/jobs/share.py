"""Sharing a model: the folder timm and the Hub read (timm's layout plus its card), and
`push` through huggingface_hub's upload_folder."""

from __future__ import annotations

import tempfile
from pathlib import Path

from imageclf.core.errors import ConfigError
from imageclf.core.hubnet import hub_endpoint, hub_reachable


def hub_folder(model: str | Path, out: str | Path, *, name: str | None = None,
               license: str | None = None, datasets: tuple[str, ...] = (),
               repo_id: str | None = None) -> Path:
    """`out`: the model in timm's layout (config.json, model.safetensors), model.json for
    imageclf, and README.md, the card."""
    from imageclf.core.fileio import write_text
    from imageclf.jobs.card import gather, render  # torch and timm: only once there is work
    from imageclf.model.timm_folder import export_timm

    model = Path(model)
    out = export_timm(model, out)
    facts = gather(model, name or (repo_id.split("/")[-1] if repo_id else None), license,
                   datasets)
    write_text(out / "README.md", render(facts, repo_id))
    return out


def push(model: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
         license: str | None = None, datasets: tuple[str, ...] = (),
         message: str = "Upload imageclf model") -> str:
    """Upload a model folder to the Hub model repository `repo_id` (created if missing) as
    `hub_folder` writes it; returns the commit's URL. Without huggingface_hub, or offline,
    it fails at once, in one line, before any work."""
    if not hub_reachable():
        raise ConfigError(f"push: the Hub ({hub_endpoint()}) cannot be reached from this machine; "
                          "`imageclf export --timm -o DIR` writes the folder push would upload")
    try:
        from huggingface_hub import HfApi
    except ImportError as e:
        raise ConfigError("push needs huggingface_hub: pip install 'imageclf[hub]'") from e
    with tempfile.TemporaryDirectory(prefix="imageclf-push-") as tmp:
        folder = hub_folder(model, Path(tmp) / "model", license=license, datasets=datasets,
                            repo_id=repo_id)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                 commit_message=message)
    return str(getattr(info, "commit_url", info))
