"""Local forges for tests: the subset of GitHub's REST API (and the one GraphQL mutation,
`markPullRequestReadyForReview`) and of GitLab's REST API v4 that nightcrew uses, as real
HTTP servers on 127.0.0.1, merging for real into a local bare git repo.

Shapes: GitHub's from github/rest-api-description (pulls, pulls/merge, issues, repos,
pulls/comments, issues/comments: `number`, `html_url`, `state`, `merged`, `draft`,
`head.{ref,sha}`, `merge_commit_sha`, `node_id`; merge answers 200 `{sha, merged, message}`,
405 "not mergeable" / required status checks, 409 "Head branch was modified"); GitLab's from
its API docs (merge_requests: `iid`, `web_url`, `state` opened|closed|merged, `draft`, `sha`,
`detailed_merge_status`; PUT …/merge with `sha`: 405 not mergeable, 409 SHA mismatch).

    with GitHubEmulator(bare_repo, project="acme/app", token="ghp_…") as gh:
        gh.api_url                      # merge.api_url
        gh.pending_check = "ci"         # merges answer 405 "Required status check…"
        gh.rate_limit_storm(5)          # the next 5 requests: 403 + X-RateLimit-Reset
        gh.close_by_person(1)           # what a person does on the forge

Faults: `rate_limit_storm(n, kind)`, `server_errors(n)`, `echo_token` (error answers quote
the Authorization header, as a badly behaved proxy might). Every request is kept in
`requests` (method, path, status, headers) for assertions."""

from tests.forge_emulator.github import GitHubEmulator
from tests.forge_emulator.gitlab import GitLabEmulator
from tests.forge_emulator.server import Forged

__all__ = ["Forged", "GitHubEmulator", "GitLabEmulator"]
