//! SQL expressions written by DBAs (row filters, shard predicates,
//! transforms) are checked with PostgreSQL's own parser and analyzer before
//! they are stored, and again whenever a definition is compiled:
//!
//! - the raw parse tree must be exactly one expression: no second statement,
//!   no subquery, no clause of a query, no escaping its parentheses;
//! - analyzed against the source table, it may use that table's user columns
//!   and call only immutable, non-set-returning functions and operators of
//!   `pg_catalog` (no `*_to_xml`, `lo_*`, `pg_*`, volatile or stable
//!   functions, nothing outside `pg_catalog`); aggregates, window functions,
//!   set-returning functions, parameters, `current_user` and the like are
//!   refused;
//! - what is stored is PostgreSQL's own deparse of the analyzed expression
//!   (`deparse_expression` under `search_path = pg_catalog, pg_temp`), so
//!   anything outside `pg_catalog` is schema-qualified and the text means the
//!   same whatever the session's settings.
//!
//! Expressions are evaluated only by `sync._mapped_rows_*`, which run as the
//! role `syncbridge_reader` (SELECT on the source tables, nothing else): an
//! expression is harmless whoever causes its evaluation.

use std::ffi::{c_char, c_void, CStr, CString};

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::error::SyncError;

/// What was found in a raw parse tree that makes it unacceptable.
#[derive(Default)]
struct RawFindings {
    sublink: bool,
}

unsafe extern "C-unwind" fn raw_walker(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    // SAFETY: ctx is the RawFindings passed by `check_expression`; node is a
    // valid raw parse tree node handed to us by raw_expression_tree_walker.
    unsafe {
        let findings = &mut *(ctx as *mut RawFindings);
        if (*node).type_ == pg_sys::NodeTag::T_SubLink {
            findings.sublink = true;
            return true;
        }
        pg_sys::raw_expression_tree_walker(node, Some(raw_walker), ctx)
    }
}

/// Refuses to go on when `standard_conforming_strings` is off: the same text
/// would parse differently when it is embedded and run (a backslash could
/// end a string literal early and let a subquery through).
fn require_standard_strings(what: &str) -> Result<(), SyncError> {
    // SAFETY: a plain read of a GUC variable of this backend.
    if unsafe { pg_sys::standard_conforming_strings } {
        Ok(())
    } else {
        Err(SyncError::BadExpression {
            what: what.to_owned(),
            reason: "standard_conforming_strings is off; expressions are checked and run with it on.".into(),
        })
    }
}

/// Parses `SELECT <expr>` and checks that it is one plain expression.
/// Syntax errors are raised by PostgreSQL's parser (SQLSTATE 42601) and are
/// given a hint by the SQL callers.
pub fn check_expression(expr: &str, what: &str) -> Result<(), SyncError> {
    parse_expression(expr, what).map(|_| ())
}

/// `check_expression`, returning the expression's raw parse tree (palloc'd
/// in the current memory context).
fn parse_expression(expr: &str, what: &str) -> Result<*mut pg_sys::Node, SyncError> {
    let bad = |reason: &str| SyncError::BadExpression { what: what.to_owned(), reason: reason.to_owned() };
    if expr.trim().is_empty() {
        return Err(bad("The expression is empty."));
    }
    if expr.contains('\0') {
        return Err(bad("The expression holds a NUL character."));
    }
    require_standard_strings(what)?;
    // The expression sits on lines of its own, so that a trailing `--`
    // comment cannot swallow what follows it once embedded.
    let sql = CString::new(format!("SELECT\n{expr}\n")).map_err(|_| bad("The expression holds a NUL character."))?;
    // SAFETY: raw_parser is a plain parser entry point; errors are raised as
    // PostgreSQL ERRORs, which pgrx turns into Rust panics and back.
    unsafe {
        let list = pg_sys::raw_parser(sql.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        if list.is_null() || (*list).length != 1 {
            return Err(bad("It holds more than one statement (is there a semicolon?)."));
        }
        let raw = (*(*list).elements).ptr_value as *mut pg_sys::RawStmt;
        let stmt = (*raw).stmt;
        if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_SelectStmt {
            return Err(bad("It is not an expression."));
        }
        let sel = stmt as *mut pg_sys::SelectStmt;
        let s = &*sel;
        if s.op != pg_sys::SetOperation::SETOP_NONE {
            return Err(bad("It holds UNION, INTERSECT or EXCEPT."));
        }
        if !s.fromClause.is_null()
            || !s.whereClause.is_null()
            || !s.groupClause.is_null()
            || !s.havingClause.is_null()
            || !s.windowClause.is_null()
            || !s.sortClause.is_null()
            || !s.limitCount.is_null()
            || !s.limitOffset.is_null()
            || !s.lockingClause.is_null()
            || !s.withClause.is_null()
            || !s.intoClause.is_null()
            || !s.distinctClause.is_null()
            || !s.valuesLists.is_null()
        {
            return Err(bad("It holds clauses of a query (FROM, WHERE, GROUP BY, ORDER BY, LIMIT, ...)."));
        }
        let targets = s.targetList;
        if targets.is_null() || (*targets).length != 1 {
            return Err(bad("It is a list of expressions, not one (is there a comma at the top level?)."));
        }
        let rt = (*(*targets).elements).ptr_value as *mut pg_sys::ResTarget;
        if !(*rt).name.is_null() {
            return Err(bad("It ends with an alias (AS ...)."));
        }
        let mut findings = RawFindings::default();
        raw_walker((*rt).val, &mut findings as *mut RawFindings as *mut c_void);
        if findings.sublink {
            return Err(bad("It holds a subquery; only the row's own columns may be used."));
        }
        Ok((*rt).val)
    }
}

/// Names of `pg_catalog` functions refused even when immutable: they read or
/// write outside the row (large objects, XML that may load entities, settings,
/// sequences, server state).
fn denied_name(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "lo_",
        "pg_",
        "xml",
        "xpath",
        "xslt",
        "dblink",
        "query_to",
        "table_to",
        "cursor_to",
        "schema_to",
        "database_to",
        "set_config",
        "current_setting",
        "txid",
        "nextval",
        "setval",
        "currval",
        "lastval",
    ];
    const PARTS: &[&str] = &["_to_xml", "xml"];
    let n = name.to_ascii_lowercase();
    PREFIXES.iter().any(|p| n.starts_with(p)) || PARTS.iter().any(|p| n.contains(p))
}

/// Why a function may not be called by an expression, or None when it may.
fn function_refusal(func: pg_sys::Oid) -> Option<String> {
    // SAFETY: lsyscache look-ups of an existing function's catalog row.
    unsafe {
        let name_ptr = pg_sys::get_func_name(func);
        let name = if name_ptr.is_null() {
            format!("function {}", func.to_u32())
        } else {
            CStr::from_ptr(name_ptr).to_string_lossy().into_owned()
        };
        let nsp = pg_sys::get_func_namespace(func);
        if nsp != pg_sys::Oid::from(pg_sys::PG_CATALOG_NAMESPACE) {
            let schema_ptr = pg_sys::get_namespace_name(nsp);
            let schema = if schema_ptr.is_null() {
                "?".to_owned()
            } else {
                CStr::from_ptr(schema_ptr).to_string_lossy().into_owned()
            };
            return Some(format!("{schema}.{name}() is not a function of pg_catalog"));
        }
        if pg_sys::get_func_retset(func) {
            return Some(format!("{name}() returns a set"));
        }
        let kind = pg_sys::get_func_prokind(func) as u8;
        if kind == b'a' || kind == b'w' {
            return Some(format!("{name}() is an aggregate or window function"));
        }
        if kind != b'f' {
            return Some(format!("{name}() is not a plain function"));
        }
        let volatility = pg_sys::func_volatile(func) as u8;
        if volatility != b'i' {
            let v = if volatility == b's' { "stable" } else { "volatile" };
            return Some(format!("{name}() is {v}: its result depends on more than its arguments"));
        }
        if denied_name(&name) {
            return Some(format!("{name}() reaches beyond the row"));
        }
    }
    None
}

/// What the analyzed-expression walk found first that is refused.
#[derive(Default)]
struct Findings {
    refusal: Option<String>,
    /// The refusal is of the kind of expression (aggregate, window, set),
    /// not of a function's rights.
    unsupported: bool,
}

unsafe extern "C-unwind" fn func_checker(func: pg_sys::Oid, ctx: *mut c_void) -> bool {
    // SAFETY: ctx is the Findings passed by `walker`.
    let findings = unsafe { &mut *(ctx as *mut Findings) };
    match function_refusal(func) {
        Some(why) => {
            findings.refusal = Some(why);
            true
        }
        None => false,
    }
}

unsafe extern "C-unwind" fn walker(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    use pg_sys::NodeTag::*;
    if node.is_null() {
        return false;
    }
    // SAFETY: node is a valid analyzed expression node (from the Query made
    // by parse analysis, or handed down by expression_tree_walker); ctx is
    // the Findings passed by `analyze`.
    unsafe {
        let findings = &mut *(ctx as *mut Findings);
        let refuse = |f: &mut Findings, why: &str, unsupported: bool| {
            f.refusal = Some(why.to_owned());
            f.unsupported = unsupported;
            true
        };
        match (*node).type_ {
            T_SubLink => return refuse(findings, "it holds a subquery", false),
            T_Aggref => return refuse(findings, "it calls an aggregate function", true),
            T_WindowFunc => return refuse(findings, "it calls a window function", true),
            T_GroupingFunc => return refuse(findings, "it uses GROUPING()", true),
            T_Param => return refuse(findings, "it uses a parameter", false),
            T_SQLValueFunction => {
                return refuse(findings, "it uses current_user, current_date or a similar value of the session", false)
            }
            T_XmlExpr => return refuse(findings, "it builds XML", false),
            T_NextValueExpr => return refuse(findings, "it reads a sequence", false),
            T_CurrentOfExpr => return refuse(findings, "it uses CURRENT OF", false),
            T_CoerceToDomain | T_CoerceToDomainValue => {
                return refuse(findings, "it casts to a domain (whose checks may call any function)", false)
            }
            T_SetToDefault => return refuse(findings, "it uses DEFAULT", false),
            T_Var => {
                let var = node as *mut pg_sys::Var;
                if (*var).varlevelsup != 0 || (*var).varno != 1 {
                    return refuse(findings, "it refers to something other than the source row", false);
                }
                if (*var).varattno <= 0 {
                    return refuse(findings, "it uses a system column or the whole row", false);
                }
            }
            T_MinMaxExpr => {
                // GREATEST / LEAST compare with the type's default btree
                // operator class, which for a type outside pg_catalog may be
                // anyone's function.
                let mm = node as *mut pg_sys::MinMaxExpr;
                if pg_sys::get_typ_typrelid((*mm).minmaxtype) != pg_sys::InvalidOid
                    || !type_in_pg_catalog((*mm).minmaxtype)
                {
                    return refuse(
                        findings,
                        "it compares values of a type outside pg_catalog with GREATEST/LEAST",
                        false,
                    );
                }
            }
            _ => {}
        }
        // Arguments first: the refusal names the innermost call (now(), not
        // the cast of its result).
        if pg_sys::expression_tree_walker(node, Some(walker), ctx) {
            return true;
        }
        pg_sys::check_functions_in_node(node, Some(func_checker), ctx)
    }
}

fn type_in_pg_catalog(typ: pg_sys::Oid) -> bool {
    // SAFETY: a syscache look-up of a type's namespace.
    unsafe {
        let tup = pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::TYPEOID as _, pg_sys::Datum::from(typ));
        if tup.is_null() {
            return false;
        }
        let form = pg_sys::GETSTRUCT(tup) as *mut pg_sys::FormData_pg_type;
        let nsp = (*form).typnamespace;
        pg_sys::ReleaseSysCache(tup);
        nsp == pg_sys::Oid::from(pg_sys::PG_CATALOG_NAMESPACE)
    }
}

/// The analyzed expression: its deparsed text and its type.
pub struct Analyzed {
    pub expression: String,
    pub type_oid: pg_sys::Oid,
}

/// Checks `expr` against table `rel` (see the module comment) and returns
/// PostgreSQL's deparse of it and its type. Column and type errors are raised
/// by PostgreSQL's analyzer with their own SQLSTATE (42703 for an unknown
/// column); the SQL callers add hints.
pub fn analyze(rel: pg_sys::Oid, expr: &str, what: &str) -> Result<Analyzed, SyncError> {
    let raw = parse_expression(expr, what)?;
    let forbidden = |reason: String| SyncError::ForbiddenInExpression { what: what.to_owned(), reason };
    // SAFETY: the analyzer's entry points, as transformWhereClause uses them:
    // a parse state whose only range table entry is the table, opened by
    // OID (no name is looked up, so no search_path and no schema privilege
    // is involved). Errors are raised as PostgreSQL ERRORs (pgrx turns them
    // into panics and back).
    unsafe {
        if pg_sys::get_rel_name(rel).is_null() {
            return Err(forbidden(format!("relation {} does not exist", rel.to_u32())));
        }
        let source = CString::new(expr).map_err(|_| forbidden("it holds a NUL character".into()))?;
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        (*pstate).p_sourcetext = source.as_ptr();
        let relation = pg_sys::table_open(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let alias_name = CString::new("s").expect("no NUL");
        let alias = pg_sys::makeAlias(alias_name.as_ptr(), std::ptr::null_mut());
        let nsitem = pg_sys::addRangeTableEntryForRelation(
            pstate,
            relation,
            pg_sys::AccessShareLock as pg_sys::LOCKMODE,
            alias,
            false,
            true,
        );
        pg_sys::addNSItemToQuery(pstate, nsitem, true, true, true);
        let node = pg_sys::transformExpr(pstate, raw, pg_sys::ParseExprKind::EXPR_KIND_SELECT_TARGET);
        pg_sys::assign_expr_collations(pstate, node);
        pg_sys::table_close(relation, pg_sys::NoLock as pg_sys::LOCKMODE);
        let p = &*pstate;
        if p.p_hasAggs || p.p_hasWindowFuncs || p.p_hasTargetSRFs {
            return Err(SyncError::UnsupportedInExpression {
                what: what.to_owned(),
                reason: "it calls an aggregate, window or set-returning function".into(),
            });
        }
        if p.p_hasSubLinks {
            return Err(forbidden("it holds a subquery".into()));
        }
        let mut findings = Findings::default();
        walker(node, &mut findings as *mut Findings as *mut c_void);
        if let Some(reason) = findings.refusal {
            return Err(if findings.unsupported {
                SyncError::UnsupportedInExpression { what: what.to_owned(), reason }
            } else {
                forbidden(reason)
            });
        }
        let ctx = pg_sys::deparse_context_for(alias_name.as_ptr(), rel);
        let text: *mut c_char = pg_sys::deparse_expression(node, ctx, false, false);
        Ok(Analyzed {
            expression: CStr::from_ptr(text).to_string_lossy().into_owned(),
            type_oid: pg_sys::exprType(node),
        })
    }
}

/// `sync._check_expression(expr, what)`: raises unless `expr` is one plain
/// SQL expression; returns it unchanged. (Kept for the 0.1.0 install script,
/// which names it; the checks of record are `sync._analyze_expression`'s.)
#[pg_extern(immutable, parallel_safe, name = "_check_expression")]
pub fn check_expression_sql(expr: &str, what: default!(&str, "'expression'")) -> String {
    match check_expression(expr, what) {
        Ok(()) => expr.to_owned(),
        Err(e) => e.raise(),
    }
}

/// `sync._analyze_expression(rel, expr, what)`: the checks of the module
/// comment; returns the expression as PostgreSQL deparses it and its type.
/// Callers pin `search_path = pg_catalog, pg_temp` and
/// `standard_conforming_strings = on`.
#[pg_extern(stable, parallel_safe, name = "_analyze_expression")]
pub fn analyze_expression_sql(
    rel: pg_sys::Oid,
    expr: &str,
    what: &str,
) -> TableIterator<'static, (name!(expression, String), name!(type_oid, pg_sys::Oid))> {
    match analyze(rel, expr, what) {
        Ok(a) => TableIterator::once((a.expression, a.type_oid)),
        Err(e) => e.raise(),
    }
}

#[cfg(test)]
mod tests {
    use super::denied_name;

    #[test]
    fn denied_names() {
        for n in ["lo_export", "query_to_xml", "table_to_xmlschema", "xpath", "pg_read_file", "set_config", "nextval"] {
            assert!(denied_name(n), "{n}");
        }
        for n in ["upper", "lower", "coalesce", "date_trunc", "textcat", "int4pl", "btrim", "to_char"] {
            assert!(!denied_name(n), "{n}");
        }
    }
}
