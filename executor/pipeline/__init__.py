"""The pipeline the system enforces on every task: the stages as small functions (stages:
scope, checks as proof, review verdict, risk, proof pack), one task's run through them (job),
and the merge job after approval (merging). Imports everything below it in `executor`."""
