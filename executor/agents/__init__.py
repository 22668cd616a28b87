"""Agents that do a task's work: the built-in loop (loop) and its tools (tools), the
OpenAI-compatible client (llm) and tolerant reply parsing (llm_reply), headless agent CLIs run
in the sandbox (external), and the prompts as data (prompts.yaml). Imports `config`,
`monitoring` and `sandbox`; never `costs` (pricing reads the client's usage, not the reverse)."""
