"""A small Hugging Face hub on 127.0.0.1, for testing download_weights.py with huggingface_hub's real client.

It answers what the client asks when it downloads a file, the way huggingface.co does:

- HEAD / GET /<repo_id>/resolve/<revision>/<path> on the hub. A file kept in git answers 200 with its bytes,
  `ETag: "<git blob id>"`, `Content-Length` and `X-Repo-Commit`. An LFS file (*.pth, *.model) answers 302 to
  the storage server with `X-Linked-Etag: "<sha256>"`, `X-Linked-Size` and `X-Repo-Commit`.
- Errors carry the hub's `X-Error-Code` / `X-Error-Message` headers: 401 GatedRepo without a token, 403
  GatedRepo for a token whose account has not accepted the license, 401 for an unknown token, RepoNotFound
  (401 anonymous, 404 signed in), RevisionNotFound, EntryNotFound.
- GET / HEAD /blobs/<sha256> on the storage server, a second origin (another port) like the hub's CDN:
  the bytes, with ranged GETs (206 + Content-Range).

Repositories are folders laid out as the real repository (original/params.json, ...). Every request is
logged, and faults can be queued for the next downloads of a file: cut the connection, stall until
released, serve damaged bytes, answer 503, ignore the Range header.
"""

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".pth", ".model")  # what Meta's repositories keep in LFS (their .gitattributes)
BLOCK = 1 << 20


@dataclass
class Repo:
    folder: Path
    commit: str
    gated: bool


@dataclass
class Blob:
    path: Path
    size: int
    sha256: str
    git_blob_id: str
    is_lfs: bool


@dataclass
class Request:
    server: str  # "hub" or "storage"
    method: str
    path: str
    range: str  # the Range header, "" without one
    authorized: bool  # whether an Authorization header came with it (its value is never logged)
    status: int = 0
    body_bytes: int = 0  # bytes of content written to the socket


@dataclass
class Fault:
    """What the next GET of a file's bytes meets. kind: cut, stall, corrupt, unavailable or no_range (the
    whole file, as a proxy that drops the Range header sends it)."""

    kind: str
    at: int = 0  # cut / stall: after how many bytes of this response
    stalled: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class FakeHub:
    def __init__(self):
        self.repos = {}
        self.tokens = {}  # token -> repo ids whose license its account accepted
        self.blobs = {}  # sha256 -> Blob, for the storage server
        self.faults = {}  # sha256 -> [Fault], consumed one per GET
        self.every_fault = []  # to release the stalled ones when the hub stops
        self.requests = []
        self.lock = threading.Lock()
        self.hub = self._server("hub")
        self.storage = self._server("storage")
        self.threads = []

    # ------------------------------------------------------------ set up

    def add_repo(self, repo_id: str, folder: Path, gated: bool = True):
        commit = hashlib.sha1(f"{repo_id} {folder}".encode()).hexdigest()
        self.repos[repo_id] = Repo(Path(folder), commit, gated)

    def add_token(self, token: str, accepted=()):
        self.tokens[token] = set(accepted)

    def add_fault(self, repo_id: str, path_in_repo: str, fault: Fault) -> Fault:
        blob = self.blob(self.repos[repo_id].folder / path_in_repo)
        with self.lock:
            self.faults.setdefault(blob.sha256, []).append(fault)
            self.every_fault.append(fault)
        return fault

    def blob(self, path: Path) -> Blob:
        with self.lock:
            known = next((blob for blob in self.blobs.values() if blob.path == path), None)
        if known:
            return known
        size = path.stat().st_size
        sha256, git_blob = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
        with open(path, "rb") as data:
            while chunk := data.read(8 * BLOCK):
                sha256.update(chunk)
                git_blob.update(chunk)
        blob = Blob(path, size, sha256.hexdigest(), git_blob.hexdigest(), path.suffix in LFS_SUFFIXES)
        with self.lock:
            self.blobs[blob.sha256] = blob
        return blob

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.hub.server_address[1]}"

    @property
    def storage_url(self) -> str:
        return f"http://127.0.0.1:{self.storage.server_address[1]}"

    # ------------------------------------------------------------ what the tests look at

    def log(self, server=None, method=None):
        with self.lock:
            return [r for r in self.requests
                    if (server is None or r.server == server) and (method is None or r.method == method)]

    def bytes_sent(self, sha256: str) -> int:
        """Content bytes written for this file by every GET, on either server."""
        blob = self.blobs[sha256]
        return sum(r.body_bytes for r in self.log(method="GET") if r.path.endswith(sha256) or (
            not blob.is_lfs and r.path.endswith("/" + blob.path.name)))

    # ------------------------------------------------------------ life cycle

    def start(self):
        for server in (self.hub, self.storage):
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def stop(self):
        """Stop both servers (and release any stalled response); safe to call whether or not they started."""
        for fault in self.every_fault:
            fault.release.set()
        for server in (self.hub, self.storage):
            if self.threads:
                server.shutdown()
            server.server_close()
        for thread in self.threads:
            thread.join(timeout=10)

    def _server(self, role: str) -> ThreadingHTTPServer:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30  # a connection left idle by a client is dropped after this long

            def do_HEAD(self):
                hub._handle(self, role)

            def do_GET(self):
                hub._handle(self, role)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        return server

    # ------------------------------------------------------------ answers

    def _handle(self, handler: BaseHTTPRequestHandler, role: str):
        request = Request(role, handler.command, urlsplit(handler.path).path, handler.headers.get("Range", ""),
                          "Authorization" in handler.headers)
        try:
            if role == "hub":
                self._resolve(handler, request)
            else:
                self._storage(handler, request)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True
        finally:
            with self.lock:
                self.requests.append(request)

    def _error(self, handler, request, status: int, code: str, message: str, commit: str = None):
        request.status = status
        body = ('{"error": "%s"}' % message).encode()
        handler.send_response(status)
        if code:
            handler.send_header("X-Error-Code", code)
        handler.send_header("X-Error-Message", message)
        if commit:
            handler.send_header("X-Repo-Commit", commit)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command == "GET":
            handler.wfile.write(body)

    def _resolve(self, handler, request):
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", request.path)
        if not match:
            return self._error(handler, request, 404, "", "Not found")
        repo_id, revision, path_in_repo = match.group(1), unquote(match.group(2)), unquote(match.group(3))
        authorization = handler.headers.get("Authorization", "")
        token = authorization.removeprefix("Bearer ") if authorization else None
        if token is not None and token not in self.tokens:
            return self._error(handler, request, 401, "", "Invalid credentials in Authorization header")
        repo = self.repos.get(repo_id)
        if repo is None:
            return self._error(handler, request, 404 if token else 401, "RepoNotFound", "Repository not found")
        if repo.gated and token is None:
            return self._error(handler, request, 401, "GatedRepo", f"Access to model {repo_id} is restricted. "
                               "You must have access to it and be authenticated to access it. Please log in.")
        if repo.gated and repo_id not in self.tokens[token]:
            return self._error(handler, request, 403, "GatedRepo", f"Access to model {repo_id} is restricted and you "
                               f"are not in the authorized list. Visit {self.endpoint}/{repo_id} to ask for access.")
        if revision not in ("main", repo.commit):
            return self._error(handler, request, 404, "RevisionNotFound", "Invalid rev id: " + revision)
        path = repo.folder / path_in_repo
        if not path.is_file():
            return self._error(handler, request, 404, "EntryNotFound", f"{path_in_repo} does not exist on main",
                               commit=repo.commit)
        blob = self.blob(path)
        if blob.is_lfs:
            request.status = 302
            handler.send_response(302)
            handler.send_header("Location", f"{self.storage_url}/blobs/{blob.sha256}?signature=test")
            handler.send_header("X-Repo-Commit", repo.commit)
            handler.send_header("X-Linked-Etag", f'"{blob.sha256}"')
            handler.send_header("X-Linked-Size", str(blob.size))
            handler.send_header("ETag", f'"{hashlib.sha1(blob.sha256.encode()).hexdigest()}"')  # the LFS pointer's
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        self._send_content(handler, request, blob, {"X-Repo-Commit": repo.commit, "ETag": f'"{blob.git_blob_id}"'})

    def _storage(self, handler, request):
        sha256 = request.path.rsplit("/", 1)[-1]
        blob = self.blobs.get(sha256)
        if not request.path.startswith("/blobs/") or blob is None:
            return self._error(handler, request, 404, "", "Not found")
        self._send_content(handler, request, blob, {"ETag": f'"{sha256}"'})

    def _send_content(self, handler, request, blob: Blob, headers: dict):
        fault = None
        if handler.command == "GET":
            with self.lock:
                queue = self.faults.get(blob.sha256)
                fault = queue.pop(0) if queue else None
        if fault is not None and fault.kind == "unavailable":
            return self._error(handler, request, 503, "", "Service temporarily unavailable")
        start = 0
        range_match = re.fullmatch(r"bytes=(\d+)-", request.range)
        if fault is not None and fault.kind == "no_range":
            range_match = None
        if range_match:
            start = int(range_match.group(1))
            if start >= blob.size:
                return self._error(handler, request, 416, "", "Range Not Satisfiable")
        request.status = 206 if range_match else 200
        handler.send_response(request.status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(blob.size - start))
        if range_match:
            handler.send_header("Content-Range", f"bytes {start}-{blob.size - 1}/{blob.size}")
        handler.end_headers()
        if handler.command != "GET":
            return
        stop_at = fault.at if fault is not None and fault.kind in ("cut", "stall") else None
        with open(blob.path, "rb") as data:
            data.seek(start)
            while chunk := data.read(BLOCK if stop_at is None else min(BLOCK, stop_at - request.body_bytes)):
                if fault is not None and fault.kind == "corrupt":
                    chunk = bytes(byte ^ 0xFF for byte in chunk[:16]) + chunk[16:]
                handler.wfile.write(chunk)
                request.body_bytes += len(chunk)
        handler.wfile.flush()
        if stop_at is not None:
            if fault.kind == "stall":
                fault.stalled.set()
                fault.release.wait(timeout=30)
            handler.close_connection = True  # the rest never comes: the client sees the connection drop
