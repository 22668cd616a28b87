"""What drives it all: the executor process and its worker threads (pool), the claim loop
and maintenance (worker), the heartbeat and cancel watch beside a running task (watch), and
executor identity and the leftover-sandbox sweep across a fleet (fleet). The top of
`executor`: nothing in `executor` imports it."""
