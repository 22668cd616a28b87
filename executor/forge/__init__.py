"""Forges (GitHub, GitLab): pull requests, their state and comments, issues, and the token's
access, over each forge's documented REST API. The token is read from the host's environment
here, sent only in request headers, and scrubbed from every error (executor/config/redact.py);
it never reaches git, a sandbox, the database or Slack. Used by the merge (the
`pull_request` policy), the forge sync, the front ends (tasks from issue URLs) and the doctor."""
