//! SQL expressions written by DBAs (row filters, shard predicates,
//! transforms) are checked with PostgreSQL's own parser before they are
//! stored, so that what is later embedded in compiled SQL is exactly one
//! expression: no second statement, no subquery, no escaping its parentheses.

use std::ffi::{c_void, CString};

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::error::SyncError;

/// What was found in an expression that makes it unacceptable.
#[derive(Default)]
struct Findings {
    sublink: bool,
}

unsafe extern "C-unwind" fn walker(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    // SAFETY: ctx is the Findings passed by `check_expression`; node is a
    // valid raw parse tree node handed to us by raw_expression_tree_walker.
    unsafe {
        let findings = &mut *(ctx as *mut Findings);
        if (*node).type_ == pg_sys::NodeTag::T_SubLink {
            findings.sublink = true;
            return true;
        }
        pg_sys::raw_expression_tree_walker(node, Some(walker), ctx)
    }
}

/// Parses `SELECT <expr>` and checks that it is one plain expression.
/// Syntax errors are raised by PostgreSQL's parser (SQLSTATE 42601) and are
/// given a hint by the SQL callers.
pub fn check_expression(expr: &str, what: &str) -> Result<(), SyncError> {
    let bad = |reason: &str| SyncError::BadExpression { what: what.to_owned(), reason: reason.to_owned() };
    if expr.trim().is_empty() {
        return Err(bad("The expression is empty."));
    }
    if expr.contains('\0') {
        return Err(bad("The expression holds a NUL character."));
    }
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
        let mut findings = Findings::default();
        walker((*rt).val, &mut findings as *mut Findings as *mut c_void);
        if findings.sublink {
            return Err(bad("It holds a subquery; only the row's own columns may be used."));
        }
    }
    Ok(())
}

/// `sync._check_expression(expr, what)`: raises unless `expr` is one plain
/// SQL expression; returns it unchanged.
#[pg_extern(immutable, parallel_safe, name = "_check_expression")]
pub fn check_expression_sql(expr: &str, what: default!(&str, "'expression'")) -> String {
    match check_expression(expr, what) {
        Ok(()) => expr.to_owned(),
        Err(e) => e.raise(),
    }
}
