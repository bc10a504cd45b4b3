"""The loopback Hub, driven by the real huggingface_hub client (no network beyond 127.0.0.1)."""
from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    get_session,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from zoo.testing.hub_server import LoopbackHub, git_blob_oid

# huggingface_hub's own LFS PUT passes a file object as `data=`; httpx2 warns about that, not about us.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")


def _random_bytes(size: int, seed: int) -> bytes:
    out, block = bytearray(), hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def _write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_context_manager_serves_and_stops():
    with LoopbackHub(token="t") as hub:
        port = hub.port
        assert hub.endpoint == f"http://127.0.0.1:{port}"
        sha = hub.add_file("org/m", "a.txt", b"hello")
        assert hub.resolve("org/m") == sha and hub.file_bytes("org/m", "a.txt") == b"hello"
        assert hub.list_files("org/m") == [".gitattributes", "a.txt"]
        assert os.path.isdir(hub.tmp_dir)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_fixture_points_the_client_at_the_hub(loopback_hub, hf_sandbox):
    assert hf_constants.ENDPOINT == loopback_hub.endpoint
    assert os.environ["HF_TOKEN"] == loopback_hub.token and hf_constants.HF_HUB_DISABLE_XET
    assert Path(hf_constants.HF_HUB_CACHE).is_relative_to(hf_sandbox)
    assert HfApi().whoami()["name"] == loopback_hub.username


def test_create_repo_conflict_and_exist_ok(loopback_hub):
    api = HfApi()
    url = api.create_repo("alice/toy")
    assert url.repo_id == "alice/toy" and url.endpoint == loopback_hub.endpoint
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo("alice/toy")
    assert conflict.value.response.status_code == 409
    again = api.create_repo("alice/toy", exist_ok=True)
    assert again.repo_id == "alice/toy"
    assert api.repo_exists("alice/toy") and not api.repo_exists("alice/nope")
    # Without a namespace the repo lands under the token owner's name, as on the Hub.
    assert api.create_repo("solo").repo_id == f"{loopback_hub.username}/solo"
    # Dataset repos use the same routes under /api/datasets and /datasets/.
    assert api.create_repo("alice/toy", repo_type="dataset").repo_type == "dataset"
    api.upload_file(path_or_fileobj=b"rows", path_in_repo="data.csv", repo_id="alice/toy", repo_type="dataset")
    assert Path(hf_hub_download("alice/toy", "data.csv", repo_type="dataset")).read_bytes() == b"rows"
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("alice/toy", "data.csv")  # the model repo of the same name has no such file


def test_upload_folder_regular_and_lfs_files_read_back_bit_identical(loopback_hub, tmp_path):
    loopback_hub.lfs_threshold = 4096  # so "notes/big.txt" goes through LFS by size
    files = {
        "config.json": b'{"dim": 8}\n',
        "model.safetensors": _random_bytes(70_000, 1),  # LFS by pattern
        "notes/big.txt": _random_bytes(5_000, 2),  # LFS by size
        "notes/small.txt": b"tiny\n",
    }
    api = HfApi()
    api.create_repo("alice/weights")
    info = api.upload_folder(repo_id="alice/weights", folder_path=_write_folder(tmp_path / "src", files),
                             commit_message="weights")
    assert info.oid == loopback_hub.resolve("alice/weights")
    assert loopback_hub.is_lfs("alice/weights", "model.safetensors")
    assert loopback_hub.is_lfs("alice/weights", "notes/big.txt")
    assert not loopback_hub.is_lfs("alice/weights", "config.json")
    methods = [(r.method, r.path.split("?")[0]) for r in loopback_hub.requests]
    assert ("POST", "/alice/weights.git/info/lfs/objects/batch") in methods
    assert sum(m == "PUT" for m, _ in methods) == 2  # one basic-transfer PUT per LFS file
    assert loopback_hub.server_errors == []

    for name, data in files.items():
        assert Path(hf_hub_download("alice/weights", name)).read_bytes() == data
    snapshot = Path(snapshot_download("alice/weights"))
    assert snapshot.name == info.oid
    for name, data in files.items():
        assert (snapshot / name).read_bytes() == data

    tree = {f.path: f for f in api.list_repo_tree("alice/weights", recursive=True) if hasattr(f, "size")}
    weights = tree["model.safetensors"]
    assert weights.lfs.sha256 == hashlib.sha256(files["model.safetensors"]).hexdigest()
    assert weights.size == 70_000 and tree["config.json"].lfs is None
    assert tree["config.json"].blob_id == git_blob_oid(files["config.json"])
    assert {p.path for p in api.get_paths_info("alice/weights", ["notes", "config.json", "missing"])} == {
        "notes", "config.json"}
    siblings = {s.rfilename: s for s in api.model_info("alice/weights", files_metadata=True).siblings}
    assert siblings["notes/big.txt"].lfs.size == 5_000 and siblings["notes/small.txt"].lfs is None

    # Re-uploading the same folder is a no-op for the client: preupload reports the remote oids.
    before = loopback_hub.request_count
    api.upload_folder(repo_id="alice/weights", folder_path=tmp_path / "src")
    assert loopback_hub.resolve("alice/weights") == info.oid
    assert not any(r.method == "PUT" for r in loopback_hub.requests[before:])


def test_revisions_tags_branches_and_refs(loopback_hub):
    api = HfApi()
    first = loopback_hub.add_file("alice/rev", "w.bin", b"v1" * 100)
    second = api.upload_file(path_or_fileobj=b"v2" * 100, path_in_repo="w.bin", repo_id="alice/rev").oid
    assert first != second and len(second) == 40
    api.create_tag("alice/rev", tag="v1", revision=first)
    api.create_branch("alice/rev", branch="dev", revision=first)
    on_dev = api.upload_file(path_or_fileobj=b"v3" * 100, path_in_repo="w.bin", repo_id="alice/rev",
                             revision="dev").oid

    def fetch(revision):
        return Path(hf_hub_download("alice/rev", "w.bin", revision=revision)).read_bytes()

    assert fetch(first) == b"v1" * 100
    assert fetch("v1") == b"v1" * 100
    assert fetch("main") == b"v2" * 100
    assert fetch("dev") == b"v3" * 100
    assert Path(snapshot_download("alice/rev", revision="v1")).name == first

    refs = api.list_repo_refs("alice/rev")
    assert {b.name: b.target_commit for b in refs.branches} == {"main": second, "dev": on_dev}
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1", "refs/tags/v1", first)]
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_branch("alice/rev", branch="dev")
    assert conflict.value.response.status_code == 409
    api.create_branch("alice/rev", branch="dev", exist_ok=True)
    assert [c.commit_id for c in api.list_repo_commits("alice/rev", revision="dev")][:2] == [on_dev, first]

    # A pull request commit lives on refs/pr/1 and leaves main alone.
    pr = api.upload_file(path_or_fileobj=b"pr", path_in_repo="pr.txt", repo_id="alice/rev", create_pr=True)
    assert pr.pr_revision == "refs/pr/1" and loopback_hub.resolve("alice/rev") == second
    assert Path(hf_hub_download("alice/rev", "pr.txt", revision="refs/pr/1")).read_bytes() == b"pr"

    # Deleting a file makes a new commit; the old commit still serves it.
    api.create_commit("alice/rev", [CommitOperationDelete("w.bin"), CommitOperationAdd("x.txt", b"x")],
                      commit_message="swap")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("alice/rev", "w.bin", revision="main", force_download=True)
    assert fetch(second) == b"v2" * 100


def test_push_without_or_with_a_wrong_token_is_401(loopback_hub, monkeypatch, tmp_path):
    loopback_hub.add_file("alice/public", "a.txt", b"a")
    monkeypatch.delenv("HF_TOKEN")
    api = HfApi()
    with pytest.raises(HfHubHTTPError) as no_token:
        api.create_repo("alice/new")
    assert no_token.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as no_token_upload:
        api.upload_file(path_or_fileobj=b"b", path_in_repo="b.txt", repo_id="alice/public")
    assert no_token_upload.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as wrong:
        HfApi(token="hf_wrong").upload_file(path_or_fileobj=b"b", path_in_repo="b.txt", repo_id="alice/public")
    assert wrong.value.response.status_code == 401
    assert "Invalid credentials" in str(wrong.value)
    # Reads of a public repo need no token.
    assert Path(hf_hub_download("alice/public", "a.txt")).read_bytes() == b"a"
    assert loopback_hub.list_files("alice/public") == [".gitattributes", "a.txt"]


def test_not_found_errors_map_to_the_client_exceptions(loopback_hub, monkeypatch):
    loopback_hub.add_file("alice/here", "a.txt", b"a")
    loopback_hub.add_file("alice/secret", "s.txt", b"s", private=True)
    loopback_hub.add_file("alice/secret", "t.txt", b"t")
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/missing", "a.txt")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/missing")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("alice/here", "a.txt", revision="nope")
    with pytest.raises(RevisionNotFoundError):
        snapshot_download("alice/here", revision="nope")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("alice/here", "missing.txt")
    assert Path(hf_hub_download("alice/secret", "s.txt")).read_bytes() == b"s"  # HF_TOKEN is set
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/secret")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/secret", "t.txt")  # not cached: the 401 + RepoNotFound surfaces


def test_offline_warm_cache_makes_no_request_and_cold_cache_raises(loopback_hub, hub_offline_factory):
    data = _random_bytes(3_000, 3)
    sha = loopback_hub.add_file("alice/cached", "model.safetensors", data)
    warm = hf_hub_download("alice/cached", "model.safetensors")
    snapshot = snapshot_download("alice/cached")
    with hub_offline_factory():
        assert hf_constants.is_offline_mode()
        before = loopback_hub.request_count
        assert hf_hub_download("alice/cached", "model.safetensors") == warm
        assert hf_hub_download("alice/cached", "model.safetensors", revision=sha) == warm
        assert snapshot_download("alice/cached") == snapshot
        assert Path(warm).read_bytes() == data
        assert loopback_hub.request_count == before
        with pytest.raises(LocalEntryNotFoundError):
            hf_hub_download("alice/cached", "other.txt")
        with pytest.raises(LocalEntryNotFoundError):
            hf_hub_download("alice/never", "model.safetensors")
        with pytest.raises(OfflineModeIsEnabled):
            HfApi().model_info("alice/cached")
        assert loopback_hub.request_count == before
    assert not hf_constants.is_offline_mode()


def test_offline_fixture_alone_has_an_empty_cache(hub_offline):
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download("cheoljun95/sylber", "sylber.ckpt")


def test_range_requests_tree_pages_and_corruption(loopback_hub):
    data = _random_bytes(1_000, 4)
    loopback_hub.add_file("alice/r", "blob.bin", data)
    url = f"{loopback_hub.endpoint}/alice/r/resolve/main/blob.bin"
    part = get_session().get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["Content-Range"] == "bytes 10-19/1000"
    assert get_session().get(url, headers={"Range": "bytes=-5"}).content == data[-5:]
    assert get_session().get(url, headers={"Range": "bytes=5000-"}).status_code == 416
    head = get_session().head(url)
    assert head.headers["X-Linked-Etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert head.headers["X-Linked-Size"] == "1000" and head.headers["X-Repo-Commit"] == loopback_hub.resolve("alice/r")

    for index in range(5):
        loopback_hub.add_file("alice/r", f"d/f{index}.txt", b"%d" % index)
    loopback_hub.tree_page_size = 2
    listed = {e.path for e in HfApi().list_repo_tree("alice/r", recursive=True)}
    assert listed == {".gitattributes", "blob.bin", "d"} | {f"d/f{i}.txt" for i in range(5)}

    # Stored bytes shorter than the committed size: the client's size check catches it.
    loopback_hub.set_file_bytes("alice/r", "blob.bin", data[:500])
    with pytest.raises(OSError, match="Consistency check failed"):
        hf_hub_download("alice/r", "blob.bin")
    loopback_hub.set_file_bytes("alice/r", "blob.bin", b"new", keep_metadata=False)
    assert Path(hf_hub_download("alice/r", "blob.bin")).read_bytes() == b"new"
    assert loopback_hub.server_errors == []
