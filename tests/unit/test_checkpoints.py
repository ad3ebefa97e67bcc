"""One way to find a checkpoint and name its revision, for every model."""

from __future__ import annotations

from pathlib import Path

from mic2e_services import checkpoints


def test_a_local_folder_is_named_by_its_contents(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"a": 1}')
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    folder, revision = checkpoints.resolve_checkpoint(tmp_path)
    assert folder == tmp_path and revision.startswith("local-") and len(revision) == 18
    assert checkpoints.resolve_checkpoint(tmp_path)[1] == revision  # stable
    (tmp_path / "config.json").write_text('{"a": 2}')
    assert checkpoints.resolve_checkpoint(tmp_path)[1] != revision  # other configs


def test_a_hub_snapshot_is_named_by_its_commit(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "models--facebook--sam3" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    calls = []

    def download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    folder, revision = checkpoints.resolve_checkpoint(
        "facebook/sam3", allow_patterns=["*.json"], ignore_patterns=["*.pt"])
    assert (folder, revision) == (snapshot, commit)
    assert calls == [("facebook/sam3", {"revision": None, "allow_patterns": ["*.json"],
                                        "ignore_patterns": ["*.pt"]})]
    # The snapshot folder itself, given as a local path, keeps the commit too.
    assert checkpoints.resolve_checkpoint(snapshot)[1] == commit


def test_a_model_is_named_by_its_hub_id_never_a_server_path(tmp_path: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--black-forest-labs--FLUX.1-schnell" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    assert checkpoints.public_name(snapshot) == "black-forest-labs/FLUX.1-schnell"
    assert checkpoints.public_name("facebook/sam3") == "facebook/sam3"  # a hub id as it is
    folder = tmp_path / "srv" / "models" / "objectclear"
    folder.mkdir(parents=True)
    assert checkpoints.public_name(folder) == "objectclear"
    assert checkpoints.public_name(f"{folder}/") == "objectclear"


def test_a_pinned_revision_is_what_the_hub_is_asked_for_and_what_results_report(
        tiny_sam3: Path, tmp_path: Path, monkeypatch) -> None:
    import shutil

    import huggingface_hub
    from mic2e_services.segmentation import server as seg_server

    commit = "89abcdef0123456789abcdef0123456789abcdef"
    snapshot = tmp_path / "models--facebook--sam3" / "snapshots" / commit
    shutil.copytree(tiny_sam3, snapshot)
    asked = []

    def download(repo_id, **kwargs):
        asked.append(kwargs["revision"])
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    monkeypatch.setenv("MIC2E_REVISION", commit)  # as the manifests set it
    settings = seg_server.Settings(model="facebook/sam3", device="cpu")
    assert settings.revision == commit
    model = seg_server.build_model(settings)
    model.load()
    assert asked == [commit] and model.revision == commit  # Provenance.revision


def test_a_revision_given_with_a_folder_is_refused_not_ignored(tmp_path: Path) -> None:
    import pytest

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(checkpoints.CheckpointError, match="applies to a hub id"):
        checkpoints.resolve_checkpoint(tmp_path, "0123456789abcdef0123456789abcdef01234567")
    # Its own revision (a snapshot's commit, or the folder's) is no mismatch.
    own = checkpoints.resolve_checkpoint(tmp_path)[1]
    assert checkpoints.resolve_checkpoint(tmp_path, own)[1] == own
