#!/usr/bin/env python3
"""A small Hugging Face Hub look-alike on loopback, for testing downloaders.

Standard library only (Python 3.11+). It serves model repos made of local
files with the endpoints and headers that `huggingface_hub` and `hfms pull`
use against huggingface.co:

  GET  /api/models/ORG/NAME[/revision/REV]         repo info (sha, siblings)
  GET  /api/models/ORG/NAME/tree/REV[/DIR]         tree listing (?recursive=)
  HEAD|GET /ORG/NAME/resolve/REV/PATH              file, or 302 for LFS files
  HEAD|GET /cdn/ORG/NAME/SHA256                    LFS content ("the CDN")

Usage:
  python3 tests/hub/testhub.py --repo org/st=DIR --file org/gguf=x.gguf ...

Once listening it prints one line `PORT <n>` on stdout (and writes <n> to
--port-file). Run with --help for every option.

Hub details mimicked (see the comments at each place):
  * A file is stored in LFS when its name has a weights-like suffix or it is
    bigger than 10 MiB. Its git blob is then the LFS *pointer* file, so its
    `blobId`/`oid` is the git sha1 of the pointer, while `lfs.sha256` /
    `lfs.oid` is the sha256 of the content. A regular file's `blobId`/`oid`
    is the git sha1 of its content (sha1 of b"blob <size>\\0" + content).
  * `/resolve/` serves a regular file itself (ETag = git sha1) but answers a
    302 for an LFS file, to the CDN, with `X-Linked-Etag: "<sha256>"` and
    `X-Linked-Size`, on HEAD as on GET. By default the CDN listens on a
    port of its own (a different origin, like cdn-lfs.hf.co or
    cas-bridge.xethub.hf.co), so HTTP clients drop `Authorization` on the
    redirect as they do with the real Hub; --cdn-same-port puts it on the
    main port. (huggingface_hub 2.x follows a same-origin 302 on HEAD and
    then wants X-Repo-Commit from the CDN's answer, which a CDN does not
    send: it cannot download LFS files with --cdn-same-port.)
  * Errors carry `X-Error-Code` (RepoNotFound, RevisionNotFound,
    EntryNotFound, GatedRepo) and `X-Error-Message` headers and a JSON body
    `{"error": ...}`; `huggingface_hub` maps them to its exception classes.
  * `X-Repo-Commit` on every /resolve/ answer (also on EntryNotFound 404s:
    huggingface_hub caches the non-existence of a file under that commit).
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import socket
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

# A file is stored in LFS by the Hub's default .gitattributes for these
# suffixes, and by its upload tooling for any file above 10 MiB.
LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".onnx", ".msgpack", ".h5", ".ot", ".zip")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024

SEND_CHUNK = 64 * 1024   # largest write of file content
HASH_CHUNK = 1024 * 1024  # read size when hashing at startup
LAST_MODIFIED = "2026-01-01T00:00:00.000Z"

# Errors a client that goes away mid-request raises on our side of the socket.
DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout)


# --------------------------------------------------------------------------
# The repos
# --------------------------------------------------------------------------

def git_blob_sha1(data: bytes) -> str:
    """Git's object id of a blob: sha1(b"blob <size>\\0" + content)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The Git LFS pointer file that git stores in place of an LFS file."""
    return (
        "version https://git-lfs.github.com/spec/v1\n"
        f"oid sha256:{sha256}\n"
        f"size {size}\n"
    ).encode()


@dataclass
class RepoFile:
    name: str  # path in the repo, '/'-separated
    path: str  # where the content is on disk
    size: int = 0
    sha256: str = ""
    blob_id: str = ""  # git sha1 of the content, or of the LFS pointer for LFS files
    lfs: bool = False
    pointer_size: int = 0
    corrupt: bool = False  # serve it with one byte flipped (--corrupt)

    def hash(self) -> None:
        """Stream the file once: size, sha256 and (regular files) git sha1."""
        self.size = os.path.getsize(self.path)
        self.lfs = self.name.lower().endswith(LFS_SUFFIXES) or self.size > LFS_SIZE_THRESHOLD
        sha256 = hashlib.sha256()
        # Regular files are at most 10 MiB: their git sha1 is cheap. For an LFS
        # file git hashes the small pointer instead (below).
        sha1 = None if self.lfs else hashlib.sha1(b"blob %d\0" % self.size)
        read = 0
        with open(self.path, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                sha256.update(chunk)
                if sha1 is not None:
                    sha1.update(chunk)
                read += len(chunk)
        if read != self.size:
            raise SystemExit(f"testhub: {self.path} changed size while being hashed")
        self.sha256 = sha256.hexdigest()
        if self.lfs:
            pointer = lfs_pointer(self.sha256, self.size)
            self.pointer_size = len(pointer)  # 134 for sizes of 9 digits
            self.blob_id = git_blob_sha1(pointer)
        else:
            self.blob_id = sha1.hexdigest()

    @property
    def corrupt_offset(self) -> int:
        return self.size // 2


@dataclass
class Repo:
    repo_id: str
    files: dict[str, RepoFile] = field(default_factory=dict)
    gated: bool = False
    commit: str = ""
    by_sha256: dict[str, RepoFile] = field(default_factory=dict)  # LFS files, for the CDN

    def finish(self) -> None:
        """Hash every file and derive the (deterministic) commit sha."""
        for f in self.files.values():
            f.hash()
        listing = sorted((f.name, f.size, f.sha256) for f in self.files.values())
        self.commit = hashlib.sha1(json.dumps([self.repo_id, listing]).encode()).hexdigest()
        self.by_sha256 = {f.sha256: f for f in self.files.values() if f.lfs}

    def directories(self) -> set[str]:
        dirs = set()
        for name in self.files:
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        return dirs

    def tree_oid(self, directory: str) -> str:
        # Any stable 40-hex id will do: clients do not check tree ids.
        return hashlib.sha1(f"tree {self.commit} {directory}".encode()).hexdigest()


def check_repo_id(repo_id: str) -> str:
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or any(p.startswith(".") for p in parts):
        raise SystemExit(f"testhub: repo id must be ORG/NAME, got {repo_id!r}")
    return repo_id


def check_file_name(name: str) -> str:
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") for p in parts) or "\\" in name:
        raise SystemExit(f"testhub: bad file name in repo: {name!r}")
    return name


def walk_dir(root: str) -> list[tuple[str, str]]:
    """(repo name, disk path) of every regular file under root, following
    symlinks, skipping dot-files and dot-directories."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()  # real paths of directories: no symlink loops
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            full = os.path.join(dirpath, fn)
            if fn.startswith(".") or not os.path.isfile(full):
                continue
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            out.append((rel, full))
    return out


def build_repos(args: argparse.Namespace) -> dict[str, Repo]:
    repos: dict[str, Repo] = {}

    def repo(repo_id: str) -> Repo:
        return repos.setdefault(repo_id, Repo(check_repo_id(repo_id)))

    for spec in args.repo:
        repo_id, sep, directory = spec.partition("=")
        if not sep or not os.path.isdir(directory):
            raise SystemExit(f"testhub: --repo wants ORG/NAME=DIR with an existing DIR, got {spec!r}")
        r = repo(repo_id)
        for name, path in walk_dir(directory):
            r.files[name] = RepoFile(name, path)
    for spec in args.file:
        repo_id, sep, rest = spec.partition("=")
        if not sep:
            raise SystemExit(f"testhub: --file wants ORG/NAME=PATH[:NAME], got {spec!r}")
        # PATH[:NAME]: the last ':' splits, unless what follows is no name.
        path, name = rest, os.path.basename(rest)
        if ":" in rest and not os.path.isfile(rest):
            path, name = rest.rsplit(":", 1)
        if not os.path.isfile(path):
            raise SystemExit(f"testhub: --file {spec!r}: no such file {path!r}")
        repo(repo_id).files[check_file_name(name)] = RepoFile(name, path)
    for repo_id in args.gated:
        if repo_id not in repos:
            raise SystemExit(f"testhub: --gated {repo_id}: no such repo")
        repos[repo_id].gated = True
    for spec in args.corrupt:
        parts = spec.split("/", 2)
        r = repos.get("/".join(parts[:2])) if len(parts) == 3 else None
        f = r.files.get(parts[2]) if r else None
        if f is None:
            raise SystemExit(f"testhub: --corrupt {spec}: no such file")
        f.corrupt = True
    if args.gated and not args.token:
        raise SystemExit("testhub: --gated needs --token")
    for r in repos.values():
        r.finish()
    return repos


# --------------------------------------------------------------------------
# Shared state: the request log and the byte budget of --die-after-bytes
# --------------------------------------------------------------------------

class Hub:
    def __init__(self, args: argparse.Namespace, repos: dict[str, Repo]):
        self.args = args
        self.repos = repos
        self.token = args.token
        self.throttle = args.throttle
        self.cdn_port = 0  # set once the CDN listener is bound
        self._log_lock = threading.Lock()
        self._budget_lock = threading.Lock()
        self._budget = args.die_after_bytes  # None: unlimited

    def log(self, entry: dict) -> None:
        if not self.args.log:
            return
        line = json.dumps(entry) + "\n"
        with self._log_lock, open(self.args.log, "a", encoding="utf-8") as f:
            f.write(line)

    def take_budget(self, n: int) -> tuple[int, bool]:
        """Reserve up to n content bytes to send: (bytes allowed, whether the
        process must die once they are sent)."""
        if self._budget is None:
            return n, False
        with self._budget_lock:
            allowed = min(n, self._budget)
            self._budget -= allowed
            return allowed, self._budget <= 0


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------

def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """A single `bytes=` range as (first, last) inclusive, 'unsatisfiable',
    or None to serve the whole file (no header, or one we ignore as RFC 9110
    allows: malformed or multi-range)."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first_s == "":  # bytes=-N: the last N bytes
            n = int(last_s)
            if n <= 0:
                return "unsatisfiable"
            return (max(0, size - n), size - 1) if size > 0 else "unsatisfiable"
        first = int(first_s)
        last = int(last_s) if last_s else size - 1
    except ValueError:
        return None
    if first < 0 or (last_s and last < first):
        return None
    if first >= size:
        return "unsatisfiable"
    return first, min(last, size - 1)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer has a Content-Length
    server_version = "testhub/1"
    hub: Hub  # set on the subclass made in main()

    # ---- plumbing -------------------------------------------------------

    def log_message(self, format: str, *args) -> None:  # quiet: see --log
        pass

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    def _handle(self, method: str) -> None:
        self._status = None
        self._logged = False
        try:
            self.route(method)
        except DISCONNECTS:
            self.close_connection = True  # the client went away mid-answer
        finally:
            self.log_request_line(method)

    def log_request_line(self, method: str) -> None:
        if self._logged:
            return
        self._logged = True
        self.hub.log({
            "method": method,
            "path": self.path,
            "range": self.headers.get("Range"),
            "auth": self.headers.get("Authorization") is not None,
            "status": self._status,
        })

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def _other(self) -> None:
        # Drain any body so that the connection stays usable, then 404.
        length = int(self.headers.get("Content-Length") or 0)
        while length > 0:
            chunk = self.rfile.read(min(length, SEND_CHUNK))
            if not chunk:
                break
            length -= len(chunk)
        self._handle(self.command)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other

    def send_json(self, status: int, body, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_hub_error(self, status: int, code: str | None, message: str, headers: dict | None = None) -> None:
        # The Hub names the error in X-Error-Code (huggingface_hub maps it to
        # RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError,
        # RemoteEntryNotFoundError) and repeats the message in X-Error-Message.
        h = {"X-Error-Message": message}
        if code:
            h["X-Error-Code"] = code
        h.update(headers or {})
        self.send_json(status, {"error": message}, h)

    def not_found(self) -> None:
        self.send_hub_error(404, None, "Not found")

    # ---- routing --------------------------------------------------------

    def route(self, method: str) -> None:
        raw_path = urllib.parse.urlsplit(self.path).path
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        # Split before decoding: a revision or a directory may come as one
        # percent-encoded segment (huggingface_hub quotes them with safe="").
        segs = raw_path.split("/")[1:]
        if method not in ("GET", "HEAD"):
            return self.not_found()
        if len(segs) >= 4 and segs[0] == "api" and segs[1] == "models":
            return self.api(self.repo_id(segs[2], segs[3]), segs[4:], query)
        if len(segs) == 4 and segs[0] == "cdn":
            return self.cdn(self.repo_id(segs[1], segs[2]), segs[3])
        if len(segs) >= 5 and segs[2] == "resolve":
            path = urllib.parse.unquote("/".join(segs[4:]))
            return self.resolve(self.repo_id(segs[0], segs[1]), urllib.parse.unquote(segs[3]), path)
        return self.not_found()

    @staticmethod
    def repo_id(org: str, name: str) -> str:
        return f"{urllib.parse.unquote(org)}/{urllib.parse.unquote(name)}"

    def find_repo(self, repo_id: str) -> Repo | None:
        """The repo if this request may see it; otherwise answers and returns None."""
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self.send_hub_error(404, "RepoNotFound", "Repository not found")
            return None
        if repo.gated and not self.authorized(repo):
            return None
        return repo

    def authorized(self, repo: Repo) -> bool:
        # The gate is checked before anything else about the repo: no token
        # is a 401, a token that is not the one is a 403, both GatedRepo.
        auth = self.headers.get("Authorization")
        if auth is None:
            self.send_hub_error(
                401, "GatedRepo",
                f"Access to model {repo.repo_id} is restricted. You must have access to it "
                "and be authenticated to access it. Please log in.")
            return False
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or token.strip() != self.hub.token:
            self.send_hub_error(
                403, "GatedRepo",
                f"Access to model {repo.repo_id} is restricted and you are not in the authorized list.")
            return False
        return True

    def check_revision(self, repo: Repo, rev: str, headers: dict | None = None) -> bool:
        # Only the default branch and the commit itself exist.
        if rev in ("main", repo.commit):
            return True
        self.send_hub_error(404, "RevisionNotFound", f"Invalid rev id: {rev}", headers)
        return False

    # ---- /api/models ----------------------------------------------------

    def api(self, repo_id: str, rest: list[str], query: dict) -> None:
        repo = self.find_repo(repo_id)
        if repo is None:
            return
        rest = [s for s in rest if s != ""]
        if not rest:
            return self.model_info(repo, "main")
        if rest[0] == "revision" and len(rest) == 2:
            return self.model_info(repo, urllib.parse.unquote(rest[1]))
        if rest[0] == "tree" and len(rest) >= 2:
            path = urllib.parse.unquote("/".join(rest[2:])).strip("/")
            recursive = (query.get("recursive") or ["false"])[-1].lower() in ("1", "true")
            return self.tree(repo, urllib.parse.unquote(rest[1]), path, recursive)
        return self.not_found()

    def model_info(self, repo: Repo, rev: str) -> None:
        """GET /api/models/ORG/NAME[/revision/REV]. The real Hub adds size,
        blobId and lfs to the siblings only with ?blobs=true; we always do."""
        if not self.check_revision(repo, rev):
            return
        siblings = []
        for f in sorted(repo.files.values(), key=lambda f: f.name):
            s = {"rfilename": f.name, "size": f.size, "blobId": f.blob_id}
            if f.lfs:
                s["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            siblings.append(s)
        self.send_json(200, {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": repo.commit,
            "private": False,
            "gated": "auto" if repo.gated else False,
            "disabled": False,
            "lastModified": LAST_MODIFIED,
            "createdAt": LAST_MODIFIED,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(f.size for f in repo.files.values()),
        })

    def tree(self, repo: Repo, rev: str, path: str, recursive: bool) -> None:
        """GET /api/models/ORG/NAME/tree/REV[/DIR][?recursive=true]: what
        huggingface_hub's list_repo_tree and snapshot_download call. One page:
        the real Hub paginates (Link: <...>; rel="next") past 1000 entries."""
        if not self.check_revision(repo, rev):
            return
        dirs = repo.directories()
        if path and path not in dirs:
            return self.send_hub_error(404, "EntryNotFound", f"Entry not found: {path}")
        prefix = f"{path}/" if path else ""

        def wanted(name: str) -> bool:
            if not name.startswith(prefix):
                return False
            return recursive or "/" not in name[len(prefix):]

        entries = []
        for d in sorted(d for d in dirs if wanted(d)):
            entries.append({"type": "directory", "oid": repo.tree_oid(d), "size": 0, "path": d})
        for f in sorted((f for f in repo.files.values() if wanted(f.name)), key=lambda f: f.name):
            e = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.name}
            if f.lfs:
                e["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            entries.append(e)
        self.send_json(200, entries)

    # ---- /ORG/NAME/resolve/REV/PATH -------------------------------------

    def resolve(self, repo_id: str, rev: str, path: str) -> None:
        repo = self.find_repo(repo_id)
        if repo is None:
            return
        if not self.check_revision(repo, rev):
            return
        commit = {"X-Repo-Commit": repo.commit}
        f = repo.files.get(path)
        if f is None:
            return self.send_hub_error(404, "EntryNotFound", "Entry not found", commit)
        if not f.lfs:
            # A regular git file is served by the Hub itself; its ETag is the
            # git blob sha1.
            ctype = "text/plain; charset=utf-8" if f.name.endswith((".json", ".txt", ".md")) else "application/octet-stream"
            return self.send_content(f, f'"{f.blob_id}"', ctype, commit)
        # An LFS file: 302 to the CDN, on HEAD as on GET. X-Linked-Etag and
        # X-Linked-Size describe the content (huggingface_hub takes the blob
        # name and expected size from them); ETag is that of the pointer.
        host = self.request_host()
        port = self.hub.cdn_port or self.server.server_address[1]
        location = f"http://{host}:{port}/cdn/{repo.repo_id}/{f.sha256}"
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("X-Linked-Etag", f'"{f.sha256}"')
        self.send_header("X-Linked-Size", str(f.size))
        self.send_header("ETag", f'"{f.blob_id}"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def request_host(self) -> str:
        """The host the client used (Host header), for absolute redirects."""
        host = self.headers.get("Host") or ""
        if host.startswith("["):
            return host[: host.index("]") + 1]
        host = host.rsplit(":", 1)[0] if host else ""
        if not host:
            host = self.server.server_address[0]
            if ":" in host:
                host = f"[{host}]"
        return host

    # ---- /cdn/ORG/NAME/SHA256 -------------------------------------------

    def cdn(self, repo_id: str, sha256: str) -> None:
        # Like the real CDN: signed-URL style, no Authorization needed (and
        # none should be sent; --log records whether it was).
        repo = self.hub.repos.get(repo_id)
        f = repo.by_sha256.get(sha256) if repo else None
        if f is None:
            return self.not_found()
        self.send_content(f, f'"{f.sha256}"', "application/octet-stream", {})

    # ---- content --------------------------------------------------------

    def send_content(self, f: RepoFile, etag: str, ctype: str, headers: dict) -> None:
        rng = parse_range(self.headers.get("Range"), f.size)
        if rng == "unsatisfiable":
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{f.size}")
            self.send_header("Content-Length", "0")
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            return
        first, last = rng if rng else (0, f.size - 1)
        length = last - first + 1
        self.send_response(206 if rng else 200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        if rng:
            self.send_header("Content-Range", f"bytes {first}-{last}/{f.size}")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD" or length <= 0:
            return
        self.stream(f, first, length)

    def stream(self, f: RepoFile, offset: int, length: int) -> None:
        """Send length bytes of f from offset, in chunks, applying --corrupt,
        --throttle and --die-after-bytes."""
        rate = self.hub.throttle
        # Small chunks at low rates, so that the pacing stays smooth.
        chunk_size = min(SEND_CHUNK, max(1024, rate // 8)) if rate else SEND_CHUNK
        start = time.monotonic()
        sent = 0
        with open(f.path, "rb") as fh:
            fh.seek(offset)
            while sent < length:
                data = fh.read(min(chunk_size, length - sent))
                if not data:  # the file shrank on disk: the connection is unusable
                    self.close_connection = True
                    return
                pos = offset + sent
                if f.corrupt and pos <= f.corrupt_offset < pos + len(data):
                    i = f.corrupt_offset - pos
                    data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
                allowed, die = self.hub.take_budget(len(data))
                if allowed:
                    self.wfile.write(data[:allowed])
                sent += allowed
                if die:
                    # --die-after-bytes: the hub is "killed" mid-download.
                    self.wfile.flush()
                    self.log_request_line(self.command)
                    sys.stdout.flush()
                    os._exit(3)
                if rate:
                    ahead = sent / rate - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def handle_error(self, request, client_address) -> None:
        # A client that disconnects between requests is normal; anything
        # else is a bug in the hub: print it.
        if isinstance(sys.exc_info()[1], DISCONNECTS):
            return
        super().handle_error(request, client_address)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="A Hugging Face Hub look-alike for tests (loopback only).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 (default): a free port")
    p.add_argument("--port-file", help="also write the port number to this file (atomically)")
    p.add_argument("--repo", action="append", default=[], metavar="ORG/NAME=DIR",
                   help="a repo of every file under DIR (dot-files skipped; --file entries override)")
    p.add_argument("--file", action="append", default=[], metavar="ORG/NAME=PATH[:NAME]",
                   help="add one file to a repo (default name: basename of PATH)")
    p.add_argument("--gated", action="append", default=[], metavar="ORG/NAME",
                   help="gate a repo: 401 without a token, 403 with a wrong one")
    p.add_argument("--token", help="the token that opens gated repos")
    p.add_argument("--corrupt", action="append", default=[], metavar="ORG/NAME/PATH",
                   help="serve this file with its middle byte flipped (hashes stay the true ones)")
    p.add_argument("--throttle", type=int, default=0, metavar="BYTES_PER_S",
                   help="cap the rate of file content of each response (so of each connection)")
    p.add_argument("--die-after-bytes", type=int, default=None, metavar="N",
                   help="exit (code 3) right after N bytes of file content were sent in all")
    p.add_argument("--log", help="append one JSON line per request to this file")
    p.add_argument("--cdn-same-port", action="store_true",
                   help="serve the CDN redirects on the main port (default: a port of its own)")
    p.add_argument("--exit-on-stdin-eof", action="store_true",
                   help="exit when standard input closes (so a dying parent takes the hub along)")
    args = p.parse_args(argv)
    if args.throttle < 0 or (args.die_after_bytes is not None and args.die_after_bytes < 0):
        p.error("--throttle and --die-after-bytes must not be negative")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    repos = build_repos(args)
    hub = Hub(args, repos)
    handler = type("HubHandler", (Handler,), {"hub": hub})

    main_server = Server((args.host, args.port), handler)
    servers = [main_server]
    if not args.cdn_same_port:
        cdn_server = Server((args.host, 0), handler)
        hub.cdn_port = cdn_server.server_address[1]
        servers.append(cdn_server)
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()

    port = main_server.server_address[1]
    for r in repos.values():
        print(f"testhub: {r.repo_id} commit {r.commit}, {len(r.files)} files"
              + (" (gated)" if r.gated else ""), file=sys.stderr)
    if hub.cdn_port:
        print(f"testhub: CDN on port {hub.cdn_port}", file=sys.stderr)
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, args.port_file)
    print(f"PORT {port}", flush=True)

    if args.exit_on_stdin_eof:
        def watch_stdin() -> None:
            while sys.stdin.buffer.read(4096):
                pass
            os._exit(0)
        threading.Thread(target=watch_stdin, daemon=True).start()

    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
