-- One budget for many workers (issue 21): each exporter takes what it spends
-- from the target's bucket in PostgreSQL, shared by every worker.
\set SHOW_CONTEXT never
BEGIN;
SELECT sync.create_target('sp_budget', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s", "budget_per_min": 600}');
-- 600 a minute: a bucket of 20 (two seconds), refilled at 580 a minute.
-- The first take finds it full: what is needed, and a slice more.
SELECT granted, wait_seconds, per_min FROM sync.budget_take('sp_budget', 5, 10);
SELECT round(tokens::numeric, 1) AS tokens, granted, takes FROM sync.target_budgets;
-- Short: nothing granted, and how long until the need is there.
SELECT granted, wait_seconds BETWEEN 0.2 AND 0.32 AS wait_about_0_3s FROM sync.budget_take('sp_budget', 8);
-- Ten seconds on, the bucket is full again (never more than its 20); a
-- request costlier than it holds goes once it is full, and is paid back
-- before anything else goes.
UPDATE sync.target_budgets SET refreshed_at = refreshed_at - interval '10 seconds';
SELECT granted, wait_seconds FROM sync.budget_take('sp_budget', 50, 10);
SELECT granted, wait_seconds BETWEEN 3.2 AND 3.3 AS wait_about_3_2s FROM sync.budget_take('sp_budget', 1);
SELECT granted, takes FROM sync.target_budgets;
-- The default budget is the kind's.
SELECT sync.create_target('sp_default', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s"}');
SELECT granted, per_min FROM sync.budget_take('sp_default', 2);
-- Bad requests.
SELECT * FROM regress.err($$SELECT sync.budget_take('sp_budget', -1)$$);
SELECT * FROM regress.err($$SELECT sync.budget_take('sp_budget', 'NaN')$$);
SELECT * FROM regress.err($$SELECT sync.budget_take('nowhere', 1)$$);
-- Only syncbridge's roles may take from a budget.
CREATE ROLE regress_budget_nobody;
SET LOCAL ROLE regress_budget_nobody;
SELECT * FROM regress.err($$SELECT sync.budget_take('sp_budget', 1)$$);
RESET ROLE;
-- Dropping the target drops its bucket.
SELECT sync.drop_target('sp_default');
SELECT target FROM sync.target_budgets ORDER BY 1;
ROLLBACK;
