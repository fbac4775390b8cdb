"""A small in-memory Hugging Face Hub for tests, spoken to by the real ``huggingface_hub`` client.

It implements only what adapter-registry calls: create repo, create branch / tag, preupload, the LFS batch
API with basic uploads (sha256 checked), commits (NDJSON: header, base64 files, LFS pointers), model
info (``sha``, ``siblings`` with LFS metadata), tree listing, and file resolution (HEAD / GET with the
``X-Repo-Commit`` / ``X-Linked-Etag`` / ``X-Linked-Size`` headers). Every request is recorded (with its
headers) so that tests can assert what the client sent, tokens included. Point the client at it with
``HF_ENDPOINT=<url>`` (read by ``workers.hub``) or ``HfApi(endpoint=url)``, and disable the Xet upload
path (``huggingface_hub.constants.HF_HUB_DISABLE_XET = True``, or ``HF_HUB_DISABLE_XET=1`` before import):
uploads then use the LFS batch API that this server implements.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse


def _git_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool = False
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # oid -> snapshot
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit oid
    messages: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


class FakeHub:
    """``start()`` it, use ``url``; tokens map to "read" or "write"; ``fail_next`` injects errors."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.tokens: dict[str, str] = {}
        self.requests: list[dict[str, Any]] = []
        self.failures: list[list[Any]] = []  # [method, path regex, status, times left]
        self._commits = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- control ----------------------------------------------------------------------------------

    def add_token(self, token: str, permission: str = "write") -> FakeHub:
        self.tokens[token] = permission
        return self

    def fail_next(self, method: str, path_regex: str, status: int, times: int = 1) -> None:
        self.failures.append([method, re.compile(path_regex), status, times])

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                hub._handle(self)

            do_GET = do_POST = do_PUT = do_HEAD = _any  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def commit_count(self, repo_id: str) -> int:
        return len(self.repos[repo_id].commits) - 1  # minus the initial empty commit

    def file(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        repo = self.repos[repo_id]
        return repo.commits[repo.resolve(revision)][path]  # type: ignore[index]

    # -- HTTP -------------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        parsed = urlparse(h.path)
        path, query = unquote(parsed.path), parse_qs(parsed.query)
        self.requests.append({"method": h.command, "path": path, "headers": dict(h.headers), "body_size": len(body)})
        for failure in self.failures:
            if failure[3] > 0 and failure[0] == h.command and failure[1].search(path):
                failure[3] -= 1
                return self._send(h, failure[2], {"error": f"injected {failure[2]}"})
        token = (h.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        permission = self.tokens.get(token)
        with self._lock:
            status, payload, headers = self._route(h.command, path, query, body, permission)
        self._send(h, status, payload, headers)

    def _send(self, h: BaseHTTPRequestHandler, status: int, payload: Any,
              headers: dict[str, str] | None = None) -> None:
        headers = dict(headers or {})
        if isinstance(payload, bytes):
            data = payload
            headers.setdefault("Content-Type", "application/octet-stream")
        else:
            data = json.dumps(payload).encode()
            headers.setdefault("Content-Type", "application/json")
        if status >= 400 and isinstance(payload, dict) and "error" in payload:
            headers.setdefault("X-Error-Message", payload["error"])
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(data)))  # for HEAD too: the size the GET would send
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    def _not_found(self, what: str, code: str) -> tuple[int, Any, dict[str, str]]:
        return 404, {"error": what}, {"X-Error-Code": code, "X-Error-Message": what}

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: bytes,
               permission: str | None) -> tuple[int, Any, dict[str, str]]:
        write = method in ("POST", "PUT") and "/preupload/" not in path and path != "/api/validate-yaml"
        if write and not path.startswith("/lfs-upload/"):
            if permission is None:
                return 401, {"error": "Invalid credentials in Authorization header"}, {}
            if permission != "write":
                return 403, {"error": "You don't have the rights to write to this repository"}, {}
        if method == "POST" and path == "/api/validate-yaml":  # model card metadata check before a commit
            content = json.loads(body).get("content", "")
            return 200, {"errors": [] if content.startswith("---") else ["no metadata"], "warnings": []}, {}
        if method == "POST" and path == "/api/repos/create":
            data = json.loads(body)
            repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}, {}
            repo = Repo(private=bool(data.get("private")))
            empty = self._new_oid()
            repo.commits[empty], repo.refs["main"], repo.messages[empty] = {}, empty, "initial commit"
            self.repos[repo_id] = repo
            return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}, {}
        m = re.match(r"^/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$", path)
        if m and method == "POST":
            if m["repo"] not in self.repos:
                return self._not_found("Repository not found", "RepoNotFound")
            objects = []
            for obj in json.loads(body)["objects"]:
                entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                if obj["oid"] not in self.lfs:
                    entry["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{obj['oid']}", "header": {}}}
                objects.append(entry)
            return 200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}
        m = re.match(r"^/lfs-upload/(?P<oid>[0-9a-f]{64})$", path)
        if m and method == "PUT":
            if hashlib.sha256(body).hexdigest() != m["oid"]:
                return 400, {"error": "sha256 of the uploaded content does not match the oid"}, {}
            self.lfs[m["oid"]] = body
            return 200, {}, {}
        m = re.match(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?P<rest>/.*)?$", path)
        if m:
            repo = self.repos.get(m["repo"])
            if repo is None or (repo.private and permission is None):
                return self._not_found("Repository not found", "RepoNotFound")
            return self._api(method, m["repo"], repo, m["rest"] or "", query, body)
        m = re.match(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$", path)
        if m and method in ("GET", "HEAD"):
            repo = self.repos.get(m["repo"])
            if repo is None:
                return self._not_found("Repository not found", "RepoNotFound")
            oid = repo.resolve(m["rev"])
            if oid is None:
                return self._not_found("Revision not found", "RevisionNotFound")
            data = repo.commits[oid].get(m["file"])
            if data is None:
                return self._not_found("Entry not found", "EntryNotFound")
            etag = hashlib.sha256(data).hexdigest() if self._is_lfs(m["file"], data) else _git_sha(data)
            return 200, data, {"X-Repo-Commit": oid, "ETag": f'"{etag}"', "X-Linked-Etag": f'"{etag}"',
                               "X-Linked-Size": str(len(data))}
        return 404, {"error": f"no route for {method} {path}"}, {}

    def _is_lfs(self, path: str, data: bytes) -> bool:
        return path.endswith(".safetensors") or len(data) > 10 * 1024 * 1024

    def _new_oid(self) -> str:
        self._commits += 1
        return hashlib.sha1(f"commit-{self._commits}".encode()).hexdigest()

    def _siblings(self, snapshot: dict[str, bytes]) -> list[dict[str, Any]]:
        out = []
        for name, data in sorted(snapshot.items()):
            entry: dict[str, Any] = {"rfilename": name, "size": len(data), "blobId": _git_sha(data)}
            if self._is_lfs(name, data):
                entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            out.append(entry)
        return out

    def _api(self, method: str, repo_id: str, repo: Repo, rest: str, query: dict[str, list[str]],
             body: bytes) -> tuple[int, Any, dict[str, str]]:
        if method == "GET" and (rest == "" or rest.startswith("/revision/")):
            oid = repo.resolve(rest.removeprefix("/revision/") or "main")
            if oid is None:
                return self._not_found("Invalid rev id", "RevisionNotFound")
            return 200, {"id": repo_id, "modelId": repo_id, "sha": oid, "private": repo.private, "tags": [],
                         "siblings": self._siblings(repo.commits[oid])}, {}
        m = re.match(r"^/tree/(?P<rev>[^/]+)(?P<sub>/.*)?$", rest)
        if method == "GET" and m:
            oid = repo.resolve(m["rev"])
            if oid is None:
                return self._not_found("Invalid rev id", "RevisionNotFound")
            entries = []
            for sib in self._siblings(repo.commits[oid]):
                entry = {"type": "file", "path": sib["rfilename"], "size": sib["size"], "oid": sib["blobId"]}
                if "lfs" in sib:
                    entry["lfs"] = {"oid": sib["lfs"]["sha256"], "size": sib["size"], "pointerSize": 134}
                entries.append(entry)
            return 200, entries, {}
        m = re.match(r"^/preupload/(?P<rev>.+)$", rest)
        if method == "POST" and m:
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(".safetensors")
                                    or f["size"] > 10 * 1024 * 1024 else "regular", "shouldIgnore": False}
                                   for f in files]}, {}
        m = re.match(r"^/(?P<kind>branch|tag)/(?P<arg>.+)$", rest)
        if method == "POST" and m:
            data = json.loads(body or b"{}")
            # POST /branch/<new branch> {startingPoint}; POST /tag/<revision> {tag}
            name, start_rev = ((m["arg"], data.get("startingPoint") or "main") if m["kind"] == "branch"
                               else (data.get("tag"), m["arg"]))
            if not name or name in repo.refs:
                return 409, {"error": f"{m['kind']} {name} already exists"}, {}
            start = repo.resolve(start_rev)
            if start is None:
                return self._not_found("Invalid rev id", "RevisionNotFound")
            repo.refs[name] = start
            return 200, {}, {}
        m = re.match(r"^/commit/(?P<rev>.+)$", rest)
        if method == "POST" and m:
            return self._commit(repo_id, repo, m["rev"], body, "1" in query.get("create_pr", []))
        return 404, {"error": f"no route for {method} {rest}"}, {}

    def _commit(self, repo_id: str, repo: Repo, revision: str, body: bytes,
                create_pr: bool) -> tuple[int, Any, dict[str, str]]:
        parent = repo.resolve(revision)
        if parent is None:
            return self._not_found("Invalid rev id", "RevisionNotFound")
        snapshot = dict(repo.commits[parent])
        summary = ""
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "header":
                summary = value.get("summary", "")
                if value.get("parentCommit") and value["parentCommit"] != parent:
                    return 412, {"error": "A commit has happened since. Please refresh and try again."}, {}
            elif item["key"] == "file":
                snapshot[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in self.lfs:
                    return 422, {"error": f"LFS object {value['oid']} was never uploaded"}, {}
                snapshot[value["path"]] = self.lfs[value["oid"]]
            elif item["key"] == "deletedFile":
                snapshot.pop(value["path"], None)
        oid = self._new_oid()
        repo.commits[oid], repo.messages[oid] = snapshot, summary
        pr_url = None
        if create_pr:
            number = sum(1 for r in repo.refs if r.startswith("refs/pr/")) + 1
            repo.refs[f"refs/pr/{number}"] = oid
            pr_url = f"{self.url}/{repo_id}/discussions/{number}"
        else:
            repo.refs[revision] = oid
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                     "pullRequestUrl": pr_url}, {}
