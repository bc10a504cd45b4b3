"""A loopback HTTP server that speaks enough of the Hugging Face Hub protocol for the real client.

Tests point ``huggingface_hub`` at it (see ``zoo.testing.fixtures``) and then push and pull through the
ordinary client code paths: repo creation, preupload, NDJSON commits, the LFS batch API with basic
transfers, ``/resolve`` downloads (HEAD + GET, ranges), tree/paths-info listings, refs, branches and tags.

Stdlib only: a ``ThreadingHTTPServer`` on ``127.0.0.1`` with a random free port, in a daemon thread.
Repos live in memory as commits; each commit maps paths to content-addressed blobs.

The server never hands out Xet tokens or ``X-Xet-*`` headers. huggingface_hub 2.x decides to upload
through Xet on the client side alone (``hf_xet`` importable and ``HF_HUB_DISABLE_XET`` unset), so the
client must run with Xet disabled; the fixtures do that, and the Xet token routes answer 501 saying so.

Protocol facts used here come from reading ``huggingface_hub`` 2.4.0 (hf_api.py, _commit_api.py, lfs.py,
file_download.py, utils/_http.py; huggingface/huggingface_hub:src/huggingface_hub/).
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as _dt
import fnmatch
import hashlib
import hmac
import json
import re
import secrets
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = ["LoopbackHub", "LoggedRequest", "DEFAULT_LFS_PATTERNS"]

# Suffixes the real Hub's default .gitattributes routes through LFS (a short subset is enough here).
DEFAULT_LFS_PATTERNS = (
    "*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle", "*.npy", "*.npz",
    "*.onnx", "*.h5", "*.msgpack", "*.gguf", "*.tar", "*.tar.gz", "*.zip", "*.model", "*.arrow", "*.parquet",
)
DEFAULT_LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub sends files of 10 MB and more through LFS

_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_API_SUBROUTES = {
    "revision", "tree", "paths-info", "preupload", "commit", "commits", "refs", "branch", "tag", "settings",
    "xet-write-token", "xet-read-token",
}
_SHA_RE = re.compile(r"[0-9a-f]{40}")
_TRUE = {"1", "true", "True", "yes"}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_oid(data: bytes) -> str:
    """The git object id of ``data`` stored as a blob (what the Hub reports as a regular file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file (spec v1) for content of this sha256 and size."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class Blob:
    """File content plus the metadata the Hub reports for it.

    ``sha256``/``git_oid``/``size`` describe the committed content; ``data`` is what downloads serve.
    They differ only after ``LoopbackHub.set_file_bytes(..., keep_metadata=True)`` (simulated corruption).
    """

    data: bytes
    sha256: str
    git_oid: str
    size: int
    lfs: bool

    @classmethod
    def of(cls, data: bytes, *, lfs: bool) -> "Blob":
        """A blob of ``data`` with its sha256, size and the git oid the Hub reports (of the pointer for LFS files)."""
        sha = hashlib.sha256(data).hexdigest()
        oid = git_blob_oid(lfs_pointer(sha, len(data))) if lfs else git_blob_oid(data)
        return cls(data=bytes(data), sha256=sha, git_oid=oid, size=len(data), lfs=lfs)

    @property
    def etag(self) -> str:
        """The ETag a download reports: the sha256 for LFS files, the git blob oid otherwise."""
        return self.sha256 if self.lfs else self.git_oid

    @property
    def pointer_size(self) -> int:
        """Size in bytes of the LFS pointer file that stands for this blob in git."""
        return len(lfs_pointer(self.sha256, self.size))


@dataclass
class Commit:
    """One commit of a repo: its oid, parent, the files it holds (path -> Blob) and its message."""
    oid: str
    parent: str | None
    files: dict[str, Blob]
    title: str
    message: str
    date: str
    author: str


@dataclass
class Repo:
    """A repo held in memory: commits by oid, branches, tags, pull-request refs and uploaded LFS objects."""
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pull_requests: dict[int, str] = field(default_factory=dict)  # number -> commit sha of refs/pr/N
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # sha256 -> content uploaded via LFS

    def head(self, branch: str = "main") -> Commit:
        """The commit ``branch`` points at (``KeyError`` for an unknown branch)."""
        return self.commits[self.branches[branch]]


@dataclass(frozen=True)
class LoggedRequest:
    """One request the hub answered: method, raw path (query included) and status code."""
    method: str
    path: str  # raw request target, query included
    status: int
    authenticated: bool


class HubError(Exception):
    """An error answer: HTTP status plus the ``X-Error-Code``/``X-Error-Message`` headers the client reads."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}


def _not_found_repo(repo_id: str) -> HubError:
    return HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")


def _new_commit_oid() -> str:
    return hashlib.sha1(uuid.uuid4().bytes + secrets.token_bytes(8)).hexdigest()


class LoopbackHub:
    """In-memory Hub on ``http://127.0.0.1:<random port>``.

    >>> with LoopbackHub(token="hf_zoo_test") as hub:
    ...     hub.add_file("alice/toy", "config.json", b"{}")
    ...     hub.endpoint  # 'http://127.0.0.1:PORT'

    Writes need ``Authorization: Bearer <token>``; reads of public repos need no token; private repos need
    it for reads too (an unauthenticated read answers 401 + ``RepoNotFound`` like the real Hub). Any request
    carrying a wrong token is refused with 401 "Invalid credentials in Authorization header".
    """

    def __init__(self, token: str = "hf_zoo_test", *, username: str = "zoo-user", tmp_dir: str | None = None,
                 lfs_threshold: int = DEFAULT_LFS_THRESHOLD, lfs_patterns: Iterable[str] = DEFAULT_LFS_PATTERNS,
                 tree_page_size: int = 1000, host: str = "127.0.0.1"):
        self.token = token
        self.username = username
        self.lfs_threshold = lfs_threshold
        self.lfs_patterns = tuple(lfs_patterns)
        self.tree_page_size = tree_page_size
        self.host = host
        self._own_tmp_dir = tmp_dir is None
        self.tmp_dir = tmp_dir
        self._repos: dict[tuple[str, str], Repo] = {}
        self._lock = threading.RLock()
        self._log: list[LoggedRequest] = []
        self.server_errors: list[str] = []  # unexpected exceptions (answered with 500); tests may assert empty
        self._secret = secrets.token_bytes(16)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "LoopbackHub":
        """Start serving on a free loopback port in a daemon thread (idempotent); returns ``self``."""
        if self._server is not None:
            return self
        if self.tmp_dir is None:
            self.tmp_dir = tempfile.mkdtemp(prefix="zoo-loopback-hub-")
        server = ThreadingHTTPServer((self.host, 0), _Handler)
        server.daemon_threads = True
        server.hub = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"loopback-hub-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the server and delete its scratch folder."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = self._thread = None
        if self._own_tmp_dir and self.tmp_dir:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def __enter__(self) -> "LoopbackHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The TCP port the server listens on (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("LoopbackHub is not started; call start() or use it as a context manager.")
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``: what ``HF_ENDPOINT`` should be."""
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ request log
    @property
    def requests(self) -> list[LoggedRequest]:
        """A copy of the request log, oldest first."""
        with self._lock:
            return list(self._log)

    @property
    def request_count(self) -> int:
        """How many requests the hub has answered since the last :meth:`reset_requests`."""
        with self._lock:
            return len(self._log)

    def reset_requests(self) -> None:
        """Clear the request log."""
        with self._lock:
            self._log.clear()

    def _record(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._log.append(entry)

    # ------------------------------------------------------------------ direct store access (tests)
    def create_repo(self, repo_id: str, *, repo_type: str = "model", private: bool = False,
                    exist_ok: bool = True) -> Repo:
        """Create a repo with its initial commit (a ``.gitattributes`` listing the LFS patterns)."""
        with self._lock:
            key = (repo_type, repo_id)
            if key in self._repos:
                if not exist_ok:
                    raise ValueError(f"{repo_type} repo {repo_id} already exists")
                return self._repos[key]
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now())
            attributes = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in self.lfs_patterns)
            oid = _new_commit_oid()
            repo.commits[oid] = Commit(oid, None, {".gitattributes": Blob.of(attributes.encode(), lfs=False)},
                                       "initial commit", "", _now(), self.username)
            repo.branches["main"] = oid
            self._repos[key] = repo
            return repo

    def delete_repo(self, repo_id: str, *, repo_type: str = "model") -> None:
        """Remove a repo and all its commits (``KeyError`` when it does not exist)."""
        with self._lock:
            self._repos.pop((repo_type, repo_id), None)

    def repo(self, repo_id: str, *, repo_type: str = "model") -> Repo:
        """The in-memory :class:`Repo` (``KeyError`` when it does not exist)."""
        with self._lock:
            try:
                return self._repos[(repo_type, repo_id)]
            except KeyError:
                raise KeyError(f"no {repo_type} repo {repo_id!r} on the loopback hub") from None

    def add_file(self, repo_id: str, path_in_repo: str, data: bytes, *, revision: str = "main",
                 repo_type: str = "model", private: bool = False, commit_message: str | None = None) -> str:
        """Commit ``data`` at ``path_in_repo`` on branch ``revision`` (repo and branch created if missing).

        Returns the new commit sha. Upload mode (LFS or regular) follows the same rule as preupload.
        """
        with self._lock:
            repo = self.create_repo(repo_id, repo_type=repo_type, private=private)
            if revision not in repo.branches:
                if _SHA_RE.fullmatch(revision) or revision in repo.tags:
                    raise ValueError(f"add_file needs a branch name, got {revision!r}")
                repo.branches[revision] = repo.branches["main"]
            blob = Blob.of(data, lfs=self._is_lfs(repo, repo.branches[revision], path_in_repo, len(data)))
            commit = self._commit(repo, revision, {path_in_repo: blob}, (),
                                  commit_message or f"Upload {path_in_repo}")
            return commit.oid

    def set_file_bytes(self, repo_id: str, path_in_repo: str, data: bytes, *, revision: str = "main",
                       repo_type: str = "model", keep_metadata: bool = True) -> None:
        """Replace what the server stores for a file *without* a new commit.

        ``keep_metadata=True`` (default) simulates corruption: downloads serve ``data`` while ETag, size
        headers and tree listings still describe the committed content. ``keep_metadata=False`` silently
        rewrites the file (new ETag/size) under the same commit sha.
        """
        with self._lock:
            repo = self.repo(repo_id, repo_type=repo_type)
            commit = repo.commits[self._resolve(repo, revision)]
            old = commit.files.get(path_in_repo)
            if old is None:
                raise KeyError(f"{repo_id}@{revision} has no file {path_in_repo!r}")
            new = dataclasses.replace(old, data=bytes(data)) if keep_metadata else Blob.of(data, lfs=old.lfs)
            commit.files = {**commit.files, path_in_repo: new}

    def file_bytes(self, repo_id: str, path_in_repo: str, *, revision: str = "main",
                   repo_type: str = "model") -> bytes:
        """The bytes a download of ``path_in_repo`` at ``revision`` serves."""
        with self._lock:
            repo = self.repo(repo_id, repo_type=repo_type)
            return repo.commits[self._resolve(repo, revision)].files[path_in_repo].data

    def list_files(self, repo_id: str, *, revision: str = "main", repo_type: str = "model") -> list[str]:
        """Sorted paths of the files at ``revision``."""
        with self._lock:
            repo = self.repo(repo_id, repo_type=repo_type)
            return sorted(repo.commits[self._resolve(repo, revision)].files)

    def resolve(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> str:
        """Commit sha a branch, tag or sha (prefix) points to."""
        with self._lock:
            return self._resolve(self.repo(repo_id, repo_type=repo_type), revision)

    def is_lfs(self, repo_id: str, path_in_repo: str, *, revision: str = "main", repo_type: str = "model") -> bool:
        """Whether ``path_in_repo`` at ``revision`` was committed through LFS."""
        with self._lock:
            repo = self.repo(repo_id, repo_type=repo_type)
            return repo.commits[self._resolve(repo, revision)].files[path_in_repo].lfs

    # ------------------------------------------------------------------ internals
    def _resolve(self, repo: Repo, revision: str) -> str:
        if revision.startswith("refs/heads/"):
            revision = revision[len("refs/heads/"):]
        elif revision.startswith("refs/tags/"):
            revision = revision[len("refs/tags/"):]
        if revision in repo.branches:
            return repo.branches[revision]
        if revision in repo.tags:
            return repo.tags[revision]
        match = re.fullmatch(r"refs/pr/(\d+)", revision)
        if match and int(match[1]) in repo.pull_requests:
            return repo.pull_requests[int(match[1])]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            found = [oid for oid in repo.commits if oid.startswith(revision)]
            if len(found) == 1:
                return found[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _is_lfs(self, repo: Repo, commit_oid: str, path: str, size: int) -> bool:
        if size == 0:
            return False
        if size >= self.lfs_threshold:
            return True
        attributes = repo.commits[commit_oid].files.get(".gitattributes")
        patterns = self.lfs_patterns
        if attributes is not None:
            patterns = tuple(line.split()[0] for line in attributes.data.decode(errors="replace").splitlines()
                             if "filter=lfs" in line and line.strip() and not line.startswith("#"))
        name = path.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(path, p) for p in patterns)

    def _commit(self, repo: Repo, branch: str, additions: dict[str, Blob], deletions: Iterable[str],
                title: str, message: str = "", *, pr_number: int | None = None) -> Commit:
        parent_oid = repo.pull_requests[pr_number] if pr_number is not None else repo.branches[branch]
        files = dict(repo.commits[parent_oid].files)
        for path in deletions:
            files.pop(path, None)
        files.update(additions)
        oid = _new_commit_oid()
        commit = Commit(oid, parent_oid, files, title, message, _now(), self.username)
        repo.commits[oid] = commit
        if pr_number is not None:
            repo.pull_requests[pr_number] = oid
        else:
            repo.branches[branch] = oid
        return commit

    def _sign(self, repo_type: str, repo_id: str, oid: str) -> str:
        return hmac.new(self._secret, f"{repo_type}/{repo_id}/{oid}".encode(), hashlib.sha256).hexdigest()

    def _repo_url(self, repo: Repo) -> str:
        return f"{self.endpoint}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"


# ====================================================================== HTTP handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client's pooled httpx connections are reused
    server_version = "zoo-loopback-hub/1"

    # quiet: no per-request stderr lines
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass

    @property
    def hub(self) -> LoopbackHub:
        return self.server.hub  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ------------------------------------------------------------------ plumbing
    def _dispatch(self, method: str) -> None:
        self._status = 500
        self._authenticated = False
        self._body_cache: bytes | None = None
        try:
            try:
                self._route(method)
            except HubError as err:
                self._send_error(err)
            except ConnectionError:  # the client went away mid-answer
                self.close_connection = True
            except Exception as err:  # a bug in the fake must surface, not hang the client
                self.hub.server_errors.append(f"{method} {self.path}: {type(err).__name__}: {err}")
                self._send_error(HubError(500, f"loopback hub internal error: {type(err).__name__}: {err}"))
        finally:
            self.hub._record(LoggedRequest(method, self.path, self._status, self._authenticated))

    def _read_body(self) -> bytes:
        if self._body_cache is not None:
            return self._body_cache
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            body = b"".join(chunks)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._body_cache = body
        return body

    def _json_body(self) -> Any:
        body = self._read_body()
        try:
            return json.loads(body or b"{}")
        except ValueError:
            raise HubError(400, "Request body is not valid JSON") from None

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json") -> None:
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        if not any(k.lower() == "content-length" for k in (headers or {})):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _send_json(self, payload: Any, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _send_error(self, err: HubError) -> None:
        # A request whose body we did not read would poison the keep-alive connection.
        try:
            self._read_body()
        except Exception:
            self.close_connection = True
        # Header values must be one latin-1 line; file names may be anything.
        one_line = " ".join(err.message.split()).encode("ascii", "backslashreplace").decode()
        headers = {"X-Error-Message": one_line, **err.headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send_json({"error": err.message}, err.status, headers)

    # ------------------------------------------------------------------ auth
    def _check_token(self) -> bool:
        """True when a valid token came with the request; a wrong one is refused outright."""
        header = self.headers.get("Authorization")
        if not header:
            return False
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.hub.token.encode()):
            raise HubError(401, "Invalid credentials in Authorization header")
        self._authenticated = True
        return True

    def _require_write(self) -> None:
        if not self._check_token():
            raise HubError(401, "You must be authenticated to write to the Hub: pass a token "
                                "(Authorization: Bearer <token>).")

    def _repo_for_read(self, repo_type: str, repo_id: str) -> Repo:
        authenticated = self._check_token()
        repo = self.hub._repos.get((repo_type, repo_id))
        if repo is None:
            raise _not_found_repo(repo_id)
        if repo.private and not authenticated:
            raise HubError(401, f"Repository not found: {repo_id} (private; authenticate to access it)",
                           "RepoNotFound")
        return repo

    def _repo_for_write(self, repo_type: str, repo_id: str) -> Repo:
        self._require_write()
        repo = self.hub._repos.get((repo_type, repo_id))
        if repo is None:
            raise _not_found_repo(repo_id)
        return repo

    # ------------------------------------------------------------------ routing
    def _route(self, method: str) -> None:
        split = urlsplit(self.path)
        self._query = parse_qs(split.query, keep_blank_values=True)
        segments = [s for s in split.path.split("/") if s != ""]
        hub = self.hub

        if segments[:1] == ["api"]:
            rest = segments[1:]
            if rest == ["repos", "create"] and method == "POST":
                return self._create_repo()
            if rest == ["repos", "delete"] and method == "DELETE":
                return self._delete_repo()
            if rest == ["validate-yaml"] and method == "POST":
                self._read_body()
                return self._send_json({"errors": [], "warnings": []})
            if rest == ["whoami-v2"] and method == "GET":
                return self._whoami()
            if rest and rest[0] in _REPO_TYPES:
                repo_type = _REPO_TYPES[rest[0]]
                repo_id, sub = self._split_repo_id(repo_type, rest[1:])
                if repo_id:
                    with hub._lock:
                        return self._repo_api(method, repo_type, repo_id, sub)
        if segments[:1] == ["_zoo_lfs"] and len(segments) == 3:
            with hub._lock if method != "PUT" else contextlib.nullcontext():
                return self._lfs_object(method, segments[1], segments[2])

        # /[datasets/]{repo_id}.git/info/lfs/objects/batch
        if segments[-4:] == ["info", "lfs", "objects", "batch"] and method == "POST":
            repo_type, repo_segments = self._strip_type_prefix(segments[:-4])
            if repo_segments and repo_segments[-1].endswith(".git"):
                repo_segments[-1] = repo_segments[-1][: -len(".git")]
                with hub._lock:
                    return self._lfs_batch(repo_type, "/".join(unquote(s) for s in repo_segments))

        # /[datasets/]{repo_id}/resolve/{revision}/{path}
        if "resolve" in segments and method in ("GET", "HEAD"):
            index = segments.index("resolve")
            repo_type, repo_segments = self._strip_type_prefix(segments[:index])
            if 1 <= len(repo_segments) <= 2 and len(segments) > index + 2:
                revision = unquote(segments[index + 1])
                path = unquote("/".join(segments[index + 2:]))
                with hub._lock:
                    blob, commit_oid = self._lookup_file(repo_type, "/".join(map(unquote, repo_segments)),
                                                         revision, path)
                return self._serve_file(blob, commit_oid)

        raise HubError(404, f"The loopback hub does not serve {method} {split.path}")

    @staticmethod
    def _strip_type_prefix(segments: list[str]) -> tuple[str, list[str]]:
        if segments and segments[0] in ("datasets", "spaces"):
            return _REPO_TYPES[segments[0]], list(segments[1:])
        return "model", list(segments)

    def _split_repo_id(self, repo_type: str, segments: list[str]) -> tuple[str | None, list[str]]:
        """``org/name/...`` or ``name/...``: the id is two segments unless a known subroute follows one."""
        if not segments:
            return None, []
        if len(segments) >= 2:
            two = f"{unquote(segments[0])}/{unquote(segments[1])}"
            if (repo_type, two) in self.hub._repos or segments[1] not in _API_SUBROUTES:
                return two, segments[2:]
        return unquote(segments[0]), segments[1:]

    # ------------------------------------------------------------------ /api/repos
    def _create_repo(self) -> None:
        self._require_write()
        payload = self._json_body()
        name = payload.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            raise HubError(400, "Invalid repo name")
        organization = payload.get("organization") or self.hub.username
        repo_type = payload.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        repo_id = f"{organization}/{name}"
        private = payload.get("private")
        if private is None:
            private = payload.get("visibility") == "private"
        with self.hub._lock:
            existing = self.hub._repos.get((repo_type, repo_id))
            if existing is not None:
                # The client reads "url" from the 409 body when exist_ok=True.
                return self._send_json({"error": f"You already created this {repo_type} repo",
                                        "url": self.hub._repo_url(existing)}, 409,
                                       {"X-Error-Message": f"You already created this {repo_type} repo"})
            repo = self.hub.create_repo(repo_id, repo_type=repo_type, private=bool(private))
            self._send_json({"url": self.hub._repo_url(repo), "name": repo_id, "id": repo_id})

    def _delete_repo(self) -> None:
        self._require_write()
        payload = self._json_body()
        repo_id = f"{payload.get('organization') or self.hub.username}/{payload.get('name')}"
        repo_type = payload.get("type") or "model"
        with self.hub._lock:
            if (repo_type, repo_id) not in self.hub._repos:
                raise _not_found_repo(repo_id)
            self.hub.delete_repo(repo_id, repo_type=repo_type)
        self._send_json({})

    def _whoami(self) -> None:
        if not self._check_token():
            raise HubError(401, "Invalid user token.")
        self._send_json({"type": "user", "name": self.hub.username, "fullname": self.hub.username, "orgs": [],
                         "auth": {"type": "access_token", "accessToken": {"displayName": "loopback",
                                                                           "role": "write"}}})

    # ------------------------------------------------------------------ /api/{type}s/{repo_id}/...
    def _repo_api(self, method: str, repo_type: str, repo_id: str, sub: list[str]) -> None:
        head = sub[0] if sub else None
        if head is None and method == "GET":
            return self._repo_info(repo_type, repo_id, "main")
        if head == "revision" and len(sub) == 2 and method == "GET":
            return self._repo_info(repo_type, repo_id, unquote(sub[1]))
        if head == "tree" and len(sub) >= 2 and method == "GET":
            return self._tree(repo_type, repo_id, unquote(sub[1]), unquote("/".join(sub[2:])))
        if head == "paths-info" and len(sub) == 2 and method == "POST":
            return self._paths_info(repo_type, repo_id, unquote(sub[1]))
        if head == "preupload" and len(sub) == 2 and method == "POST":
            return self._preupload(repo_type, repo_id, unquote(sub[1]))
        if head == "commit" and len(sub) == 2 and method == "POST":
            return self._create_commit(repo_type, repo_id, unquote(sub[1]))
        if head == "commits" and len(sub) == 2 and method == "GET":
            return self._list_commits(repo_type, repo_id, unquote(sub[1]))
        if head == "refs" and len(sub) == 1 and method == "GET":
            return self._refs(repo_type, repo_id)
        if head == "branch" and len(sub) == 2 and method in ("POST", "DELETE"):
            return self._branch(method, repo_type, repo_id, unquote(sub[1]))
        if head == "tag" and len(sub) == 2 and method in ("POST", "DELETE"):
            return self._tag(method, repo_type, repo_id, unquote(sub[1]))
        if head == "settings" and method == "PUT":
            repo = self._repo_for_write(repo_type, repo_id)
            payload = self._json_body()
            if "private" in payload:
                repo.private = bool(payload["private"])
            elif "visibility" in payload:
                repo.private = payload["visibility"] == "private"
            return self._send_json({"private": repo.private})
        if head in ("xet-write-token", "xet-read-token"):
            raise HubError(501, "The loopback hub has no Xet storage: run the client with HF_HUB_DISABLE_XET=1 "
                                "so it uploads through plain LFS.")
        raise HubError(404, f"The loopback hub does not serve {method} {self.path}")

    def _file_entry(self, path: str, blob: Blob) -> dict:
        entry: dict[str, Any] = {"type": "file", "oid": blob.git_oid, "size": blob.size, "path": path}
        if blob.lfs:
            entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": blob.pointer_size}
        return entry

    @staticmethod
    def _folder_entry(path: str, files: dict[str, Blob]) -> dict:
        inside = sorted((p, b.git_oid) for p, b in files.items() if p.startswith(path + "/"))
        return {"type": "directory", "oid": hashlib.sha1(repr(inside).encode()).hexdigest(), "path": path}

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo_for_read(repo_type, repo_id)
        commit = repo.commits[self.hub._resolve(repo, revision)]
        with_blobs = self._query.get("blobs", [""])[0] in _TRUE
        siblings = []
        for path in sorted(commit.files):
            sibling: dict[str, Any] = {"rfilename": path}
            if with_blobs:
                blob = commit.files[path]
                sibling.update(size=blob.size, blobId=blob.git_oid)
                if blob.lfs:
                    sibling["lfs"] = {"sha256": blob.sha256, "size": blob.size, "pointerSize": blob.pointer_size}
            siblings.append(sibling)
        author = repo_id.split("/")[0] if "/" in repo_id else None
        self._send_json({
            "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24], "id": repo_id,
            "modelId": repo_id, "author": author, "sha": commit.oid, "lastModified": commit.date,
            "createdAt": repo.created_at, "private": repo.private, "gated": False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
        })

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        repo = self._repo_for_read(repo_type, repo_id)
        commit = repo.commits[self.hub._resolve(repo, revision)]
        recursive = self._query.get("recursive", [""])[0] in _TRUE
        path = path.strip("/")
        prefix = path + "/" if path else ""
        if path and path in commit.files:
            raise HubError(404, f"{path} is a file, not a folder", "EntryNotFound",
                           {"X-Repo-Commit": commit.oid})
        entries: dict[str, dict] = {}
        for file_path, blob in commit.files.items():
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix):].split("/")
            for depth in range(1, len(parts)):  # folders on the way
                if depth > 1 and not recursive:
                    break
                folder = prefix + "/".join(parts[:depth])
                entries.setdefault(folder, self._folder_entry(folder, commit.files))
            if recursive or len(parts) == 1:
                entries[file_path] = self._file_entry(file_path, blob)
        if path and not entries:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        ordered = [entries[k] for k in sorted(entries)]
        cursor = int(self._query.get("cursor", ["0"])[0] or 0)
        page = ordered[cursor: cursor + self.hub.tree_page_size]
        headers = {}
        if cursor + self.hub.tree_page_size < len(ordered):
            base = self.path.split("?", 1)[0]
            query = "&".join(f"{k}={quote(v[0])}" for k, v in self._query.items() if k != "cursor")
            next_url = f"{self.hub.endpoint}{base}?{query}&cursor={cursor + self.hub.tree_page_size}"
            headers["Link"] = f'<{next_url}>; rel="next"'
        self._send_json(page, headers=headers)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo_for_read(repo_type, repo_id)
        commit = repo.commits[self.hub._resolve(repo, revision)]
        body = self._read_body()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(body or b"{}").get("paths", [])
        else:
            paths = parse_qs(body.decode(), keep_blank_values=True).get("paths", [])
        if isinstance(paths, str):
            paths = [paths]
        result = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                result.append(self._file_entry(path, commit.files[path]))
            elif any(p.startswith(path + "/") for p in commit.files):
                result.append(self._folder_entry(path, commit.files))
        self._send_json(result)

    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo_for_write(repo_type, repo_id)
        commit = repo.commits[self.hub._resolve(repo, revision)]
        payload = self._json_body()
        ignore_patterns = [line.strip() for line in (payload.get("gitIgnore") or "").splitlines()
                           if line.strip() and not line.startswith("#")]
        files = []
        for item in payload.get("files", []):
            path, size = item["path"], int(item.get("size", 0))
            existing = commit.files.get(path)
            oid = None if existing is None else (existing.sha256 if existing.lfs else existing.git_oid)
            files.append({
                "path": path,
                "uploadMode": "lfs" if self.hub._is_lfs(repo, commit.oid, path, size) else "regular",
                "shouldIgnore": any(fnmatch.fnmatchcase(path, p) for p in ignore_patterns),
                "oid": oid,
            })
        self._send_json({"files": files, "commitOid": commit.oid})

    def _create_commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo_for_write(repo_type, repo_id)
        create_pr = self._query.get("create_pr", [""])[0] in _TRUE
        if revision not in repo.branches:
            if revision.startswith("refs/pr/") or revision in repo.tags or re.fullmatch(r"[0-9a-f]{7,40}", revision):
                self.hub._resolve(repo, revision)  # 404 when it does not exist at all
                if not revision.startswith("refs/pr/"):
                    raise HubError(400, f"Cannot commit to {revision!r}: commits go to a branch")
            else:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        lines = [json.loads(line) for line in self._read_body().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "Commit payload must start with a header line")
        header = lines[0]["value"]
        pr_number = None
        if revision.startswith("refs/pr/"):
            pr_number = int(revision.rsplit("/", 1)[1])
        head_oid = repo.pull_requests[pr_number] if pr_number is not None else repo.branches[revision]
        parent = header.get("parentCommit")
        if parent and not head_oid.startswith(parent):
            raise HubError(412, "A commit has happened since the parent commit you passed. Please refresh and "
                                "try again.")
        additions: dict[str, Blob] = {}
        deletions: list[str] = []
        files = repo.commits[head_oid].files
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            path = value.get("path", "")
            if key == "file":
                content = value.get("content", "")
                data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                additions[path] = Blob.of(data, lfs=False)
            elif key == "lfsFile":
                oid = value.get("oid", "")
                data = repo.lfs_objects.get(oid)
                if data is None:  # a copy of an LFS file already in the repo
                    data = next((b.data for c in repo.commits.values() for b in c.files.values()
                                 if b.lfs and b.sha256 == oid), None)
                if data is None:
                    raise HubError(422, f"LFS object {oid} for {path} was never uploaded (LFS batch + PUT first)")
                if "size" in value and int(value["size"]) != len(data):
                    raise HubError(422, f"LFS object {oid}: size {value['size']} != uploaded {len(data)}")
                additions[path] = Blob.of(data, lfs=True)
            elif key == "deletedFile":
                if path not in files and path not in additions:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                deletions.append(path)
            elif key == "deletedFolder":
                folder = path.rstrip("/") + "/"
                deletions.extend(p for p in files if p.startswith(folder))
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        summary = header.get("summary") or "Commit"
        if create_pr and pr_number is None:
            pr_number = max(repo.pull_requests, default=0) + 1
            repo.pull_requests[pr_number] = head_oid
        branch = revision if pr_number is None else None
        commit = self.hub._commit(repo, branch, additions, deletions, summary, header.get("description", ""),
                                  pr_number=pr_number)
        repo_url = self.hub._repo_url(repo)
        response = {"success": True, "commitOid": commit.oid, "commitUrl": f"{repo_url}/commit/{commit.oid}"}
        if create_pr:
            response["pullRequestUrl"] = f"{repo_url}/discussions/{pr_number}"
        self._send_json(response)

    def _list_commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo_for_read(repo_type, repo_id)
        oid: str | None = self.hub._resolve(repo, revision)
        items = []
        while oid is not None:
            commit = repo.commits[oid]
            items.append({"id": commit.oid, "authors": [{"user": commit.author}], "date": commit.date,
                          "title": commit.title, "message": commit.message})
            oid = commit.parent
        self._send_json(items)

    def _refs(self, repo_type: str, repo_id: str) -> None:
        repo = self._repo_for_read(repo_type, repo_id)
        payload = {
            "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o} for n, o in repo.branches.items()],
            "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": o} for n, o in repo.tags.items()],
            "converts": [],
        }
        if self._query.get("include_prs", [""])[0] in _TRUE:
            payload["pullRequests"] = [{"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": o}
                                       for n, o in repo.pull_requests.items()]
        self._send_json(payload)

    def _branch(self, method: str, repo_type: str, repo_id: str, branch: str) -> None:
        repo = self._repo_for_write(repo_type, repo_id)
        if method == "DELETE":
            if branch == "main":
                raise HubError(403, "You cannot delete the default branch")
            if repo.branches.pop(branch, None) is None:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            return self._send_json({})
        if branch.startswith("refs/") or not re.fullmatch(r"[A-Za-z0-9._/-]+", branch) or _SHA_RE.fullmatch(branch):
            raise HubError(400, f"Invalid reference for a branch: {branch}")
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = self._json_body().get("startingPoint") or "main"
        repo.branches[branch] = self.hub._resolve(repo, start)
        self._send_json({})

    def _tag(self, method: str, repo_type: str, repo_id: str, name_or_revision: str) -> None:
        repo = self._repo_for_write(repo_type, repo_id)
        if method == "DELETE":
            if repo.tags.pop(name_or_revision, None) is None:
                raise HubError(404, f"Invalid rev id: {name_or_revision}", "RevisionNotFound")
            return self._send_json({})
        target = self.hub._resolve(repo, name_or_revision)
        tag = self._json_body().get("tag")
        if not isinstance(tag, str) or not re.fullmatch(r"[A-Za-z0-9._/-]+", tag) or tag.startswith("refs/"):
            raise HubError(400, f"Invalid tag name: {tag!r}")
        if tag in repo.tags:
            raise HubError(409, f"Tag already exists: refs/tags/{tag}")
        repo.tags[tag] = target
        self._send_json({})

    # ------------------------------------------------------------------ LFS
    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        payload = self._json_body()
        operation = payload.get("operation")
        repo = (self._repo_for_write if operation == "upload" else self._repo_for_read)(repo_type, repo_id)
        if payload.get("hash_algo", "sha256") != "sha256":
            raise HubError(400, "Only sha256 LFS objects are supported")
        transfers = payload.get("transfers") or ["basic"]
        if "basic" not in transfers:
            raise HubError(422, f"The loopback hub only offers the 'basic' LFS transfer, not {transfers}")
        objects = []
        for item in payload.get("objects", []):
            oid, size = str(item.get("oid", "")), int(item.get("size", 0))
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            query = f"repo={quote(repo_id, safe='')}&sig={self.hub._sign(repo_type, repo_id, oid)}"
            base = f"{self.hub.endpoint}/_zoo_lfs/{repo_type}/{oid}?{query}"
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                entry["error"] = {"code": 422, "message": "oid must be a sha256 hex digest"}
            elif operation == "upload":
                if oid not in repo.lfs_objects:  # no "actions" means "already there, skip"
                    entry["actions"] = {"upload": {"href": base, "header": {}},
                                        "verify": {"href": base + "&verify=1", "header": {}}}
            elif operation == "download":
                if oid in repo.lfs_objects:
                    entry["actions"] = {"download": {"href": base, "header": {}}}
                else:
                    entry["error"] = {"code": 404, "message": "Object does not exist"}
            else:
                raise HubError(400, f"Unknown LFS operation {operation!r}")
            objects.append(entry)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def _lfs_object(self, method: str, repo_type: str, oid: str) -> None:
        repo_id = unquote(self._query.get("repo", [""])[0])
        signature = self._query.get("sig", [""])[0]
        if not hmac.compare_digest(signature, self.hub._sign(repo_type, repo_id, oid)):
            raise HubError(403, "Bad or missing signature on the LFS object URL")
        if method == "PUT":
            data = self._read_body()  # read outside the store lock: uploads may be large
            if hashlib.sha256(data).hexdigest() != oid:
                raise HubError(400, f"Uploaded content does not match sha256 {oid}")
            with self.hub._lock:
                repo = self.hub._repos.get((repo_type, repo_id))
                if repo is None:
                    raise _not_found_repo(repo_id)
                repo.lfs_objects[oid] = data
            return self._send(200, b"", {"ETag": f'"{oid}"'}, content_type="text/plain")
        with self.hub._lock:
            repo = self.hub._repos.get((repo_type, repo_id))
            data = None if repo is None else repo.lfs_objects.get(oid)
        if method == "POST" and self._query.get("verify"):
            self._check_token()
            body = self._json_body()
            if data is None or int(body.get("size", -1)) != len(data):
                raise HubError(404, f"LFS object {oid} was not uploaded completely")
            return self._send_json({})
        if method in ("GET", "HEAD") and data is not None:
            return self._send(200, data, content_type="application/octet-stream")
        raise HubError(404, f"LFS object {oid} not found")

    # ------------------------------------------------------------------ resolve
    def _lookup_file(self, repo_type: str, repo_id: str, revision: str, path: str) -> tuple[Blob, str]:
        repo = self._repo_for_read(repo_type, repo_id)
        commit_oid = self.hub._resolve(repo, revision)
        blob = repo.commits[commit_oid].files.get(path)
        if blob is None:
            # X-Repo-Commit lets the client cache the absence (.no_exist/<sha>/<path>).
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit_oid})
        return blob, commit_oid

    def _serve_file(self, blob: Blob, commit_oid: str) -> None:
        headers = {"X-Repo-Commit": commit_oid, "ETag": f'"{blob.etag}"', "Accept-Ranges": "bytes",
                   "Content-Disposition": "inline"}
        if blob.lfs:
            # The real Hub redirects LFS files to a CDN and describes them with X-Linked-*; we serve in place.
            headers["X-Linked-Etag"] = f'"{blob.sha256}"'
            headers["X-Linked-Size"] = str(blob.size)
        data = blob.data
        if self.command == "HEAD":
            headers["Content-Length"] = str(blob.size)  # metadata, even if the stored bytes were corrupted
            return self._send(200, b"", headers, content_type="application/octet-stream")
        range_header = self.headers.get("Range")
        if range_header:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
            total = len(data)
            if match is None or (match[1] == "" and match[2] == ""):
                raise HubError(416, f"Unsupported range {range_header!r}",
                               headers={"Content-Range": f"bytes */{total}"})
            if match[1] == "":  # suffix range: last N bytes
                start, end = max(total - int(match[2]), 0), total - 1
            else:
                start = int(match[1])
                end = min(int(match[2]), total - 1) if match[2] else total - 1
            if start >= total or start > end:
                raise HubError(416, f"Range {range_header!r} outside {total} bytes",
                               headers={"Content-Range": f"bytes */{total}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
            return self._send(206, data[start:end + 1], headers, content_type="application/octet-stream")
        self._send(200, data, headers, content_type="application/octet-stream")
