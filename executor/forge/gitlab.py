"""GitLab's REST API v4 (gitlab.com or self-hosted at https://host/api/v4), the subset
nightcrew uses: merge requests, their notes, issues, the token's own scopes. A draft is a
merge request whose title starts with "Draft:"; ready = the title without it. The merge
method is the project's setting; `squash` is the one GitLab takes per merge."""

from __future__ import annotations

from typing import Any, Self
from urllib.parse import quote

from executor.forge.base import Access, Comment, Issue, PullRequest, Refused
from executor.forge.http import ForgeError, Http

DRAFT = "Draft: "
DEVELOPER = 30  # access level that may push branches and open merge requests
# detailed_merge_status values, in people's words
WHY = {
    "ci_still_running": "the pipeline is still running",
    "ci_must_pass": "the pipeline must succeed first",
    "not_approved": "the merge request needs approvals",
    "conflict": "the merge request has conflicts",
    "need_rebase": "the branch must be rebased onto the target first",
    "discussions_not_resolved": "open discussions must be resolved",
    "draft_status": "it is still a draft",
    "blocked_status": "it is blocked by another merge request",
    "not_open": "it is not open",
}


class GitLab:
    kind = "gitlab"
    fixes_word = "Closes"

    def __init__(self, api_url: str, project: str, token: str | None) -> None:
        self.api_url, self.project = api_url.rstrip("/"), project
        self.http = Http(self.api_url, {"PRIVATE-TOKEN": token} if token else {}, token)
        self._username: str | None = None

    @property
    def base(self) -> str:
        return f"projects/{quote(self.project, safe='')}"

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def find_pr(self, branch: str) -> PullRequest | None:
        params = {"source_branch": branch, "state": "all"}
        for raw in self.http.pages(f"{self.base}/merge_requests", params, limit=1):
            if raw.get("source_branch") == branch:
                return _mr(raw)
        return None

    def open_pr(self, *, branch: str, base: str, title: str, body: str) -> PullRequest:
        payload = {
            "source_branch": branch,
            "target_branch": base,
            "title": DRAFT + title,
            "description": body,
        }
        return _mr(self.http.request("POST", f"{self.base}/merge_requests", json_body=payload).body)

    def update_pr(self, number: int, *, title: str, body: str) -> PullRequest:
        current = self.get_pr(number)
        payload = {"title": (DRAFT if current.draft else "") + title, "description": body}
        path = f"{self.base}/merge_requests/{number}"
        return _mr(self.http.request("PUT", path, json_body=payload).body)

    def get_pr(self, number: int) -> PullRequest:
        return _mr(self._raw(number))

    def _raw(self, number: int) -> dict[str, Any]:
        body = self.http.request("GET", f"{self.base}/merge_requests/{number}").body
        assert isinstance(body, dict)
        return body

    def mark_ready(self, pr: PullRequest) -> None:
        if not pr.draft:
            return
        title = str(self._raw(pr.number).get("title") or "")
        for prefix in ("Draft: ", "Draft:", "[Draft]", "(Draft)", "WIP: ", "WIP:"):
            title = title.removeprefix(prefix)
        path = f"{self.base}/merge_requests/{pr.number}"
        self.http.request("PUT", path, json_body={"title": title.strip()})

    def merge_pr(self, number: int, *, sha: str, method: str, title: str) -> str:
        """Merge only if the source branch's head is still `sha` (GitLab checks it: 409)."""
        payload: dict[str, Any] = {"sha": sha, "squash": method == "squash"}
        if method == "squash":
            payload["squash_commit_message"] = title
        else:
            payload["merge_commit_message"] = title
        path = f"{self.base}/merge_requests/{number}/merge"
        try:
            raw = self.http.request("PUT", path, json_body=payload).body
        except ForgeError as exc:
            if exc.status in (401, 405, 406, 409, 422):
                raise Refused(self._why(number, exc), status=exc.status) from None
            raise
        if raw.get("state") != "merged":
            raise Refused(f"GitLab did not merge it ({raw.get('state')})")
        return str(raw.get("merge_commit_sha") or raw.get("squash_commit_sha") or raw.get("sha"))

    def _why(self, number: int, exc: ForgeError) -> str:
        """GitLab's 405 says only "Method Not Allowed": the merge request's
        `detailed_merge_status` says why."""
        said = str(exc).split(": ", 1)[-1]
        try:
            status = str(self._raw(number).get("detailed_merge_status") or "")
        except ForgeError:
            return said
        return f"{WHY.get(status, status)} ({said})" if status and status != "mergeable" else said

    def close_pr(self, number: int) -> None:
        path = f"{self.base}/merge_requests/{number}"
        self.http.request("PUT", path, json_body={"state_event": "close"})

    def comments(self, number: int) -> list[Comment]:
        found = [
            Comment(
                int(raw["id"]),
                str((raw.get("author") or {}).get("username", "")),
                str(raw.get("body") or ""),
            )
            for raw in self.http.pages(
                f"{self.base}/merge_requests/{number}/notes", {"sort": "asc"}
            )
            if not raw.get("system")
        ]
        return sorted(found, key=lambda c: c.id)

    def me(self) -> str:
        if self._username is None:
            self._username = str(self.http.request("GET", "user").body.get("username", ""))
        return self._username

    def issue(self, number: int) -> Issue:
        raw = self.http.request("GET", f"{self.base}/issues/{number}").body
        return Issue(
            int(raw["iid"]),
            str(raw.get("title") or ""),
            str(raw.get("description") or ""),
            str(raw.get("web_url") or ""),
        )

    def check_access(self) -> Access:
        """The token needs the `api` scope (merge requests are written through the API) and
        Developer access to the project (push branches, open merge requests)."""
        try:
            scopes = set(
                self.http.request("GET", "personal_access_tokens/self").body.get("scopes", [])
            )
        except ForgeError as exc:
            if exc.status in (401, 403):
                return Access(False, f"the token is not accepted: {exc}", ["api"])
            raise
        if "api" not in scopes:
            return Access(
                False,
                f"the token's scopes are {', '.join(sorted(scopes)) or 'none'}; missing scope: api",
                ["api"],
            )
        try:
            project = self.http.request("GET", self.base).body
        except ForgeError as exc:
            return Access(False, f"the token cannot read {self.project}: {exc}", ["read_api"])
        access = project.get("permissions") or {}
        levels = [
            (access.get(k) or {}).get("access_level") or 0
            for k in ("project_access", "group_access")
        ]
        if max(levels) < DEVELOPER:
            return Access(
                False,
                f"the token's user has no Developer access to {self.project}; missing role: "
                "developer",
                ["developer"],
            )
        return Access(True, f"the token may push to {self.project} and open merge requests")


def _mr(raw: dict[str, Any]) -> PullRequest:
    state = {"opened": "open", "merged": "merged"}.get(str(raw.get("state")), "closed")
    title = str(raw.get("title") or "")
    return PullRequest(
        number=int(raw["iid"]),
        url=str(raw.get("web_url") or ""),
        state=state,  # type: ignore[arg-type]
        head_sha=str(raw.get("sha") or ""),
        draft=bool(raw.get("draft", title.startswith("Draft:"))),
        merge_commit=(raw.get("merge_commit_sha") or raw.get("squash_commit_sha"))
        if state == "merged"
        else None,
    )
