"""GitHub's REST API, the subset nightcrew uses, over a local bare repo (see __init__)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.forge_emulator.server import Forged, ForgeServer

LOGIN = "nightcrew-bot"


class GitHubEmulator(ForgeServer):
    def __init__(self, bare: Path, *, project: str = "acme/app", token: str) -> None:
        super().__init__(bare, project=project, token=token)
        self.prs: dict[int, dict[str, Any]] = {}
        self.issues: dict[int, dict[str, Any]] = {}
        self.comments: dict[int, list[dict[str, Any]]] = {}
        self.next_number = 1
        self.next_id = 1000
        self.pending_check: str | None = None  # a required status check not reported yet
        self.scopes = "repo, workflow"  # X-OAuth-Scopes of a classic token; None: fine-grained
        self.can_push = True
        repo = "/repos/" + re.escape(project)
        for method, pattern, handler in [
            ("GET", repo, self._repo),
            ("GET", "/user", lambda **_: Forged(200, {"login": LOGIN, "id": 1})),
            ("GET", repo + "/pulls", self._list),
            ("POST", repo + "/pulls", self._open),
            ("GET", repo + r"/pulls/(?P<n>\d+)", self._get),
            ("PATCH", repo + r"/pulls/(?P<n>\d+)", self._patch),
            ("PUT", repo + r"/pulls/(?P<n>\d+)/merge", self._merge),
            ("GET", repo + r"/pulls/(?P<n>\d+)/comments", self._review_comments),
            ("GET", repo + r"/issues/(?P<n>\d+)/comments", lambda **_: Forged(200, [])),
            ("GET", repo + r"/issues/(?P<n>\d+)", self._issue),
            ("POST", "/graphql", self._graphql),
        ]:
            self.route(method, pattern, handler)

    @property
    def api_url(self) -> str:
        return self.root

    @property
    def web(self) -> str:
        return f"{self.root}/{self.project}"

    def authorized(self, headers: dict[str, str]) -> bool:
        return headers.get("Authorization") == f"Bearer {self.token}"

    # --- what people do on the forge -------------------------------------------------------

    def add_issue(self, number: int, title: str, body: str) -> str:
        self.issues[number] = {
            "number": number,
            "title": title,
            "body": body,
            "state": "open",
            "html_url": f"{self.web}/issues/{number}",
            "user": {"login": "someone"},
        }
        self.next_number = max(self.next_number, number + 1)
        return f"{self.web}/issues/{number}"

    def close_by_person(self, n: int) -> None:
        with self.lock:
            pr = self._pr(n)
            pr["head"]["sha"] = self.head_of(pr["head"]["ref"])
            pr["state"], pr["closed_at"] = "closed", "2026-12-05T00:00:00Z"

    def merge_by_person(self, n: int) -> str:
        with self.lock:
            pr = self._pr(n)
            sha = self.merge_into(
                pr["base"]["ref"],
                self.head_of(pr["head"]["ref"]),
                method="merge",
                title="merged by a person",
            )
            assert sha is not None
            self._mark_merged(pr, sha)
            return sha

    def comment(self, n: int, body: str, login: str = "reviewer") -> None:
        with self.lock:
            self.next_id += 1
            self.comments.setdefault(n, []).append(
                {"id": self.next_id, "body": body, "user": {"login": login}, "path": "calc.py"}
            )

    # --- routes ----------------------------------------------------------------------------

    def _pr(self, n: int | str) -> dict[str, Any]:
        pr = self.prs[int(n)]
        if pr["state"] == "open":  # the head follows the branch, as on GitHub
            pr["head"]["sha"] = self.head_of(pr["head"]["ref"])
        return pr

    def _repo(self, **_: Any) -> Forged:
        owner = self.project.split("/")[0]
        body = {
            "full_name": self.project,
            "name": self.project.split("/")[1],
            "owner": {"login": owner},
            "default_branch": "main",
            "permissions": {"admin": False, "push": self.can_push, "pull": True},
        }
        headers = {"X-OAuth-Scopes": self.scopes} if self.scopes is not None else {}
        return Forged(200, body, headers)

    def _list(self, query: dict[str, str], **_: Any) -> Forged:
        head = query.get("head", "")
        branch = head.split(":", 1)[-1]
        found = [
            self._pr(n)
            for n in sorted(self.prs)
            if not head or self.prs[n]["head"]["ref"] == branch
        ]
        if query.get("state", "open") != "all":
            found = [p for p in found if p["state"] == query.get("state", "open")]
        return Forged(200, found)

    def _open(self, body: dict[str, Any], **_: Any) -> Forged:
        head, base = body.get("head", ""), body.get("base", "")
        if not self.head_of(head):
            return Forged(
                422,
                {"message": "Validation Failed", "errors": [{"field": "head", "code": "invalid"}]},
            )
        if any(p["head"]["ref"] == head and p["state"] == "open" for p in self.prs.values()):
            return Forged(422, {"message": f"A pull request already exists for {head}."})
        n = self.next_number
        self.next_number += 1
        self.prs[n] = {
            "number": n,
            "node_id": f"PR_node{n}",
            "html_url": f"{self.web}/pull/{n}",
            "state": "open",
            "locked": False,
            "title": body.get("title", ""),
            "body": body.get("body"),
            "draft": bool(body.get("draft")),
            "merged": False,
            "merged_at": None,
            "merge_commit_sha": None,
            "user": {"login": LOGIN},
            "head": {"ref": head, "sha": self.head_of(head)},
            "base": {"ref": base},
        }
        return Forged(201, self.prs[n])

    def _get(self, n: str, **_: Any) -> Forged:
        if int(n) not in self.prs:
            return Forged(404, {"message": "Not Found"})
        return Forged(200, self._pr(n))

    def _patch(self, n: str, body: dict[str, Any], **_: Any) -> Forged:
        pr = self._pr(n)
        for key in ("title", "body"):
            if key in body:
                pr[key] = body[key]
        if body.get("state") == "closed" and pr["state"] == "open":
            pr["state"] = "closed"
        return Forged(200, pr)

    def _merge(self, n: str, body: dict[str, Any], **_: Any) -> Forged:
        pr = self._pr(n)
        if pr["state"] != "open":
            return Forged(405, {"message": "Pull Request is not mergeable"})
        if pr["draft"]:
            return Forged(405, {"message": "Pull Request is still a draft"})
        if body.get("sha") and body["sha"] != pr["head"]["sha"]:
            return Forged(
                409, {"message": "Head branch was modified. Review and try the merge again."}
            )
        if self.pending_check:
            return Forged(
                405, {"message": f'Required status check "{self.pending_check}" is expected.'}
            )
        method = body.get("merge_method", "merge")
        sha = self.merge_into(
            pr["base"]["ref"],
            pr["head"]["sha"],
            method=method,
            title=body.get("commit_title") or pr["title"],
        )
        if sha is None:
            return Forged(405, {"message": "Pull Request is not mergeable"})
        self._mark_merged(pr, sha)
        return Forged(
            200, {"sha": sha, "merged": True, "message": "Pull Request successfully merged"}
        )

    def _mark_merged(self, pr: dict[str, Any], sha: str) -> None:
        pr.update(
            state="closed", merged=True, merged_at="2026-12-05T00:00:00Z", merge_commit_sha=sha
        )

    def _review_comments(self, n: str, **_: Any) -> Forged:
        return Forged(200, self.comments.get(int(n), []))

    def _issue(self, n: str, **_: Any) -> Forged:
        if int(n) not in self.issues:
            return Forged(404, {"message": "Not Found"})
        return Forged(200, self.issues[int(n)])

    def _graphql(self, body: dict[str, Any], **_: Any) -> Forged:
        if "markPullRequestReadyForReview" not in body.get("query", ""):
            return Forged(200, {"errors": [{"message": "unsupported by the emulator"}]})
        node = (body.get("variables") or {}).get("id")
        for pr in self.prs.values():
            if pr["node_id"] == node:
                pr["draft"] = False
                return Forged(
                    200, {"data": {"markPullRequestReadyForReview": {"clientMutationId": None}}}
                )
        return Forged(
            200,
            {
                "errors": [
                    {"message": f"Could not resolve to a node with the global id of '{node}'"}
                ]
            },
        )
