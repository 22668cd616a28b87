"""GitHub's REST API (github.com or GitHub Enterprise at https://host/api/v3), the subset
nightcrew uses; shapes from github/rest-api-description. Marking a draft ready for review
has no REST endpoint: it is GraphQL's `markPullRequestReadyForReview`, at `/graphql` beside
the REST base (Enterprise: `/api/graphql`)."""

from __future__ import annotations

from typing import Any, Self

from executor.forge.base import Access, Comment, Issue, PullRequest, Refused
from executor.forge.http import ForgeError, Http, message_of

READY = "mutation($id: ID!) { markPullRequestReadyForReview(input: {pullRequestId: $id}) { clientMutationId } }"  # noqa: E501


class GitHub:
    kind = "github"
    fixes_word = "Fixes"

    def __init__(self, api_url: str, project: str, token: str | None) -> None:
        self.api_url, self.project = api_url.rstrip("/"), project
        self.owner = project.split("/", 1)[0]
        self.http = Http(
            self.api_url,
            {
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
                **({"Authorization": f"Bearer {token}"} if token else {}),
            },
            token,
        )
        self._login: str | None = None

    @property
    def repo_path(self) -> str:
        return f"repos/{self.project}"

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def find_pr(self, branch: str) -> PullRequest | None:
        params = {"head": f"{self.owner}:{branch}", "state": "all"}
        for raw in self.http.pages(f"{self.repo_path}/pulls", params, limit=1):
            if raw.get("head", {}).get("ref") == branch:
                return _pr(raw)
        return None

    def open_pr(self, *, branch: str, base: str, title: str, body: str) -> PullRequest:
        payload = {"title": title, "head": branch, "base": base, "body": body, "draft": True}
        return _pr(self.http.request("POST", f"{self.repo_path}/pulls", json_body=payload).body)

    def update_pr(self, number: int, *, title: str, body: str) -> PullRequest:
        payload = {"title": title, "body": body}
        path = f"{self.repo_path}/pulls/{number}"
        return _pr(self.http.request("PATCH", path, json_body=payload).body)

    def get_pr(self, number: int) -> PullRequest:
        return _pr(self.http.request("GET", f"{self.repo_path}/pulls/{number}").body)

    def mark_ready(self, pr: PullRequest) -> None:
        if not pr.draft:
            return
        answer = self.http.request(
            "POST", self._graphql, json_body={"query": READY, "variables": {"id": pr.ref}}
        )
        errors = answer.body.get("errors") if isinstance(answer.body, dict) else None
        if errors:
            raise Refused(f"could not mark the PR ready for review: {message_of(errors[0])}")

    @property
    def _graphql(self) -> str:
        # https://api.github.com -> /graphql; https://host/api/v3 -> /api/graphql
        if self.api_url.endswith("/api/v3"):
            return self.api_url.removesuffix("/v3") + "/graphql"
        return self.api_url + "/graphql"

    def merge_pr(self, number: int, *, sha: str, method: str, title: str) -> str:
        """Merge only if the PR's head is still `sha` (GitHub checks it: 409 otherwise)."""
        # Our own message: GitHub's default squash message lists the agent's commit
        # messages, whose "Fixes #1" would close issues once on the base.
        payload = {
            "sha": sha,
            "merge_method": method,
            "commit_title": title,
            "commit_message": "Merged by nightcrew after approval.",
        }
        try:
            answer = self.http.request(
                "PUT", f"{self.repo_path}/pulls/{number}/merge", json_body=payload
            )
        except ForgeError as exc:
            if exc.status in (405, 409, 422):  # not mergeable, head moved, invalid
                raise Refused(str(exc).split(": ", 1)[-1], status=exc.status) from None
            raise
        if not answer.body.get("merged"):
            raise Refused(message_of(answer.body) or "GitHub did not merge it")
        return str(answer.body["sha"])

    def close_pr(self, number: int) -> None:
        path = f"{self.repo_path}/pulls/{number}"
        self.http.request("PATCH", path, json_body={"state": "closed"})

    def comments(self, number: int) -> list[Comment]:
        """Review comments and conversation comments on the PR, oldest first."""
        found = []
        for path in (f"pulls/{number}/comments", f"issues/{number}/comments"):
            for raw in self.http.pages(f"{self.repo_path}/{path}"):
                user = (raw.get("user") or {}).get("login", "")
                found.append(Comment(int(raw["id"]), str(user), str(raw.get("body") or "")))
        return sorted(found, key=lambda c: c.id)

    def me(self) -> str:
        if self._login is None:
            self._login = str(self.http.request("GET", "user").body.get("login", ""))
        return self._login

    def issue(self, number: int) -> Issue:
        raw = self.http.request("GET", f"{self.repo_path}/issues/{number}").body
        return Issue(
            int(raw["number"]),
            str(raw.get("title") or ""),
            str(raw.get("body") or ""),
            str(raw.get("html_url") or ""),
        )

    def check_access(self) -> Access:
        """Classic tokens name their scopes (`X-OAuth-Scopes`): `repo` (or `public_repo`)
        is needed. Fine-grained tokens do not: the repo's `permissions.push` tells whether
        the token may push (Contents and Pull requests: write)."""
        try:
            answer = self.http.request("GET", self.repo_path)
        except ForgeError as exc:
            if exc.status in (401, 403, 404):
                return Access(False, f"the token cannot read {self.project}: {exc}", ["repo"])
            raise
        scopes_header = answer.headers.get("X-OAuth-Scopes")
        if scopes_header is not None:
            scopes = {s.strip() for s in scopes_header.split(",") if s.strip()}
            if not scopes & {"repo", "public_repo"}:
                return Access(
                    False,
                    f"the token's scopes are {', '.join(sorted(scopes)) or 'none'}; "
                    "missing scope: repo",
                    ["repo"],
                )
        if not (answer.body.get("permissions") or {}).get("push"):
            return Access(
                False,
                f"the token cannot push to {self.project}; missing permission: "
                "contents: write, pull_requests: write",
                ["contents:write", "pull_requests:write"],
            )
        return Access(True, f"the token may push to {self.project} and open pull requests")


def _pr(raw: dict[str, Any]) -> PullRequest:
    state = "merged" if raw.get("merged") or raw.get("merged_at") else raw.get("state", "open")
    return PullRequest(
        number=int(raw["number"]),
        url=str(raw.get("html_url") or ""),
        state=state,
        head_sha=str((raw.get("head") or {}).get("sha") or ""),
        draft=bool(raw.get("draft")),
        merge_commit=raw.get("merge_commit_sha") if state == "merged" else None,
        ref=str(raw.get("node_id") or ""),
    )
