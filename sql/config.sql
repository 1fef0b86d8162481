-- syncbridge: the configuration surface (targets, definitions, mappings,
-- shards, lifecycle). Every function checks its input and raises an error with
-- a SQLSTATE, a detail and a hint, changing nothing, when something is wrong.
-- Identifiers reaching dynamic SQL are quoted (format %I, regclass output);
-- values are parameters.

-- ---------------------------------------------------------------------------
-- Small helpers
-- ---------------------------------------------------------------------------

-- A name for a target or a definition: 1-63 characters, letters of any
-- script, digits, and _ - . ; no spaces, quotes, semicolons or control
-- characters (names show up in logs, file names and URLs).
CREATE FUNCTION _check_name(what text, name text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF name IS NULL OR name = '' THEN
        RAISE EXCEPTION '% name must not be empty', what
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('A %s needs a name to be referred to by the other sync functions.', what),
                  HINT = 'Choose a name like employees_sp.';
    END IF;
    IF length(name) > 63 OR name !~ '^[[:alnum:]_][[:alnum:]_.-]*$' THEN
        RAISE EXCEPTION 'invalid % name %', what, to_json(name)
            USING ERRCODE = 'invalid_name',
                  DETAIL = 'Names hold 1 to 63 letters (any script), digits, "_", "-" and "."; they start with a letter, digit or "_".',
                  HINT = 'Choose a name like employees_sp.';
    END IF;
    RETURN name;
END $$;

-- A list name: free text as the target shows it, without control characters.
CREATE FUNCTION _check_list_name(list text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF list IS NOT NULL AND (list = '' OR length(list) > 255 OR list ~ '[[:cntrl:]]' OR list <> btrim(list)) THEN
        RAISE EXCEPTION 'invalid list name %', to_json(list)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A list name has 1 to 255 characters, no control characters, no leading or trailing spaces.',
                  HINT = 'Use the list''s display name, e.g. ''Employees EU''.';
    END IF;
    RETURN list;
END $$;

-- One of a fixed set of values.
CREATE FUNCTION _check_choice(what text, value text, allowed text[]) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF value IS NULL OR NOT value = ANY (allowed) THEN
        RAISE EXCEPTION 'invalid %: %', what, coalesce(quote_literal(value), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('%s is one of %s.', upper(left(what, 1)) || substr(what, 2), array_to_string(allowed, ', ')),
                  HINT = format('Pass %s => %L, for example.', what, allowed[1]);
    END IF;
    RETURN value;
END $$;

-- The definition called `name`, or an error listing the definitions.
CREATE FUNCTION _def(name text) RETURNS definitions
LANGUAGE plpgsql STABLE AS $$
DECLARE
    d sync.definitions;
BEGIN
    SELECT * INTO d FROM sync.definitions WHERE definitions.name = _def.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'sync definition % does not exist', coalesce(quote_literal(name), 'NULL')
            USING ERRCODE = 'undefined_object',
                  DETAIL = coalesce('Definitions: ' || (SELECT string_agg(x.name, ', ' ORDER BY x.name) FROM sync.definitions x) || '.',
                                    'There are no definitions yet.'),
                  HINT = 'Create one with sync.define(name, source => ..., target => ...).';
    END IF;
    RETURN d;
END $$;

-- Checks a table resolved from a name given as text (by sync.define, in the
-- caller's search_path and rights): clear errors for a bad name, a missing
-- table or a relation that is not a table.
CREATE FUNCTION _resolve_table(source text, rel regclass, resolve_error text, caller_path text) RETURNS regclass
LANGUAGE plpgsql STABLE AS $$
DECLARE
    kind "char";
BEGIN
    IF resolve_error IS NOT NULL THEN
        RAISE EXCEPTION 'invalid table name %', coalesce(quote_literal(source), 'NULL')
            USING ERRCODE = 'invalid_name',
                  DETAIL = resolve_error,
                  HINT = 'Name the table as in SQL: schema.table, with double quotes around names that need them.';
    END IF;
    IF rel IS NULL THEN
        RAISE EXCEPTION 'table % does not exist', coalesce(quote_literal(source), 'NULL')
            USING ERRCODE = 'undefined_table',
                  DETAIL = format('No relation of that name is visible with search_path = %s.', caller_path),
                  HINT = 'Qualify the name with its schema (hr.employees) and check the spelling and quoting.';
    END IF;
    SELECT relkind INTO kind FROM pg_class WHERE oid = rel;
    IF kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', rel
            USING ERRCODE = 'wrong_object_type',
                  DETAIL = format('Its relkind is %L; only tables (and partitioned tables) can be synced.', kind),
                  HINT = 'Sync the table the view or the materialized view reads from.';
    END IF;
    RETURN rel;
END $$;

-- Whoever makes or enables a definition must be able to read its table
-- (its rows leave for the target). session_user: these functions run as
-- syncbridge_owner, and the identity that logged in is who asks.
CREATE FUNCTION _check_may_read(rel regclass) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT has_table_privilege(session_user, rel, 'SELECT') THEN
        RAISE EXCEPTION 'permission denied: % may not read %', session_user, rel
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'A sync definition sends the rows of its table to a target: whoever defines or enables it must be allowed to read the table.',
                  HINT = format('As the table''s owner: GRANT SELECT ON %s TO %I;', rel, session_user);
    END IF;
END $$;

-- Whoever makes a definition or a mapping bring values back into a table
-- must be allowed to write them there (the role syncbridge_writer then does,
-- for them): UPDATE of the column, or of the table; INSERT and DELETE too
-- for a two-way or pull definition (items created and deleted remotely).
CREATE FUNCTION _check_may_write(rel regclass, direction text, col name DEFAULT NULL) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    missing text;
BEGIN
    SELECT string_agg(p, ', ') INTO missing FROM unnest(
        CASE WHEN col IS NULL THEN ARRAY['UPDATE', 'INSERT', 'DELETE'] ELSE ARRAY['UPDATE'] END) p
     WHERE NOT CASE WHEN col IS NULL THEN has_table_privilege(session_user, rel, p)
                    ELSE has_column_privilege(session_user, rel, col, p) END;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'permission denied: % may not % %', session_user, lower(missing), rel
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = format('Direction %s writes what comes from the target into the table: whoever asks for it must be allowed to (%s).',
                                  direction, missing),
                  HINT = format('As the table''s owner: GRANT %s ON %s TO %I;', missing, rel, session_user);
    END IF;
END $$;

-- A read-only SharePoint field mapped into a column must fit it: a sample
-- of the field's form (as Graph gives it) is converted to the column's type.
CREATE FUNCTION _check_system_field(rel regclass, col name, field text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    sample jsonb;
    what text;
    typ regtype;
    msg text;
BEGIN
    SELECT v.sample, v.what INTO sample, what
      FROM (VALUES ('id', '"12"'::jsonb, 'the item''s id (a whole number, as text)'),
                   ('created', '"2024-01-02T03:04:05Z"', 'a date and time (UTC)'),
                   ('modified', '"2024-01-02T03:04:05Z"', 'a date and time (UTC)'),
                   ('authorlookupid', '"6"', 'a site user''s id (a whole number, as text)'),
                   ('editorlookupid', '"6"', 'a site user''s id (a whole number, as text)'),
                   ('_uiversionstring', '"2.0"', 'a version such as 2.0 (text)')) v(name, sample, what)
     WHERE v.name = lower(field);
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT a.atttypid::regtype INTO typ FROM pg_attribute a WHERE a.attrelid = rel AND a.attname = col;
    BEGIN
        EXECUTE format('SELECT %s', sync._from_json_expr('$1', typ, sync._field_kind(typ), 'UTC')) USING sample;
    EXCEPTION WHEN data_exception OR invalid_text_representation OR datatype_mismatch OR cannot_coerce THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
        RAISE EXCEPTION 'column % (%) cannot take SharePoint''s %', quote_ident(col), format_type(typ, NULL), field
            USING ERRCODE = 'datatype_mismatch',
                  DETAIL = format('%s is %s; converting %s failed: %s.', field, what, sample, msg),
                  HINT = CASE WHEN lower(field) IN ('created', 'modified') THEN 'Pull it into a timestamptz (or text) column.'
                              WHEN lower(field) = '_uiversionstring' THEN 'Pull it into a text (or numeric) column.'
                              ELSE 'Pull it into an integer (or text) column.' END;
    END;
END $$;

-- The columns of a table, for hints.
CREATE FUNCTION _columns_of(rel regclass) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(string_agg(quote_ident(attname), ', ' ORDER BY attnum), '(none)')
      FROM pg_attribute WHERE attrelid = rel AND attnum > 0 AND NOT attisdropped
$$;

-- A column of `rel`, or an error naming the columns that exist.
CREATE FUNCTION _check_column(rel regclass, col text) RETURNS name
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF col IS NULL OR NOT EXISTS (SELECT 1 FROM pg_attribute
                                   WHERE attrelid = rel AND attname = col AND attnum > 0 AND NOT attisdropped) THEN
        RAISE EXCEPTION 'column % of table % does not exist', coalesce(quote_ident(col), 'NULL'), rel
            USING ERRCODE = 'undefined_column',
                  DETAIL = format('%s has the columns %s.', rel, sync._columns_of(rel)),
                  HINT = 'Column names are case-sensitive as stored: pass them without quotes, e.g. ''full_name''.';
    END IF;
    RETURN col::name;
END $$;

-- Checks a row filter, shard predicate or transform against the table
-- (sync._analyze_expression: one expression over the row's columns calling
-- immutable functions and operators of pg_catalog only) and returns it as
-- PostgreSQL deparses it (what is stored and later embedded) and its type.
-- Nothing is evaluated.
CREATE FUNCTION _check_row_expression(rel regclass, expr text, what text, want_boolean boolean,
                                      OUT expression text, OUT typ regtype)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET standard_conforming_strings = on AS $$
DECLARE
    msg text;
    det text;
BEGIN
    BEGIN
        SELECT a.expression, a.type_oid::regtype INTO expression, typ FROM sync._analyze_expression(rel::oid, expr, what) a;
    EXCEPTION
        WHEN syntax_error THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL;
            RAISE EXCEPTION 'invalid %', what
                USING ERRCODE = 'syntax_error',
                      DETAIL = CASE WHEN msg LIKE 'invalid %' THEN det ELSE format('%s does not parse: %s.', upper(left(what, 1)) || substr(what, 2), msg) END,
                      HINT = format('A %s is one SQL expression over the source row''s columns, e.g. region = ''EU'' AND NOT secret.', what);
        WHEN insufficient_privilege OR feature_not_supported THEN
            RAISE;   -- syncbridge's own refusals carry their detail and hint
        WHEN undefined_column THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
            RAISE EXCEPTION 'invalid %: %', what, msg
                USING ERRCODE = 'undefined_column',
                      DETAIL = format('%s has the columns %s.', rel, sync._columns_of(rel)),
                      HINT = format('A %s may use the columns of %s only.', what, rel);
        WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
            RAISE EXCEPTION 'invalid %: %', what, msg
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = format('The %s does not work against %s.', what, rel),
                      HINT = format('Try it first: SELECT (%s) FROM %s LIMIT 5;', expr, rel);
    END;
    IF want_boolean AND typ IS DISTINCT FROM 'boolean'::regtype THEN
        RAISE EXCEPTION 'invalid %: it is of type %, not boolean', what, typ
            USING ERRCODE = 'datatype_mismatch',
                  DETAIL = format('A %s decides whether a row is taken, so it must be true or false.', what),
                  HINT = 'Compare the value, e.g. region = ''EU'' or shareable IS TRUE.';
    END IF;
END $$;

-- Marks a definition changed: compiled SQL is rebuilt on next use.
CREATE FUNCTION _touch(def_id int) RETURNS void
LANGUAGE sql AS $$
    UPDATE sync.definitions SET revision = revision + 1, updated_at = now() WHERE id = def_id;
$$;

-- ---------------------------------------------------------------------------
-- Targets
-- ---------------------------------------------------------------------------

-- Validates a target's configuration for its kind.
CREATE FUNCTION _check_target_config(kind text, config jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    k sync.target_kinds;
    missing text[];
    unknown text[];
    kv record;
    rule text;
    ok boolean;
BEGIN
    SELECT * INTO k FROM sync.target_kinds WHERE target_kinds.kind = _check_target_config.kind;
    IF config IS NULL OR jsonb_typeof(config) <> 'object' THEN
        RAISE EXCEPTION 'target configuration must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('Got %s.', coalesce(jsonb_typeof(config), 'NULL')),
                  HINT = format('For kind %s: config => ''{%s}''.', kind,
                                (SELECT string_agg(format('"%s": "..."', r), ', ') FROM unnest(k.required_config) r));
    END IF;
    PERFORM sync._check_config(config);
    SELECT array_agg(r ORDER BY r) INTO missing
      FROM unnest(k.required_config) r WHERE NOT config ? r OR config->>r = '' OR jsonb_typeof(config->r) = 'null';
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'target configuration lacks %', array_to_string(missing, ', ')
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('A %s target needs %s.', kind, array_to_string(k.required_config, ', ')),
                  HINT = format('Add them to config, e.g. ''{"%s": "..."}''.', missing[1]);
    END IF;
    SELECT array_agg(c ORDER BY c) INTO unknown
      FROM jsonb_object_keys(config) c WHERE NOT c = ANY (k.required_config || k.optional_config);
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'unknown target configuration key %', array_to_string(unknown, ', ')
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('A %s target takes %s.', kind, array_to_string(k.required_config || k.optional_config, ', ')),
                  HINT = 'Check the spelling; secrets never go into config (use secret => ''env:NAME'').';
    END IF;
    -- Each value: its type and bounds (one rule per key name, whatever the kind).
    FOR kv IN SELECT e.key, e.value FROM jsonb_each(config) e ORDER BY e.key LOOP
        rule := CASE
            -- LDAP (issue 20): its URL, DNs, TLS switch and CA, the disable mechanism
            WHEN kind = 'ldap' AND kv.key = 'url' THEN 'ldap_url'
            WHEN kind = 'ldap' AND kv.key IN ('base_dn', 'bind_dn', 'disabled_container', 'placeholder_member') THEN 'dn'
            WHEN kind = 'ldap' AND kv.key = 'starttls' THEN 'boolean'
            WHEN kind = 'ldap' AND kv.key = 'ca_pem' THEN 'pem'
            WHEN kind = 'ldap' AND kv.key = 'disable_mechanism' THEN 'choice ppolicy ad 389'
            WHEN kv.key IN ('base_url', 'authority_url', 'url') THEN 'url'
            WHEN kv.key = 'budget_per_min' THEN 'number 1 1000000'
            WHEN kv.key = 'writes_per_second' THEN 'number 0.01 10000'
            WHEN kv.key = 'timeout_ms' THEN 'integer 100 600000'
            WHEN kv.key = 'max_concurrent_batches' THEN 'integer 1 16'
            WHEN kv.key = 'time_zone' THEN 'timezone'
            WHEN kv.key = 'pull_interval' THEN 'number 1 86400'
            -- GitHub (issue 19): its secondary limits, the close reason, a label name
            WHEN kv.key IN ('content_per_min', 'content_per_hour') THEN 'integer 1 100000'
            WHEN kv.key = 'close_reason' THEN 'choice not_planned completed'
            WHEN kv.key = 'marker_label' THEN 'label'
            WHEN kind = 'jira' AND kv.key = 'project_key' THEN 'jira_project'
            WHEN kind = 'jira' AND kv.key = 'site' THEN 'host'
            WHEN kind = 'jira' AND kv.key = 'email' THEN 'email'
            WHEN kv.key = 'on_delete' THEN 'choice trash archive'
            -- Webhooks (issue 20): requests at once, and a batch's limits
            WHEN kv.key = 'concurrency' THEN 'integer 1 64'
            WHEN kv.key = 'batch_max_events' THEN 'integer 1 100'
            WHEN kv.key = 'batch_max_bytes' THEN 'integer 1024 10485760'
            ELSE 'text' END;
        ok := CASE split_part(rule, ' ', 1)
            WHEN 'ldap_url' THEN jsonb_typeof(kv.value) = 'string' AND length(kv.value #>> '{}') <= 300
                            AND (kv.value #>> '{}') ~ '^ldaps?://([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?/?$'
            WHEN 'url' THEN jsonb_typeof(kv.value) = 'string' AND length(kv.value #>> '{}') <= 2000
                            AND (kv.value #>> '{}') ~ '^https?://([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?(/[A-Za-z0-9._~!$&''()*+,;=:@%/-]*)?$'
            WHEN 'number' THEN jsonb_typeof(kv.value) = 'number'
                            AND (kv.value #>> '{}')::numeric BETWEEN split_part(rule, ' ', 2)::numeric AND split_part(rule, ' ', 3)::numeric
            WHEN 'timezone' THEN jsonb_typeof(kv.value) = 'string' AND length(kv.value #>> '{}') <= 100
                            AND EXISTS (SELECT 1 FROM pg_catalog.pg_timezone_names z WHERE z.name = kv.value #>> '{}')
            WHEN 'choice' THEN jsonb_typeof(kv.value) = 'string' AND (kv.value #>> '{}') = ANY (string_to_array(substr(rule, 8), ' '))
            WHEN 'label' THEN jsonb_typeof(kv.value) = 'string' AND (kv.value #>> '{}') ~ '^[^,[:cntrl:]]{1,50}$' AND (kv.value #>> '{}') = btrim(kv.value #>> '{}')
            WHEN 'jira_project' THEN jsonb_typeof(kv.value) = 'string' AND (kv.value #>> '{}') ~ '^[A-Z][A-Z0-9_]{1,254}$'
            WHEN 'host' THEN jsonb_typeof(kv.value) = 'string' AND length(kv.value #>> '{}') <= 255
                            AND (kv.value #>> '{}') ~ '^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$'
            WHEN 'email' THEN jsonb_typeof(kv.value) = 'string' AND length(kv.value #>> '{}') <= 254
                            AND (kv.value #>> '{}') ~ '^[^@[:space:][:cntrl:]]+@[^@[:space:][:cntrl:]]+$'
            WHEN 'ldap_url' THEN jsonb_typeof(kv.value) = 'string' AND length(kv.value #>> '{}') <= 2000
                            AND (kv.value #>> '{}') ~ '^ldaps?://([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?/?$'
            WHEN 'dn' THEN jsonb_typeof(kv.value) = 'string' AND length(kv.value #>> '{}') <= 1000
                            AND (kv.value #>> '{}') ~ '^[A-Za-z][A-Za-z0-9-]*=[^=]' AND (kv.value #>> '{}') !~ '[[:cntrl:]]'
                            AND (kv.value #>> '{}') = btrim(kv.value #>> '{}')
            WHEN 'boolean' THEN jsonb_typeof(kv.value) = 'boolean'
            WHEN 'pem' THEN jsonb_typeof(kv.value) = 'string' AND length(kv.value #>> '{}') <= 65536
                            AND (kv.value #>> '{}') ~ '^\s*-----BEGIN CERTIFICATE-----' AND (kv.value #>> '{}') ~ '-----END CERTIFICATE-----\s*$'
            WHEN 'integer' THEN jsonb_typeof(kv.value) = 'number' AND (kv.value #>> '{}') ~ '^[0-9]{1,9}$'
                            AND (kv.value #>> '{}')::numeric BETWEEN split_part(rule, ' ', 2)::numeric AND split_part(rule, ' ', 3)::numeric
            ELSE jsonb_typeof(kv.value) = 'string' AND (kv.value #>> '{}') <> '' AND length(kv.value #>> '{}') <= 500
                 AND (kv.value #>> '{}') !~ '[[:cntrl:]]'
        END;
        IF NOT ok THEN
            -- The value is not shown: a URL refused for its user info may hold a password.
            RAISE EXCEPTION 'invalid value for configuration key %', kv.key
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = CASE split_part(rule, ' ', 1)
                          WHEN 'url' THEN format('%s is an absolute http:// or https:// URL without user name, password, query or fragment.', kv.key)
                          WHEN 'ldap_url' THEN 'url is ldap://host[:port] or ldaps://host[:port], without user name, DN, attributes or filter.'
                          WHEN 'dn' THEN format('%s is a distinguished name such as "dc=example,dc=com" (attribute=value pairs separated by commas), without control characters.', kv.key)
                          WHEN 'boolean' THEN format('%s is true or false (a JSON boolean).', kv.key)
                          WHEN 'pem' THEN 'ca_pem is the text of one or more PEM certificates (-----BEGIN CERTIFICATE----- … -----END CERTIFICATE-----), inline: no file path is ever read.'
                          WHEN 'number' THEN format('%s is a number from %s to %s.', kv.key, split_part(rule, ' ', 2), split_part(rule, ' ', 3))
                          WHEN 'integer' THEN format('%s is a whole number from %s to %s.', kv.key, split_part(rule, ' ', 2), split_part(rule, ' ', 3))
                          WHEN 'timezone' THEN format('%s is the name of a time zone PostgreSQL knows (pg_timezone_names).', kv.key)
                          WHEN 'choice' THEN format('%s is one of %s.', kv.key, replace(substr(rule, 8), ' ', ', '))
                          WHEN 'label' THEN format('%s is a label name of 1 to 50 characters, without commas, control characters or surrounding spaces.', kv.key)
                          WHEN 'jira_project' THEN 'project_key is a Jira project key: an upper-case letter, then upper-case letters, digits or underscores (at least two characters).'
                          WHEN 'host' THEN 'site is the Jira site''s host name, e.g. "acme.atlassian.net" (no scheme, no path).'
                          WHEN 'email' THEN 'email is the e-mail address of the Atlassian account the API token belongs to.'
                          ELSE format('%s is a non-empty string of at most 500 characters, without control characters.', kv.key) END,
                      HINT = CASE kv.key
                          WHEN 'budget_per_min' THEN format('The default for %s is %s %s a minute.', kind, k.default_budget_per_min, k.cost_unit)
                          WHEN 'pull_interval' THEN 'Seconds between two pulls of a list of a two-way definition; the default is 60.'
                          WHEN 'time_zone' THEN 'The site''s time zone as its regional settings show it, e.g. "time_zone": "Europe/Berlin": SELECT name FROM pg_timezone_names;'
                          WHEN 'base_url' THEN 'Example: "base_url": "https://graph.microsoft.com/v1.0". Secrets never go into a URL: use secret => ''env:NAME''.'
                          WHEN 'concurrency' THEN 'Requests in flight at once (events of different keys); the default is 4.'
                          WHEN 'batch_max_events' THEN 'Batched delivery: at most batch_max_events events (default 1: one event a request) and batch_max_bytes bytes (default 262144) in one request.'
                          WHEN 'batch_max_bytes' THEN 'Batched delivery: at most batch_max_events events (default 1: one event a request) and batch_max_bytes bytes (default 262144) in one request.'
                          WHEN 'url' THEN CASE WHEN kind = 'ldap' THEN 'Example: "url": "ldaps://ldap.example.com:636" (or ldap:// with "starttls": true). The bind password is the secret: secret => ''env:NAME''.'
                                               ELSE 'The receiver''s endpoint, e.g. "url": "https://hooks.example.com/syncbridge". Requests are signed with the target''s whsec_ secret (secret => ''env:NAME''): never put a token into the URL.' END
                          WHEN 'base_dn' THEN 'Example: "base_dn": "dc=example,dc=com" (bind_dn and placeholder_member are full DNs; disabled_container is relative to base_dn, e.g. "ou=Disabled").'
                          WHEN 'disable_mechanism' THEN 'ppolicy (OpenLDAP pwdAccountLockedTime, the default), ad (userAccountControl bit 0x2) or 389 (nsAccountLock).'
                          WHEN 'ca_pem' THEN 'Paste the CA certificate''s PEM text into the configuration, e.g. jsonb_build_object(''ca_pem'', pg_read_file(...)) as a superuser.'
                          ELSE 'See the README''s configuration table for the kind.' END;
        END IF;
    END LOOP;
    RETURN config;
END $$;

-- Every write of a target is checked, whoever makes it (the functions
-- below check first, to say more; a superuser's UPDATE is checked too).
CREATE FUNCTION _targets_check() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM sync._check_target_config(NEW.kind, NEW.config);
    IF NEW.secret_ref IS NOT NULL THEN
        PERFORM sync._check_secret_ref(NEW.secret_ref);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER targets_check BEFORE INSERT OR UPDATE OF kind, config, secret_ref ON targets
    FOR EACH ROW EXECUTE FUNCTION _targets_check();

CREATE FUNCTION create_target(name text, kind text, config jsonb DEFAULT '{}', secret text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM sync._check_name('target', name);
    IF NOT EXISTS (SELECT 1 FROM sync.target_kinds k WHERE k.kind = create_target.kind) THEN
        RAISE EXCEPTION 'unknown target kind %', coalesce(quote_literal(kind), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('Known kinds: %s.', (SELECT string_agg(k.kind, ', ' ORDER BY k.kind) FROM sync.target_kinds k)),
                  HINT = 'SharePoint and Teams lists are kind => ''graph''.';
    END IF;
    IF EXISTS (SELECT 1 FROM sync.targets t WHERE t.name = create_target.name) THEN
        RAISE EXCEPTION 'target % already exists', quote_literal(name)
            USING ERRCODE = 'duplicate_object',
                  DETAIL = 'Target names are unique.',
                  HINT = 'Change it with sync.alter_target(), or choose another name.';
    END IF;
    IF secret IS NOT NULL THEN
        PERFORM sync._check_secret_ref(secret);
    END IF;
    PERFORM sync._check_target_config(kind, config);
    IF NOT (SELECT implemented FROM sync.target_kinds k WHERE k.kind = create_target.kind) THEN
        RAISE NOTICE 'the worker has no adapter for kind % yet; definitions on this target cannot be enabled', kind;
    END IF;
    INSERT INTO sync.targets (name, kind, config, secret_ref) VALUES (name, kind, config, secret);
    RETURN name;
END $$;

CREATE FUNCTION alter_target(name text, config jsonb DEFAULT NULL, secret text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    t sync.targets;
    merged jsonb;
BEGIN
    SELECT * INTO t FROM sync.targets x WHERE x.name = alter_target.name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'target % does not exist', coalesce(quote_literal(name), 'NULL')
            USING ERRCODE = 'undefined_object',
                  DETAIL = coalesce('Targets: ' || (SELECT string_agg(x.name, ', ' ORDER BY x.name) FROM sync.targets x) || '.', 'There are no targets yet.'),
                  HINT = 'Create one with sync.create_target(name, kind => ..., config => ...).';
    END IF;
    IF config IS NOT NULL AND jsonb_typeof(config) <> 'object' THEN
        PERFORM sync._check_target_config(t.kind, config);  -- raises the shape error
    END IF;
    -- Keys set to JSON null are removed.
    merged := jsonb_strip_nulls(t.config || coalesce(config, '{}'));
    PERFORM sync._check_target_config(t.kind, merged);
    IF secret IS NOT NULL THEN
        PERFORM sync._check_secret_ref(secret);
    END IF;
    UPDATE sync.targets x
       SET config = merged, secret_ref = coalesce(alter_target.secret, x.secret_ref), updated_at = now()
     WHERE x.name = alter_target.name;
    UPDATE sync.definitions d SET revision = revision + 1 WHERE d.target = alter_target.name;
    RETURN name;
END $$;

CREATE FUNCTION drop_target(name text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    users text;
BEGIN
    PERFORM 1 FROM sync.targets x WHERE x.name = drop_target.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'target % does not exist', coalesce(quote_literal(name), 'NULL')
            USING ERRCODE = 'undefined_object', DETAIL = 'Nothing was dropped.', HINT = 'SELECT name FROM sync.targets;';
    END IF;
    SELECT string_agg(d.name, ', ' ORDER BY d.name) INTO users FROM sync.definitions d WHERE d.target = drop_target.name;
    IF users IS NOT NULL THEN
        RAISE EXCEPTION 'target % is used by definitions', quote_literal(name)
            USING ERRCODE = 'dependent_objects_still_exist',
                  DETAIL = format('Definitions on it: %s.', users),
                  HINT = 'Drop those definitions first with sync.undefine(name).';
    END IF;
    DELETE FROM sync.targets x WHERE x.name = drop_target.name;
    RETURN name;
END $$;

-- ---------------------------------------------------------------------------
-- Definitions
-- ---------------------------------------------------------------------------

-- The key columns of `rel`: checked to exist, be NOT NULL and be covered by
-- a unique index; defaults to the primary key.
CREATE FUNCTION _check_key(rel regclass, key text[]) RETURNS name[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    cols name[];
    c text;
    nullable text;
BEGIN
    IF key IS NULL OR cardinality(key) = 0 THEN
        SELECT array_agg(a.attname ORDER BY k.ord) INTO cols
          FROM pg_index i
          CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = rel AND i.indisprimary;
        IF cols IS NULL THEN
            RAISE EXCEPTION 'table % has no primary key', rel
                USING ERRCODE = 'invalid_table_definition',
                      DETAIL = 'syncbridge identifies rows by a key: the primary key unless key => names other columns.',
                      HINT = format('Add a primary key, or pass key => ''{col}'' naming the columns of a unique index on %s.', rel);
        END IF;
        RETURN cols;
    END IF;
    FOREACH c IN ARRAY key LOOP
        cols := cols || sync._check_column(rel, c);
    END LOOP;
    IF cardinality(cols) <> (SELECT count(DISTINCT x) FROM unnest(cols) x) THEN
        RAISE EXCEPTION 'key names a column twice'
            USING ERRCODE = 'duplicate_column', DETAIL = format('key => %L', key), HINT = 'Name each key column once.';
    END IF;
    -- A unique, valid, non-partial, non-expression index whose columns are all key columns.
    IF NOT EXISTS (
        SELECT 1 FROM pg_index i
         WHERE i.indrelid = rel AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
           AND (SELECT bool_and(a.attname = ANY (cols))
                  FROM unnest(i.indkey) k(attnum) JOIN pg_attribute a ON a.attrelid = rel AND a.attnum = k.attnum)
    ) THEN
        RAISE EXCEPTION 'key columns % are not unique in %', array_to_string(cols, ', '), rel
            USING ERRCODE = 'invalid_column_reference',
                  DETAIL = 'No primary key or unique index covers them, so two rows could share a key.',
                  HINT = format('CREATE UNIQUE INDEX ON %s (%s); or choose other key columns.', rel,
                                (SELECT string_agg(quote_ident(x), ', ') FROM unnest(cols) x));
    END IF;
    SELECT string_agg(quote_ident(a.attname), ', ') INTO nullable
      FROM pg_attribute a WHERE a.attrelid = rel AND a.attname = ANY (cols) AND NOT a.attnotnull;
    IF nullable IS NOT NULL THEN
        RAISE EXCEPTION 'key columns must be NOT NULL: % may be null', nullable
            USING ERRCODE = 'invalid_column_reference',
                  DETAIL = 'A unique index allows many NULLs, so NULL keys would not identify a row.',
                  HINT = format('ALTER TABLE %s ALTER COLUMN %s SET NOT NULL;', rel, nullable);
    END IF;
    RETURN cols;
END $$;

-- Checks that the table's replica identity lets the publication carry its
-- key columns; a table without one would refuse UPDATE and DELETE once published.
CREATE FUNCTION _check_replica_identity(rel regclass, key name[]) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    ident "char";
    ri_cols name[];
BEGIN
    SELECT relreplident INTO ident FROM pg_class WHERE oid = rel;
    IF ident = 'n' OR (ident = 'd' AND NOT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = rel AND indisprimary)) THEN
        RAISE EXCEPTION 'table % has no replica identity', rel
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Once published, UPDATE and DELETE on a table without a replica identity fail; syncbridge will not do that to your table.',
                  HINT = format('ALTER TABLE %s REPLICA IDENTITY USING INDEX <a unique index on the key>; (or add a primary key)', rel);
    END IF;
    IF ident IN ('d', 'i') THEN
        SELECT array_agg(a.attname) INTO ri_cols
          FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) k(attnum)
          JOIN pg_attribute a ON a.attrelid = rel AND a.attnum = k.attnum
         WHERE i.indrelid = rel AND CASE WHEN ident = 'd' THEN i.indisprimary ELSE i.indisreplident END;
        IF NOT (ri_cols @> key AND key @> ri_cols) THEN
            RAISE NOTICE 'the key of % (%) differs from its replica identity (%)', rel,
                array_to_string(key, ', '), array_to_string(ri_cols, ', ')
                USING HINT = 'A change of the key columns is then seen as a new row, and the old item is only removed by a reconcile; '
                             'ALTER TABLE ... REPLICA IDENTITY USING INDEX <the key''s index> avoids that.';
        END IF;
    END IF;
END $$;

-- The table name is resolved here, as the caller, in the caller's
-- search_path (a name is never looked up with more rights than its giver
-- has); everything else is sync._define's. Every name in this body is
-- schema-qualified: it runs with the caller's search_path.
-- A definition's delete_grace: only for kinds that can disable an item.
CREATE FUNCTION _check_delete_grace(target text, grace interval) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    k sync.target_kinds;
BEGIN
    SELECT tk.* INTO k FROM sync.targets t JOIN sync.target_kinds tk ON tk.kind = t.kind WHERE t.name = target;
    IF NOT k.disable THEN
        RAISE EXCEPTION 'target % cannot disable an item before deleting it', quote_literal(target)
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = format('Its kind (%s) has no disabled state (sync.target_kinds.disable = false): a delete removes the item at once.', k.kind),
                  HINT = 'Leave delete_grace out, or use approval => ''deletes'' to hold deletes for a person.';
    END IF;
    IF grace < interval '0' OR grace > interval '10 years' THEN
        RAISE EXCEPTION 'invalid delete_grace %', grace
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'delete_grace is from 0 (disable, then delete at once) to 10 years.',
                  HINT = 'For example delete_grace => ''30 days''.';
    END IF;
END $$;

CREATE FUNCTION define(
    name text,
    source text,
    target text,
    list text DEFAULT NULL,
    key text[] DEFAULT NULL,
    direction text DEFAULT 'push',
    conflict text DEFAULT 'source_wins',
    row_filter text DEFAULT NULL,
    approval text DEFAULT 'none',
    delete_scope text DEFAULT 'provisioned',
    max_attempts int DEFAULT NULL,
    inbound_deletes text DEFAULT 'approve',
    inbound_inserts text DEFAULT 'apply',
    delete_grace interval DEFAULT NULL
) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    rel pg_catalog.regclass;
    err pg_catalog.text;
BEGIN
    BEGIN
        -- (to_regclass returns NULL for a name it cannot parse on 16 and
        -- later, an error on 15: parse_ident tells a bad name on both)
        PERFORM pg_catalog.parse_ident(source);
        rel := pg_catalog.to_regclass(source);
    EXCEPTION WHEN invalid_name OR syntax_error OR invalid_parameter_value OR feature_not_supported OR name_too_long THEN
        GET STACKED DIAGNOSTICS err = MESSAGE_TEXT;
    END;
    RETURN sync._define(name, source, rel, err, pg_catalog.current_setting('search_path'), target, list, key, direction,
                        conflict, row_filter, approval, delete_scope, max_attempts, inbound_deletes, inbound_inserts,
                        delete_grace);
END $$;

CREATE FUNCTION _define(
    name text,
    source text,
    rel regclass,
    resolve_error text,
    caller_path text,
    target text,
    list text,
    key text[],
    direction text,
    conflict text,
    row_filter text,
    approval text,
    delete_scope text,
    max_attempts int,
    inbound_deletes text,
    inbound_inserts text,
    delete_grace interval
) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    keycols name[];
    new_id int;
    filter_sql text;
BEGIN
    PERFORM sync._check_name('definition', name);
    IF EXISTS (SELECT 1 FROM sync.definitions d WHERE d.name = _define.name) THEN
        RAISE EXCEPTION 'sync definition % already exists', quote_literal(name)
            USING ERRCODE = 'duplicate_object',
                  DETAIL = 'Definition names are unique.',
                  HINT = 'Choose another name, or remove the old one with sync.undefine(name).';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM sync.targets t WHERE t.name = _define.target) THEN
        RAISE EXCEPTION 'target % does not exist', coalesce(quote_literal(target), 'NULL')
            USING ERRCODE = 'undefined_object',
                  DETAIL = coalesce('Targets: ' || (SELECT string_agg(t.name, ', ' ORDER BY t.name) FROM sync.targets t) || '.', 'There are no targets yet.'),
                  HINT = 'Create it first with sync.create_target(name, kind => ''graph'', config => ...).';
    END IF;
    rel := sync._resolve_table(source, rel, resolve_error, caller_path);
    PERFORM sync._check_may_read(rel);
    keycols := sync._check_key(rel, key);
    PERFORM sync._check_replica_identity(rel, keycols);
    PERFORM sync._check_list_name(list);
    PERFORM sync._check_choice('direction', direction, ARRAY['push', 'pull', 'both']);
    PERFORM sync._check_choice('conflict', conflict, ARRAY['source_wins', 'target_wins', 'newest_wins', 'manual']);
    PERFORM sync._check_choice('approval', approval, ARRAY['none', 'deletes', 'all']);
    PERFORM sync._check_choice('delete_scope', delete_scope, ARRAY['provisioned', 'all', 'none']);
    PERFORM sync._check_choice('inbound_deletes', inbound_deletes, ARRAY['apply', 'approve', 'ignore']);
    PERFORM sync._check_choice('inbound_inserts', inbound_inserts, ARRAY['apply', 'approve', 'ignore']);
    IF direction <> 'push' THEN
        -- What comes back is written into the table: whoever makes it so
        -- must be allowed to.
        PERFORM sync._check_may_write(rel, direction);
        IF (SELECT k.pull FROM sync.target_kinds k JOIN sync.targets t ON t.kind = k.kind WHERE t.name = _define.target) = 'none' THEN
            RAISE EXCEPTION 'target % cannot be read back', quote_literal(target)
                USING ERRCODE = 'feature_not_supported',
                      DETAIL = format('Its kind (%s) has no way to read changes (sync.target_kinds.pull = none).',
                                      (SELECT t.kind FROM sync.targets t WHERE t.name = _define.target)),
                      HINT = 'Use direction => ''push''.';
        END IF;
    END IF;
    IF nullif(btrim(row_filter), '') IS NOT NULL THEN
        filter_sql := (sync._check_row_expression(rel, row_filter, 'row filter', true)).expression;
    END IF;
    IF delete_grace IS NOT NULL THEN
        PERFORM sync._check_delete_grace(target, delete_grace);
    END IF;
    IF max_attempts IS NOT NULL AND max_attempts NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'invalid max_attempts %', max_attempts
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'max_attempts is between 1 and 1000.',
                  HINT = format('The default is %s (setting sync.max_attempts).', sync._setting('max_attempts'));
    END IF;
    INSERT INTO sync.definitions (name, source_rel, target, list, key_columns, direction, conflict, row_filter,
                                  approval, delete_scope, max_attempts, inbound_deletes, inbound_inserts, delete_grace, source_name)
    VALUES (name, rel, target, list, keycols, direction, conflict, filter_sql,
            approval, delete_scope, coalesce(max_attempts, sync._setting('max_attempts')::int), inbound_deletes, inbound_inserts,
            delete_grace,
            format('%I.%I', (SELECT n.nspname FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid WHERE c.oid = rel),
                            (SELECT c.relname FROM pg_class c WHERE c.oid = rel)))
    RETURNING id INTO new_id;
    PERFORM sync._publication_refresh();
    RETURN new_id;
END $$;

CREATE FUNCTION undefine(name text, force boolean DEFAULT false) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    d sync.definitions;
    known bigint;
BEGIN
    d := sync._def(name);
    SELECT count(*) INTO known FROM sync.ledger WHERE definition_id = d.id;
    IF known > 0 AND NOT force THEN
        RAISE EXCEPTION 'definition % tracks % items on its target', quote_literal(name), known
            USING ERRCODE = 'dependent_objects_still_exist',
                  DETAIL = 'Dropping it forgets which target items belong to which rows; the items stay on the target.',
                  HINT = 'Pass force => true to drop it anyway, or sync.disable() it instead.';
    END IF;
    DELETE FROM sync.definitions WHERE id = d.id;
    PERFORM sync._publication_refresh();
    RETURN name;
END $$;

-- ---------------------------------------------------------------------------
-- Field mappings
-- ---------------------------------------------------------------------------

CREATE FUNCTION map(
    definition text,
    "column" text,
    field text,
    direction text DEFAULT NULL,
    transform text DEFAULT NULL,
    reference text DEFAULT NULL
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    d sync.definitions;
    r sync.definitions;
    k sync.target_kinds;
    col name;
    ttype regtype;
    transform_sql text;
BEGIN
    d := sync._def(definition);
    SELECT tk.* INTO k FROM sync.target_kinds tk JOIN sync.targets t ON t.kind = tk.kind WHERE t.name = d.target;
    IF "column" IS NULL AND transform IS NULL THEN
        RAISE EXCEPTION 'a mapping needs a column or a transform'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('Field %s would have no value.', coalesce(quote_literal(field), 'NULL')),
                  HINT = 'sync.map(definition, ''column'', ''Field''), or transform => ''first || '' '' || last''.';
    END IF;
    IF "column" IS NOT NULL THEN
        col := sync._check_column(d.source_rel, "column");
    END IF;
    IF field IS NULL OR field !~ k.field_name_pattern THEN
        RAISE EXCEPTION 'invalid field name %', coalesce(quote_literal(field), 'NULL')
            USING ERRCODE = 'invalid_name',
                  DETAIL = format('%s fields match %s.', k.kind, k.field_name_pattern),
                  HINT = 'Use the field''s internal name (for SharePoint: letters, digits and _, e.g. FullName).';
    END IF;
    -- (the item's id may be read into a column: pull-only)
    IF lower(field) = 'synckey' OR (lower(field) = 'id' AND coalesce(direction, d.direction) <> 'pull') THEN
        RAISE EXCEPTION 'field % is reserved', quote_literal(field)
            USING ERRCODE = 'reserved_name',
                  DETAIL = 'SyncKey holds the row''s key and id the item''s id; syncbridge maintains both.',
                  HINT = 'Map the column to another field name (the item''s ID may be read into a column with direction => ''pull'').';
    END IF;
    -- By default a field goes the definition's way.
    direction := coalesce(direction, d.direction);
    PERFORM sync._check_choice('direction', direction, ARRAY['push', 'pull', 'both']);
    IF direction = 'both' AND d.direction <> 'both' THEN
        RAISE EXCEPTION 'definition % is not two-way', quote_literal(definition)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('Its direction is %s: a field mapped both ways would only go %s.', d.direction, d.direction),
                  HINT = format('Map it with direction => %L, or define the sync with direction => ''both''.', d.direction);
    END IF;
    IF direction = 'push' AND d.direction = 'pull' THEN
        RAISE EXCEPTION 'definition % only pulls', quote_literal(definition)
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'Nothing of a pull definition is sent to the target.',
                  HINT = 'Map it with direction => ''pull'', or define the sync with direction => ''both''.';
    END IF;
    IF direction <> 'push' AND col = ANY (d.key_columns) THEN
        RAISE EXCEPTION 'key column % cannot be written from the target', quote_ident(col)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'The key identifies the row; a change from the target would make it another row.',
                  HINT = 'Map the key column with direction => ''push'' (it also travels as SyncKey).';
    END IF;
    IF direction <> 'push' AND transform IS NOT NULL THEN
        RAISE EXCEPTION 'a transformed field cannot be pulled'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A value computed by an expression has no column to be written back into.',
                  HINT = 'Use direction => ''push'' for transformed fields.';
    END IF;
    IF direction <> 'push' AND "column" IS NULL THEN
        RAISE EXCEPTION 'a pulled field needs a column'
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'The pulled value is written into that column.',
                  HINT = 'sync.map(definition, ''column'', ''Field'', direction => ''pull'').';
    END IF;
    IF direction <> 'push' THEN
        PERFORM sync._check_may_write(d.source_rel, direction, col);
    END IF;
    IF direction = 'pull' AND k.kind = 'graph' THEN
        PERFORM sync._check_system_field(d.source_rel, col, field);
    END IF;
    IF transform IS NOT NULL THEN
        SELECT x.expression, x.typ INTO transform_sql, ttype FROM sync._check_row_expression(d.source_rel, transform, 'transform', false) x;
    END IF;
    IF reference IS NOT NULL THEN
        SELECT * INTO r FROM sync.definitions x WHERE x.name = reference;
        IF NOT FOUND THEN
            PERFORM sync._def(reference);  -- raises the not-found error
        END IF;
        IF r.target <> d.target THEN
            RAISE EXCEPTION 'reference % is on another target', quote_literal(reference)
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = format('%s goes to %s, %s to %s; a lookup can only point within one target.', d.name, d.target, r.name, r.target),
                      HINT = 'Reference a definition on the same target.';
        END IF;
        IF cardinality(r.key_columns) <> 1 THEN
            RAISE EXCEPTION 'reference % has a composite key', quote_literal(reference)
                USING ERRCODE = 'feature_not_supported',
                      DETAIL = 'A reference column holds the referenced row''s key, which must then be one column.',
                      HINT = 'Reference a definition keyed by one column.';
        END IF;
    END IF;
    INSERT INTO sync.field_maps AS m (definition_id, column_name, field, direction, transform, transform_type, reference, position)
    VALUES (d.id, col, field, direction, transform_sql, ttype, reference,
            coalesce((SELECT max(position) + 1 FROM sync.field_maps WHERE definition_id = d.id), 1))
    ON CONFLICT ON CONSTRAINT field_maps_pkey DO UPDATE
       SET column_name = EXCLUDED.column_name, direction = EXCLUDED.direction,
           transform = EXCLUDED.transform, transform_type = EXCLUDED.transform_type, reference = EXCLUDED.reference;
    PERFORM sync._touch(d.id);
    IF direction <> 'push' THEN
        -- the writing role gets its rights on the table
        PERFORM sync._publication_refresh();
    END IF;
    RETURN field;
END $$;

CREATE FUNCTION unmap(definition text, field text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    d sync.definitions;
BEGIN
    d := sync._def(definition);
    DELETE FROM sync.field_maps m WHERE m.definition_id = d.id AND m.field = unmap.field;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'definition % maps no field %', quote_literal(definition), coalesce(quote_literal(field), 'NULL')
            USING ERRCODE = 'undefined_object',
                  DETAIL = coalesce('Mapped fields: ' || (SELECT string_agg(m.field, ', ' ORDER BY m.position) FROM sync.field_maps m WHERE m.definition_id = d.id) || '.',
                                    'It has no explicit mappings (every column goes under its own name).'),
                  HINT = 'SELECT * FROM sync.field_maps;';
    END IF;
    PERFORM sync._touch(d.id);
    RETURN field;
END $$;

-- ---------------------------------------------------------------------------
-- Shards
-- ---------------------------------------------------------------------------

CREATE FUNCTION shard(definition text, predicate text, list text, "position" int DEFAULT NULL) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    d sync.definitions;
    pos int;
    predicate_sql text;
BEGIN
    d := sync._def(definition);
    IF list IS NULL THEN
        RAISE EXCEPTION 'a shard needs a list'
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'Rows matching the predicate go to that list.',
                  HINT = 'sync.shard(definition, ''region = ''''EU'''''', list => ''Employees EU'').';
    END IF;
    PERFORM sync._check_list_name(list);
    IF predicate IS NULL THEN
        RAISE EXCEPTION 'a shard needs a predicate'
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'The predicate decides which rows go to the list.',
                  HINT = 'Rows matching no shard go to the definition''s own list.';
    END IF;
    predicate_sql := (sync._check_row_expression(d.source_rel, predicate, 'shard predicate', true)).expression;
    pos := coalesce("position", (SELECT max(s.position) + 1 FROM sync.shards s WHERE s.definition_id = d.id), 1);
    INSERT INTO sync.shards AS s (definition_id, position, predicate, list)
    VALUES (d.id, pos, predicate_sql, list)
    ON CONFLICT ON CONSTRAINT shards_pkey DO UPDATE SET predicate = EXCLUDED.predicate, list = EXCLUDED.list;
    IF d.state <> 'configuring' THEN
        PERFORM sync._check_dn_templates(d.id);   -- (else at sync.enable, once it is mapped)
    END IF;
    PERFORM sync._touch(d.id);
    RETURN pos;
END $$;

CREATE FUNCTION unshard(definition text, "position" int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    d sync.definitions;
BEGIN
    d := sync._def(definition);
    DELETE FROM sync.shards s WHERE s.definition_id = d.id AND s.position = unshard.position;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'definition % has no shard at position %', quote_literal(definition), "position"
            USING ERRCODE = 'undefined_object', DETAIL = 'Nothing was removed.', HINT = 'SELECT * FROM sync.shards;';
    END IF;
    PERFORM sync._touch(d.id);
    RETURN "position";
END $$;

-- ---------------------------------------------------------------------------
-- Lifecycle
-- ---------------------------------------------------------------------------

CREATE FUNCTION _set_state(d definitions, new_state text, allowed_from text[], reason text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    IF d.state = new_state THEN
        RETURN new_state;
    END IF;
    IF NOT d.state = ANY (allowed_from) THEN
        RAISE EXCEPTION 'definition % is %, it cannot become %', quote_literal(d.name), d.state, new_state
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Only a definition that is %s can become %s.', array_to_string(allowed_from, ' or '), new_state),
                  HINT = CASE d.state WHEN 'configuring' THEN 'Enable it first with sync.enable().'
                                      WHEN 'disabled' THEN 'Enable it again with sync.enable().'
                                      ELSE 'SELECT * FROM sync.status;' END;
    END IF;
    UPDATE sync.definitions SET state = new_state, state_reason = reason, updated_at = now() WHERE id = d.id;
    RETURN new_state;
END $$;

-- LDAP: each list of a definition (its own and its shards') is a DN
-- template, `uid={uid},ou=People` (the base DN appended, or named as
-- {base}); every placeholder must name a field the definition sends.
CREATE FUNCTION _check_dn_templates(def_id int) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    d sync.definitions;
    tmpl text;
    ph text;
    fields text[];
BEGIN
    SELECT * INTO d FROM sync.definitions x WHERE x.id = def_id;
    IF (SELECT t.kind FROM sync.targets t WHERE t.name = d.target) IS DISTINCT FROM 'ldap' THEN
        RETURN;
    END IF;
    fields := CASE WHEN EXISTS (SELECT 1 FROM sync.field_maps m WHERE m.definition_id = d.id)
                   THEN ARRAY(SELECT m.field FROM sync.field_maps m WHERE m.definition_id = d.id AND m.direction <> 'pull' ORDER BY m.position)
                   ELSE ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
                               WHERE a.attrelid = d.source_rel AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) END;
    FOR tmpl IN SELECT d.list WHERE d.list IS NOT NULL UNION ALL SELECT s.list FROM sync.shards s WHERE s.definition_id = d.id LOOP
        IF tmpl !~ '^[^=,]+=[^,]*\{[^{}]+\}' THEN
            RAISE EXCEPTION 'invalid DN template %', to_json(tmpl)
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = format('Definition %s is on an LDAP target: its list is a DN template whose first RDN names the entry from a field, then the entry''s container.', d.name),
                      HINT = 'For example list => ''uid={uid},ou=People'' (the target''s base_dn is appended, or placed where {base} is).';
        END IF;
        FOR ph IN SELECT m[1] FROM regexp_matches(tmpl, '\{([^{}]*)\}', 'g') m LOOP
            IF ph <> 'base' AND NOT ph = ANY (fields) THEN
                RAISE EXCEPTION 'DN template % names an unknown field %', to_json(tmpl), to_json(ph)
                    USING ERRCODE = 'undefined_column',
                          DETAIL = format('Definition %s sends the fields %s.', d.name, array_to_string(fields, ', ')),
                          HINT = 'A placeholder {name} names a field the definition sends (sync.map), or {base} for the target''s base_dn.';
            END IF;
        END LOOP;
        IF tmpl ~ '\{base\}' AND tmpl !~ '\{base\}$' THEN
            RAISE EXCEPTION 'invalid DN template %', to_json(tmpl)
                USING ERRCODE = 'invalid_parameter_value', DETAIL = '{base} stands for the target''s base_dn: it ends the template.',
                      HINT = 'For example ''uid={uid},ou=People,{base}''.';
        END IF;
    END LOOP;
END $$;

CREATE FUNCTION enable(definition text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    d sync.definitions;
    kind_ok boolean;
BEGIN
    d := sync._def(definition);
    SELECT tk.implemented INTO kind_ok FROM sync.targets t JOIN sync.target_kinds tk ON tk.kind = t.kind WHERE t.name = d.target;
    IF NOT kind_ok THEN
        RAISE EXCEPTION 'target % has no adapter in the worker yet', quote_literal(d.target)
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'Its kind is known, but the worker cannot send to it yet.',
                  HINT = 'SELECT kind, implemented FROM sync.target_kinds;';
    END IF;
    PERFORM sync._compile(d.id);   -- raises if the mapping no longer fits the table
    PERFORM sync._check_dn_templates(d.id);
    -- What comes back is written into the table: whoever enables it must
    -- be allowed to (the writing role then gets the same rights).
    IF d.direction <> 'push' THEN
        PERFORM sync._check_may_write(d.source_rel, d.direction);
    END IF;
    PERFORM sync._check_may_write(d.source_rel, 'pull', m.column_name)
       FROM sync.field_maps m WHERE m.definition_id = d.id AND m.direction <> 'push' AND m.column_name IS NOT NULL;
    -- Enabled (or resumed from error): the table as it is named now is the
    -- one; a rename later is a schema change again.
    UPDATE sync.definitions x SET source_name = format('%I.%I', n.nspname, c.relname)
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE x.id = d.id AND c.oid = d.source_rel;
    IF d.state IN ('configuring', 'disabled', 'error') THEN
        UPDATE sync.definitions SET backfill = 'needed' WHERE id = d.id;
        DELETE FROM sync.cursors WHERE kind = 'backfill' AND definition_id = d.id;
    END IF;
    PERFORM sync._set_state(d, 'active', ARRAY['configuring', 'paused', 'disabled', 'error']);
    PERFORM sync._publication_refresh();
    RETURN 'active';
END $$;

CREATE FUNCTION pause(definition text, reason text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    IF length(reason) > 1000 THEN
        RAISE EXCEPTION 'pause reason too long'
            USING ERRCODE = 'string_data_right_truncation', DETAIL = format('It has %s characters; at most 1000.', length(reason)),
                  HINT = 'Say why in a sentence; link to a ticket for more.';
    END IF;
    RETURN sync._set_state(sync._def(definition), 'paused', ARRAY['active'], coalesce(reason, 'paused by ' || session_user));
END $$;

CREATE FUNCTION resume(definition text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    d sync.definitions;
BEGIN
    d := sync._def(definition);
    IF d.state = 'error' THEN
        -- Changes were not staged while in error: reconcile the whole table.
        RETURN sync.enable(definition);
    END IF;
    RETURN sync._set_state(d, 'active', ARRAY['paused']);
END $$;

CREATE FUNCTION disable(definition text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    d sync.definitions;
BEGIN
    d := sync._def(definition);
    PERFORM sync._set_state(d, 'disabled', ARRAY['configuring', 'active', 'paused', 'error'], 'disabled by ' || session_user);
    PERFORM sync._publication_refresh();
    RETURN 'disabled';
END $$;

-- ---------------------------------------------------------------------------
-- The publication: the source tables of all definitions that are not
-- disabled, each with its key and replica identity columns only.
--
-- Owned by the superuser who created the extension (ALTER PUBLICATION needs
-- rights on every published table), callable by syncbridge_owner only, and
-- careful with them: a table joins the publication only when the session
-- user may read it, and never without a replica identity that lets its
-- UPDATEs and DELETEs go on once published (checked again here: definitions
-- may be older than an ALTER TABLE ... REPLICA IDENTITY). The role
-- syncbridge_reader, which evaluates the definitions' expressions, is kept
-- at SELECT on exactly these tables.
-- ---------------------------------------------------------------------------

CREATE FUNCTION _publication_refresh() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    want text;
    have regclass[];
    r record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'syncbridge_pub') THEN
        CREATE PUBLICATION syncbridge_pub WITH (publish = 'insert, update, delete, truncate');
    END IF;
    SELECT array_agg(prrelid::regclass) INTO have
      FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = 'syncbridge_pub';
    -- Tables that would join: the session user must be able to read them.
    FOR r IN SELECT DISTINCT d.source_rel AS rel FROM sync.definitions d
              WHERE d.state <> 'disabled' AND NOT d.source_rel = ANY (coalesce(have, '{}'))
                AND NOT has_table_privilege(session_user, d.source_rel, 'SELECT') LOOP
        RAISE EXCEPTION 'permission denied: % may not read %', session_user, r.rel
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'Publishing a table sends its changes to syncbridge: whoever causes it must be allowed to read the table.',
                  HINT = format('As the table''s owner: GRANT SELECT ON %s TO %I;', r.rel, session_user);
    END LOOP;
    -- Tables without a usable replica identity stay out (their UPDATE and
    -- DELETE would fail once published).
    FOR r IN SELECT DISTINCT d.source_rel AS rel FROM sync.definitions d JOIN pg_class c ON c.oid = d.source_rel
              WHERE d.state <> 'disabled' AND NOT sync._has_replica_identity(d.source_rel) LOOP
        RAISE WARNING 'syncbridge: % is not published: it has no replica identity', r.rel
            USING HINT = format('ALTER TABLE %s REPLICA IDENTITY USING INDEX <a unique index on the key>; (or add a primary key), then SELECT sync.enable(...) again.', r.rel);
    END LOOP;
    SELECT string_agg(t.spec, ', ') INTO want FROM (
        SELECT format('%s%s', d.rel,
                      CASE WHEN c.relreplident = 'f' THEN ''
                           ELSE ' (' || (SELECT string_agg(quote_ident(x), ', ' ORDER BY x)
                                           FROM (SELECT DISTINCT unnest(d.cols || ri.cols) AS x) u) || ')' END) AS spec
          FROM (SELECT source_rel AS rel, array_agg(DISTINCT k) AS cols
                  FROM sync.definitions CROSS JOIN LATERAL unnest(key_columns) k
                 WHERE state <> 'disabled' GROUP BY source_rel) d
          JOIN pg_class c ON c.oid = d.rel
          CROSS JOIN LATERAL (
              SELECT coalesce(array_agg(a.attname), '{}') AS cols
                FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) k(attnum)
                JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
               WHERE i.indrelid = d.rel
                 AND CASE WHEN c.relreplident = 'd' THEN i.indisprimary ELSE i.indisreplident END) ri
         WHERE sync._has_replica_identity(d.rel)
         ORDER BY d.rel::oid) t;
    IF want IS NOT NULL THEN
        EXECUTE 'ALTER PUBLICATION syncbridge_pub SET TABLE ' || want;
    ELSIF have IS NOT NULL THEN
        FOR r IN SELECT unnest(have) AS rel LOOP
            EXECUTE format('ALTER PUBLICATION syncbridge_pub DROP TABLE %s', r.rel);
        END LOOP;
    END IF;
    PERFORM sync._reader_grants();
END $$;

-- Whether UPDATE and DELETE on `rel` still work once it is published.
CREATE FUNCTION _has_replica_identity(rel regclass) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT CASE c.relreplident
               WHEN 'f' THEN true
               WHEN 'n' THEN false
               WHEN 'd' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = rel AND i.indisprimary)
               ELSE EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = rel AND i.indisreplident)
           END
      FROM pg_class c WHERE c.oid = rel
$$;

-- syncbridge_reader may read exactly the source tables of the definitions
-- (and use their schemas): granted when a definition appears, revoked when
-- the last one on a table goes. Called by _publication_refresh (as the
-- superuser owning it: a GRANT by a superuser is made as the table's owner).
CREATE FUNCTION _reader_grants() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    seq record;
BEGIN
    FOR r IN SELECT DISTINCT d.source_rel AS rel, c.relnamespace::regnamespace AS nsp
               FROM sync.definitions d JOIN pg_class c ON c.oid = d.source_rel
              WHERE NOT has_table_privilege('syncbridge_reader', d.source_rel, 'SELECT')
                 OR NOT has_schema_privilege('syncbridge_reader', c.relnamespace, 'USAGE') LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %s TO syncbridge_reader', r.nsp);
        EXECUTE format('GRANT SELECT ON %s TO syncbridge_reader', r.rel);
    END LOOP;
    FOR r IN SELECT c.oid::regclass AS rel FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
              WHERE a.grantee = 'syncbridge_reader'::regrole AND c.relkind IN ('r', 'p')
                AND NOT EXISTS (SELECT 1 FROM sync.definitions d WHERE d.source_rel = c.oid) LOOP
        EXECUTE format('REVOKE ALL ON %s FROM syncbridge_reader', r.rel);
    END LOOP;
    -- syncbridge_writer writes what comes from targets into exactly the
    -- tables of definitions that bring values back (their definers were
    -- checked for the same rights by sync.define / sync.map).
    FOR r IN SELECT DISTINCT d.source_rel AS rel, c.relnamespace::regnamespace AS nsp
               FROM sync.definitions d JOIN pg_class c ON c.oid = d.source_rel
              WHERE (d.direction <> 'push' OR EXISTS (SELECT 1 FROM sync.field_maps m WHERE m.definition_id = d.id AND m.direction <> 'push'))
                AND d.state <> 'error'
                AND (NOT has_table_privilege('syncbridge_writer', d.source_rel, 'DELETE')
                     OR NOT has_schema_privilege('syncbridge_writer', c.relnamespace, 'USAGE')) LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %s TO syncbridge_writer', r.nsp);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO syncbridge_writer', r.rel);
        -- the sequences of its serial columns (a row inserted takes its key
        -- from the table's defaults)
        FOR seq IN SELECT dep.objid::regclass AS s FROM pg_depend dep JOIN pg_class sc ON sc.oid = dep.objid
                    WHERE dep.refobjid = r.rel AND dep.classid = 'pg_class'::regclass AND sc.relkind = 'S' LOOP
            EXECUTE format('GRANT USAGE ON SEQUENCE %s TO syncbridge_writer', seq.s);
        END LOOP;
    END LOOP;
    FOR r IN SELECT DISTINCT c.oid::regclass AS rel FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
              WHERE a.grantee = 'syncbridge_writer'::regrole AND c.relkind IN ('r', 'p')
                AND c.relnamespace <> 'sync'::regnamespace
                AND NOT EXISTS (SELECT 1 FROM sync.definitions d WHERE d.source_rel = c.oid AND d.state <> 'error'
                                   AND (d.direction <> 'push' OR EXISTS (SELECT 1 FROM sync.field_maps m
                                                                          WHERE m.definition_id = d.id AND m.direction <> 'push'))) LOOP
        EXECUTE format('REVOKE ALL ON %s FROM syncbridge_writer', r.rel);
    END LOOP;
END $$;
