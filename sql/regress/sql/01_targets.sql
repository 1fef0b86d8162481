-- Targets: kinds, configuration checks, secrets as references only.
\set SHOW_CONTEXT never
BEGIN;
SELECT kind, implemented, batch_size, cost_per_write, cost_unit, default_budget_per_min FROM sync.target_kinds ORDER BY kind;
SELECT sync.create_target('sp_hr', kind => 'graph',
       config => '{"tenant_id": "t1", "client_id": "c1", "site_id": "s1"}', secret => 'env:SP_CLIENT_SECRET');
SELECT name, kind, config, secret_ref, status FROM sync.targets;
-- Other kinds (one without an adapter in the worker yet is accepted with a notice).
SELECT sync.create_target('gh', kind => 'github', config => '{"owner": "acme", "repo": "hr"}');
-- Errors: each has a SQLSTATE, a detail and a hint, and changes nothing.
\x on
SELECT * FROM regress.err($sql$SELECT sync.create_target('x', kind => 'salesforce')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('sp_hr', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s"}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('x', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s"}',
       secret => 'Xy7~q8Q~AbCdEfGhIjKlMnOpQrStUv')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('x', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s"}',
       secret => 'env:not valid')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('x', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s", "client_secret": "abc"}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('x', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s", "auth": {"Password": "abc"}}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('x', kind => 'graph', config => '{"tenant_id": "t"}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('x', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s", "colour": "red"}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('x', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s", "base_url": "javascript:alert(1)"}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('x', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s", "budget_per_min": -5}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('x', kind => 'graph', config => '[1, 2]')$sql$);
-- Every optional key the worker reads is accepted, with its bounds (issue 14).
SELECT sync.create_target('x', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s",
    "max_concurrent_batches": 16, "writes_per_second": 2.5, "time_zone": "Europe/Berlin", "timeout_ms": 100}');
SELECT sync.drop_target('x');
SELECT * FROM regress.err($sql$SELECT sync.create_target('x', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s", "max_concurrent_batches": 17}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('x', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s", "writes_per_second": 0}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('x', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s", "time_zone": "Mars/Olympus"}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('x', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s", "time_zone": 1}')$sql$);
-- Hostile names: quotes, semicolons, spaces, control characters are refused;
-- letters of any script are fine.
SELECT * FROM regress.err($sql$SELECT sync.create_target($$x'; DROP TABLE sync.ledger; --$$, kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s"}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('a"b', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s"}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target(E'tab\tname', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s"}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s"}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target(repeat('x', 64), kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s"}')$sql$);
\x off
SELECT sync.create_target('sp_équipe_東京', kind => 'graph', config => '{"tenant_id": "t", "client_id": "c", "site_id": "s"}');
SELECT count(*) AS targets, count(*) FILTER (WHERE secret_ref IS NULL) AS without_secret FROM sync.targets;
SELECT to_regclass('sync.ledger') IS NOT NULL AS ledger_still_there;
-- alter_target merges configuration; JSON null removes a key.
SELECT sync.alter_target('sp_hr', config => '{"budget_per_min": 6250, "base_url": "http://127.0.0.1:8080/v1.0"}');
SELECT config FROM sync.targets WHERE name = 'sp_hr';
SELECT sync.alter_target('sp_hr', config => '{"base_url": null}', secret => 'file:/run/secrets/sp');
SELECT config, secret_ref FROM sync.targets WHERE name = 'sp_hr';
\x on
SELECT * FROM regress.err($sql$SELECT sync.alter_target('sp_hr', config => '{"site_id": null}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.alter_target('nope', config => '{}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('j', kind => 'jira', config => '{"site": "acme.atlassian.net", "project_key": "ops"}')$sql$);
-- LDAP: ldap:// or ldaps:// only, DNs, a boolean StartTLS, an inline PEM CA, the disable mechanism.
SELECT * FROM regress.err($sql$SELECT sync.create_target('dir', kind => 'ldap', config => '{"url": "https://dir.example.com", "base_dn": "dc=example,dc=com"}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('dir', kind => 'ldap', config => '{"url": "ldap://u:p@dir.example.com", "base_dn": "dc=example,dc=com"}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('dir', kind => 'ldap', config => '{"url": "ldaps://dir.example.com", "base_dn": ""}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('dir', kind => 'ldap', config => '{"url": "ldaps://dir.example.com", "base_dn": "example.com"}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('dir', kind => 'ldap', config => '{"url": "ldap://dir.example.com", "base_dn": "dc=example,dc=com", "starttls": "yes"}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('dir', kind => 'ldap', config => '{"url": "ldaps://dir.example.com", "base_dn": "dc=example,dc=com", "disable_mechanism": "novell"}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('dir', kind => 'ldap', config => '{"url": "ldaps://dir.example.com", "base_dn": "dc=example,dc=com", "ca_pem": "/etc/ssl/ca.pem"}')$sql$);
SELECT * FROM regress.err($sql$SELECT sync.create_target('dir', kind => 'ldap', config => '{"url": "ldaps://dir.example.com", "base_dn": "dc=example,dc=com", "bind_password": "x"}')$sql$);
\x off
SELECT sync.create_target('dir', kind => 'ldap',
  config => jsonb_build_object('url', 'ldap://dir.example.com:1389', 'base_dn', 'dc=example,dc=com', 'starttls', true,
                               'bind_dn', 'cn=syncbridge,dc=example,dc=com', 'disable_mechanism', '389',
                               'disabled_container', 'ou=Disabled', 'ca_pem', E'-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n'),
  secret => 'env:SYNCBRIDGE_SECRET_LDAP');
SELECT sync.drop_target('gh');
ROLLBACK;
