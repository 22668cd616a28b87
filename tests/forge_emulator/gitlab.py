"""GitLab's REST API v4, the subset nightcrew uses, over a local bare repo (see __init__)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.forge_emulator.server import Forged, ForgeServer

USERNAME = "nightcrew-bot"


class GitLabEmulator(ForgeServer):
    auth_header = "PRIVATE-TOKEN"

    def __init__(self, bare: Path, *, project: str = "acme/tools/app", token: str) -> None:
        super().__init__(bare, project=project, token=token)
        self.mrs: dict[int, dict[str, Any]] = {}
        self.issues: dict[int, dict[str, Any]] = {}
        self.notes: dict[int, list[dict[str, Any]]] = {}
        self.next_iid = 1
        self.next_id = 5000
        self.pipeline_running = False  # "Pipelines must succeed" and one is still running
        self.scopes = ["api", "read_repository", "write_repository"]
        self.access_level = 30
        base = "/api/v4/projects/" + re.escape(quote(project, safe=""))
        for method, pattern, handler in [
            ("GET", base, self._project),
            ("GET", "/api/v4/user", lambda **_: Forged(200, {"username": USERNAME, "id": 1})),
            (
                "GET",
                "/api/v4/personal_access_tokens/self",
                lambda **_: Forged(200, {"scopes": self.scopes, "active": True}),
            ),
            ("GET", base + "/merge_requests", self._list),
            ("POST", base + "/merge_requests", self._open),
            ("GET", base + r"/merge_requests/(?P<n>\d+)", self._get),
            ("PUT", base + r"/merge_requests/(?P<n>\d+)", self._update),
            ("PUT", base + r"/merge_requests/(?P<n>\d+)/merge", self._merge),
            ("GET", base + r"/merge_requests/(?P<n>\d+)/notes", self._notes),
            ("GET", base + r"/issues/(?P<n>\d+)", self._issue),
        ]:
            self.route(method, pattern, handler)

    @property
    def api_url(self) -> str:
        return f"{self.root}/api/v4"

    @property
    def web(self) -> str:
        return f"{self.root}/{self.project}"

    def authorized(self, headers: dict[str, str]) -> bool:
        return headers.get("PRIVATE-TOKEN") == self.token

    def add_issue(self, number: int, title: str, body: str) -> str:
        self.issues[number] = {
            "iid": number,
            "title": title,
            "description": body,
            "state": "opened",
            "web_url": f"{self.web}/-/issues/{number}",
        }
        return f"{self.web}/-/issues/{number}"

    def close_by_person(self, n: int) -> None:
        with self.lock:
            mr = self._mr(n)
            mr["state"] = "closed"

    def merge_by_person(self, n: int) -> str:
        with self.lock:
            mr = self._mr(n)
            sha = self.merge_into(mr["target_branch"], mr["sha"], method="merge", title="by hand")
            assert sha is not None
            mr.update(state="merged", merge_commit_sha=sha)
            return sha

    def comment(self, n: int, body: str, username: str = "reviewer") -> None:
        with self.lock:
            self.next_id += 1
            self.notes.setdefault(n, []).append(
                {
                    "id": self.next_id,
                    "body": body,
                    "author": {"username": username},
                    "system": False,
                }
            )

    def _mr(self, n: int | str) -> dict[str, Any]:
        mr = self.mrs[int(n)]
        if mr["state"] == "opened":
            mr["sha"] = self.head_of(mr["source_branch"])
            mr["detailed_merge_status"] = self._status(mr)
        return mr

    def _status(self, mr: dict[str, Any]) -> str:
        if mr["draft"]:
            return "draft_status"
        if self.pipeline_running:
            return "ci_still_running"
        return "mergeable"

    def _project(self, **_: Any) -> Forged:
        return Forged(
            200,
            {
                "id": 7,
                "path_with_namespace": self.project,
                "default_branch": "main",
                "permissions": {
                    "project_access": {"access_level": self.access_level},
                    "group_access": None,
                },
            },
        )

    def _list(self, query: dict[str, str], **_: Any) -> Forged:
        source = query.get("source_branch")
        found = [
            self._mr(n)
            for n in sorted(self.mrs)
            if not source or self.mrs[n]["source_branch"] == source
        ]
        return Forged(200, found)

    def _open(self, body: dict[str, Any], **_: Any) -> Forged:
        source = body.get("source_branch", "")
        if not self.head_of(source):
            return Forged(400, {"message": {"source_branch": ["is invalid"]}})
        if any(m["source_branch"] == source and m["state"] == "opened" for m in self.mrs.values()):
            return Forged(
                409,
                {"message": ["Another open merge request already exists for this source branch"]},
            )
        n = self.next_iid
        self.next_iid += 1
        title = body.get("title", "")
        self.mrs[n] = {
            "id": 100 + n,
            "iid": n,
            "web_url": f"{self.web}/-/merge_requests/{n}",
            "title": title,
            "description": body.get("description"),
            "state": "opened",
            "draft": title.startswith("Draft:"),
            "source_branch": source,
            "target_branch": body.get("target_branch"),
            "sha": self.head_of(source),
            "merge_commit_sha": None,
            "squash_commit_sha": None,
            "detailed_merge_status": "draft_status",
        }
        return Forged(201, self._mr(n))

    def _get(self, n: str, **_: Any) -> Forged:
        if int(n) not in self.mrs:
            return Forged(404, {"message": "404 Not found"})
        return Forged(200, self._mr(n))

    def _update(self, n: str, body: dict[str, Any], **_: Any) -> Forged:
        mr = self._mr(n)
        if "title" in body:
            mr["title"] = body["title"]
            mr["draft"] = body["title"].startswith("Draft:")
        if "description" in body:
            mr["description"] = body["description"]
        if body.get("state_event") == "close" and mr["state"] == "opened":
            mr["state"] = "closed"
        return Forged(200, self._mr(n))

    def _merge(self, n: str, body: dict[str, Any], **_: Any) -> Forged:
        mr = self._mr(n)
        if mr["state"] != "opened" or mr["draft"] or self.pipeline_running:
            return Forged(405, {"message": "405 Method Not Allowed"})
        if body.get("sha") and body["sha"] != mr["sha"]:
            return Forged(
                409, {"message": "SHA does not match HEAD of source branch: " + mr["sha"]}
            )
        method = "squash" if body.get("squash") else "merge"
        sha = self.merge_into(
            mr["target_branch"],
            mr["sha"],
            method=method,
            title=body.get("merge_commit_message")
            or body.get("squash_commit_message")
            or mr["title"],
        )
        if sha is None:
            return Forged(406, {"message": "Branch cannot be merged"})
        mr.update(
            state="merged",
            merge_commit_sha=None if method == "squash" else sha,
            squash_commit_sha=sha if method == "squash" else None,
        )
        return Forged(200, mr)

    def _notes(self, n: str, **_: Any) -> Forged:
        return Forged(200, self.notes.get(int(n), []))

    def _issue(self, n: str, **_: Any) -> Forged:
        if int(n) not in self.issues:
            return Forged(404, {"message": "404 Not found"})
        return Forged(200, self.issues[int(n)])
