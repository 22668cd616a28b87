"""Money: the price of each model and exact costs in nano-dollars (pricing), and daily
budgets as pure functions over the spend ledger (budget). Imports `config`, `agents.llm_reply`
(the usage type) and `storage`."""
