//! Linear's GraphQL schema (the SDL of linear/linear `packages/sdk/src/schema.graphql`,
//! byte for byte in `tests/api/linear.graphql`) as a model the emulator
//! checks every document against, the way a GraphQL server validates and
//! coerces before it executes: operations and fragments, fields on their
//! types, arguments (unknown ones refused, required ones present), leaf and
//! composite selections, variables (declared, of input types, coerced:
//! unknown input fields and wrong scalars refused), then the answer
//! projected onto the selection (aliases, `__typename`, fragments) and the
//! query's complexity estimated.
//!
//! Messages follow graphql-js, which Linear's server speaks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::OnceLock;

use graphql_parser::query as q;
use graphql_parser::schema as s;
use serde_json::{Map, Number, Value};

/// The SDL, as published.
const SDL: &str = include_str!("../../api/linear.graphql");

/// A type reference: `Named`, `[T]`, `T!`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ty {
    /// A named type.
    Named(String),
    /// A list of it.
    List(Box<Ty>),
    /// Not null.
    NonNull(Box<Ty>),
}

impl Ty {
    fn from_schema(t: &s::Type<'_, String>) -> Ty {
        match t {
            s::Type::NamedType(n) => Ty::Named(n.clone()),
            s::Type::ListType(t) => Ty::List(Box::new(Ty::from_schema(t))),
            s::Type::NonNullType(t) => Ty::NonNull(Box::new(Ty::from_schema(t))),
        }
    }

    fn from_query(t: &q::Type<'_, String>) -> Ty {
        match t {
            q::Type::NamedType(n) => Ty::Named(n.clone()),
            q::Type::ListType(t) => Ty::List(Box::new(Ty::from_query(t))),
            q::Type::NonNullType(t) => Ty::NonNull(Box::new(Ty::from_query(t))),
        }
    }

    /// The named type at its core.
    pub fn name(&self) -> &str {
        match self {
            Ty::Named(n) => n,
            Ty::List(t) | Ty::NonNull(t) => t.name(),
        }
    }

    fn non_null(&self) -> bool {
        matches!(self, Ty::NonNull(_))
    }
}

impl std::fmt::Display for Ty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ty::Named(n) => write!(f, "{n}"),
            Ty::List(t) => write!(f, "[{t}]"),
            Ty::NonNull(t) => write!(f, "{t}!"),
        }
    }
}

/// An argument or input field.
#[derive(Debug, Clone)]
pub struct InputValue {
    /// Its type.
    pub ty: Ty,
    /// Whether it has a default.
    pub has_default: bool,
}

/// A field of an object or interface type.
#[derive(Debug, Clone)]
pub struct Field {
    /// Its arguments by name.
    pub args: BTreeMap<String, InputValue>,
    /// Its type.
    pub ty: Ty,
}

/// A named type.
#[derive(Debug, Clone)]
pub enum TypeDef {
    /// An object or interface type.
    Object(BTreeMap<String, Field>),
    /// An input object.
    Input(BTreeMap<String, InputValue>),
    /// An enum and its values.
    Enum(HashSet<String>),
    /// A union and its members.
    Union(Vec<String>),
    /// A scalar.
    Scalar,
}

/// The schema.
#[derive(Debug)]
pub struct Schema {
    types: HashMap<String, TypeDef>,
}

/// A GraphQL error as the emulator answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct GqlError {
    /// graphql-js's message.
    pub message: String,
    /// Where in the document (line, column).
    pub location: Option<(usize, usize)>,
}

impl GqlError {
    fn new(message: impl Into<String>, pos: Option<graphql_parser::Pos>) -> Self {
        Self { message: message.into(), location: pos.map(|p| (p.line, p.column)) }
    }
}

/// The schema, parsed once per process.
pub fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema::parse(SDL).expect("Linear's SDL parses"))
}

impl Schema {
    /// Parses an SDL document.
    pub fn parse(sdl: &str) -> Result<Self, String> {
        let doc = s::parse_schema::<String>(sdl).map_err(|e| e.to_string())?;
        let mut types = HashMap::new();
        for scalar in ["String", "Int", "Float", "Boolean", "ID"] {
            types.insert(scalar.to_owned(), TypeDef::Scalar);
        }
        let fields = |fs: &[s::Field<'_, String>]| {
            fs.iter()
                .map(|f| {
                    let args = f
                        .arguments
                        .iter()
                        .map(|a| {
                            let v = InputValue {
                                ty: Ty::from_schema(&a.value_type),
                                has_default: a.default_value.is_some(),
                            };
                            (a.name.clone(), v)
                        })
                        .collect();
                    (f.name.clone(), Field { args, ty: Ty::from_schema(&f.field_type) })
                })
                .collect::<BTreeMap<_, _>>()
        };
        for d in &doc.definitions {
            let s::Definition::TypeDefinition(t) = d else { continue };
            let (name, def) = match t {
                s::TypeDefinition::Object(o) => (o.name.clone(), TypeDef::Object(fields(&o.fields))),
                s::TypeDefinition::Interface(i) => (i.name.clone(), TypeDef::Object(fields(&i.fields))),
                s::TypeDefinition::InputObject(i) => (
                    i.name.clone(),
                    TypeDef::Input(
                        i.fields
                            .iter()
                            .map(|a| {
                                let v = InputValue {
                                    ty: Ty::from_schema(&a.value_type),
                                    has_default: a.default_value.is_some(),
                                };
                                (a.name.clone(), v)
                            })
                            .collect(),
                    ),
                ),
                s::TypeDefinition::Enum(e) => {
                    (e.name.clone(), TypeDef::Enum(e.values.iter().map(|v| v.name.clone()).collect()))
                }
                s::TypeDefinition::Union(u) => (u.name.clone(), TypeDef::Union(u.types.clone())),
                s::TypeDefinition::Scalar(sc) => (sc.name.clone(), TypeDef::Scalar),
            };
            types.insert(name, def);
        }
        for root in ["Query", "Mutation"] {
            if !matches!(types.get(root), Some(TypeDef::Object(_))) {
                return Err(format!("the schema has no {root} type"));
            }
        }
        Ok(Self { types })
    }

    /// A named type.
    pub fn get(&self, name: &str) -> Option<&TypeDef> {
        self.types.get(name)
    }

    /// The fields of object type `name` (empty for others).
    pub fn fields(&self, name: &str) -> Option<&BTreeMap<String, Field>> {
        match self.types.get(name) {
            Some(TypeDef::Object(f)) => Some(f),
            _ => None,
        }
    }

    fn is_leaf(&self, name: &str) -> bool {
        matches!(self.types.get(name), Some(TypeDef::Scalar | TypeDef::Enum(_)))
    }

    fn is_input(&self, name: &str) -> bool {
        matches!(self.types.get(name), Some(TypeDef::Scalar | TypeDef::Enum(_) | TypeDef::Input(_)))
    }
}

/// One root field of an operation, ready to execute: its response key, its
/// name, its arguments coerced to JSON, and its selection.
#[derive(Debug, Clone)]
pub struct RootField {
    /// The alias, or the name.
    pub key: String,
    /// The field's name on `Query` / `Mutation`.
    pub name: String,
    /// The arguments (variables substituted, coerced to their types).
    pub args: Map<String, Value>,
    /// The field's type.
    pub ty: Ty,
    /// The selection below it, with fragments inlined.
    pub selection: Vec<Sel>,
}

/// A selected field with fragments inlined.
#[derive(Debug, Clone)]
pub struct Sel {
    /// The alias, or the name.
    pub key: String,
    /// The field's name.
    pub name: String,
    /// Its arguments (coerced).
    pub args: Map<String, Value>,
    /// Below it.
    pub selection: Vec<Sel>,
    /// Only on objects of this type (an inline fragment or a fragment's
    /// type condition), when it differs from the field's own type.
    pub on: Option<String>,
}

/// A checked operation.
#[derive(Debug, Clone)]
pub struct Operation {
    /// Whether it is a mutation.
    pub mutation: bool,
    /// Its root fields, in document order.
    pub fields: Vec<RootField>,
    /// The estimated complexity.
    pub complexity: f64,
}

/// Parses, validates and coerces a request `{query, variables, operationName}`.
/// Err: the errors graphql-js would answer (HTTP 400, nothing executed).
pub fn prepare(
    schema: &Schema,
    query: &str,
    variables: &Map<String, Value>,
    operation_name: Option<&str>,
) -> Result<Operation, Vec<GqlError>> {
    let doc = q::parse_query::<String>(query)
        .map_err(|e| vec![GqlError::new(format!("Syntax Error: {}", e.to_string().trim()), None)])?;
    let mut fragments = HashMap::new();
    let mut ops = Vec::new();
    for d in &doc.definitions {
        match d {
            q::Definition::Fragment(f) => {
                fragments.insert(f.name.clone(), f);
            }
            q::Definition::Operation(o) => ops.push(o),
        }
    }
    let name_of = |o: &q::OperationDefinition<'_, String>| match o {
        q::OperationDefinition::Query(x) => x.name.clone(),
        q::OperationDefinition::Mutation(x) => x.name.clone(),
        q::OperationDefinition::Subscription(x) => x.name.clone(),
        q::OperationDefinition::SelectionSet(_) => None,
    };
    let op = match operation_name {
        Some(n) => ops
            .iter()
            .find(|o| name_of(o).as_deref() == Some(n))
            .ok_or_else(|| vec![GqlError::new(format!("Unknown operation named \"{n}\"."), None)])?,
        None if ops.len() == 1 => &ops[0],
        None if ops.is_empty() => return Err(vec![GqlError::new("Must provide an operation.", None)]),
        None => {
            return Err(vec![GqlError::new("Must provide operation name if query contains multiple operations.", None)])
        }
    };
    let (root, var_defs, set, pos) = match op {
        q::OperationDefinition::Query(x) => ("Query", &x.variable_definitions[..], &x.selection_set, x.position),
        q::OperationDefinition::Mutation(x) => ("Mutation", &x.variable_definitions[..], &x.selection_set, x.position),
        q::OperationDefinition::SelectionSet(x) => ("Query", &[][..], x, x.span.0),
        q::OperationDefinition::Subscription(x) => {
            return Err(vec![GqlError::new("The emulator serves no subscriptions.", Some(x.position))])
        }
    };
    let mut errors = Vec::new();
    // Variables: of input types, coerced.
    let mut vars = Map::new();
    let mut declared = HashSet::new();
    for v in var_defs {
        declared.insert(v.name.clone());
        let ty = Ty::from_query(&v.var_type);
        if !schema.is_input(ty.name()) {
            errors.push(GqlError::new(
                format!("Variable \"${}\" cannot be non-input type \"{ty}\".", v.name),
                Some(v.position),
            ));
            continue;
        }
        let given = variables.get(&v.name);
        let value = match (given, &v.default_value) {
            (Some(g), _) => g.clone(),
            (None, Some(d)) => match literal(d, &Map::new()) {
                Ok(x) => x,
                Err(e) => {
                    errors.push(GqlError::new(e, Some(v.position)));
                    continue;
                }
            },
            (None, None) if ty.non_null() => {
                errors.push(GqlError::new(
                    format!("Variable \"${}\" of required type \"{ty}\" was not provided.", v.name),
                    Some(v.position),
                ));
                continue;
            }
            (None, None) => continue,
        };
        match coerce(schema, &ty, &value) {
            Ok(c) => {
                vars.insert(v.name.clone(), c);
            }
            Err(e) => errors.push(GqlError::new(
                format!("Variable \"${}\" got invalid value {}; {e}", v.name, preview(&value)),
                Some(v.position),
            )),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut cx = Cx { schema, fragments: &fragments, vars: &vars, declared: &declared, errors: Vec::new(), depth: 0 };
    let sels = cx.selection(root, set);
    let mut complexity = 0.0;
    let mut fields = Vec::new();
    let root_fields = schema.fields(root).cloned().unwrap_or_default();
    for sel in sels {
        let Some(f) = root_fields.get(&sel.name) else { continue };
        if sel.name == "__typename" {
            continue;
        }
        complexity += cost(schema, &f.ty, &sel.args, &sel.selection);
        fields.push(RootField {
            key: sel.key,
            name: sel.name,
            args: sel.args,
            ty: f.ty.clone(),
            selection: sel.selection,
        });
    }
    if !cx.errors.is_empty() {
        return Err(cx.errors);
    }
    if fields.is_empty() {
        return Err(vec![GqlError::new("The operation selects no field.", Some(pos))]);
    }
    Ok(Operation { mutation: root == "Mutation", fields, complexity })
}

/// A value shown in a message, bounded.
fn preview(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 200 {
        format!("{}…", s.chars().take(200).collect::<String>())
    } else {
        s
    }
}

struct Cx<'a> {
    schema: &'a Schema,
    fragments: &'a HashMap<String, &'a q::FragmentDefinition<'a, String>>,
    vars: &'a Map<String, Value>,
    declared: &'a HashSet<String>,
    errors: Vec<GqlError>,
    depth: usize,
}

impl Cx<'_> {
    /// The selection of `set` on type `parent`, checked, fragments inlined.
    fn selection(&mut self, parent: &str, set: &q::SelectionSet<'_, String>) -> Vec<Sel> {
        self.depth += 1;
        let mut out = Vec::new();
        if self.depth > 30 {
            self.errors.push(GqlError::new("The document is nested too deeply.", Some(set.span.0)));
            self.depth -= 1;
            return out;
        }
        for item in &set.items {
            match item {
                q::Selection::Field(f) => {
                    if let Some(sel) = self.field(parent, f) {
                        out.push(sel);
                    }
                }
                q::Selection::InlineFragment(i) => {
                    let on = match &i.type_condition {
                        Some(q::TypeCondition::On(t)) => t.clone(),
                        None => parent.to_owned(),
                    };
                    if self.schema.fields(&on).is_none() {
                        self.errors.push(GqlError::new(format!("Unknown type \"{on}\"."), Some(i.position)));
                        continue;
                    }
                    for mut s in self.selection(&on, &i.selection_set) {
                        if on != parent {
                            s.on.get_or_insert_with(|| on.clone());
                        }
                        out.push(s);
                    }
                }
                q::Selection::FragmentSpread(sp) => {
                    let Some(frag) = self.fragments.get(&sp.fragment_name).copied() else {
                        self.errors.push(GqlError::new(
                            format!("Unknown fragment \"{}\".", sp.fragment_name),
                            Some(sp.position),
                        ));
                        continue;
                    };
                    let q::TypeCondition::On(on) = &frag.type_condition;
                    if self.schema.fields(on).is_none() {
                        self.errors.push(GqlError::new(format!("Unknown type \"{on}\"."), Some(frag.position)));
                        continue;
                    }
                    for mut s in self.selection(on, &frag.selection_set) {
                        if on != parent {
                            s.on.get_or_insert_with(|| on.clone());
                        }
                        out.push(s);
                    }
                }
            }
        }
        self.depth -= 1;
        out
    }

    fn field(&mut self, parent: &str, f: &q::Field<'_, String>) -> Option<Sel> {
        let key = f.alias.clone().unwrap_or_else(|| f.name.clone());
        if f.name == "__typename" {
            return Some(Sel { key, name: f.name.clone(), args: Map::new(), selection: Vec::new(), on: None });
        }
        let def = match self.schema.fields(parent).and_then(|fs| fs.get(&f.name)) {
            Some(d) => d.clone(),
            None => {
                self.errors.push(GqlError::new(
                    format!("Cannot query field \"{}\" on type \"{parent}\".", f.name),
                    Some(f.position),
                ));
                return None;
            }
        };
        let mut args = Map::new();
        for (name, value) in &f.arguments {
            let Some(a) = def.args.get(name) else {
                self.errors.push(GqlError::new(
                    format!("Unknown argument \"{name}\" on field \"{parent}.{}\".", f.name),
                    Some(f.position),
                ));
                continue;
            };
            self.check_variables(value, f.position);
            let v = match literal(value, self.vars) {
                Ok(v) => v,
                Err(e) => {
                    self.errors.push(GqlError::new(e, Some(f.position)));
                    continue;
                }
            };
            // An absent variable is an absent argument.
            if matches!(value, q::Value::Variable(n) if !self.vars.contains_key(n)) {
                continue;
            }
            match coerce(self.schema, &a.ty, &v) {
                Ok(c) => {
                    args.insert(name.clone(), c);
                }
                Err(e) => self.errors.push(GqlError::new(
                    format!("Argument \"{name}\" of type \"{}\" has invalid value {}: {e}", a.ty, preview(&v)),
                    Some(f.position),
                )),
            }
        }
        for (name, a) in &def.args {
            if a.ty.non_null()
                && !a.has_default
                && !args.contains_key(name)
                && !f.arguments.iter().any(|(n, _)| n == name)
            {
                self.errors.push(GqlError::new(
                    format!(
                        "Field \"{}\" argument \"{name}\" of type \"{}\" is required, but it was not provided.",
                        f.name, a.ty
                    ),
                    Some(f.position),
                ));
            }
        }
        let inner = def.ty.name().to_owned();
        let selection = if self.schema.is_leaf(&inner) {
            if !f.selection_set.items.is_empty() {
                self.errors.push(GqlError::new(
                    format!(
                        "Field \"{}\" must not have a selection since type \"{}\" has no subfields.",
                        f.name, def.ty
                    ),
                    Some(f.position),
                ));
            }
            Vec::new()
        } else {
            if f.selection_set.items.is_empty() {
                self.errors.push(GqlError::new(
                    format!(
                        "Field \"{}\" of type \"{}\" must have a selection of subfields. Did you mean \"{} {{ ... }}\"?",
                        f.name, def.ty, f.name
                    ),
                    Some(f.position),
                ));
            }
            self.selection(&inner, &f.selection_set)
        };
        Some(Sel { key, name: f.name.clone(), args, selection, on: None })
    }

    fn check_variables(&mut self, v: &q::Value<'_, String>, pos: graphql_parser::Pos) {
        match v {
            q::Value::Variable(n) if !self.declared.contains(n) => {
                self.errors.push(GqlError::new(format!("Variable \"${n}\" is not defined."), Some(pos)));
            }
            q::Value::List(l) => l.iter().for_each(|x| self.check_variables(x, pos)),
            q::Value::Object(o) => o.values().for_each(|x| self.check_variables(x, pos)),
            _ => {}
        }
    }
}

/// A literal as JSON (variables substituted; an enum value as its name).
fn literal(v: &q::Value<'_, String>, vars: &Map<String, Value>) -> Result<Value, String> {
    Ok(match v {
        q::Value::Variable(n) => vars.get(n).cloned().unwrap_or(Value::Null),
        q::Value::Int(i) => Value::from(i.as_i64().ok_or("an integer out of range")?),
        q::Value::Float(f) => Number::from_f64(*f).map(Value::Number).ok_or("a float that is not finite")?,
        q::Value::String(s) => Value::String(s.clone()),
        q::Value::Boolean(b) => Value::Bool(*b),
        q::Value::Null => Value::Null,
        q::Value::Enum(e) => Value::String(e.clone()),
        q::Value::List(l) => Value::Array(l.iter().map(|x| literal(x, vars)).collect::<Result<_, _>>()?),
        q::Value::Object(o) => {
            Value::Object(o.iter().map(|(k, x)| Ok((k.clone(), literal(x, vars)?))).collect::<Result<_, String>>()?)
        }
    })
}

/// Input coercion of a JSON value to `ty` (graphql-js's rules): Err names
/// what is wrong.
pub fn coerce(schema: &Schema, ty: &Ty, v: &Value) -> Result<Value, String> {
    match ty {
        Ty::NonNull(inner) => {
            if v.is_null() {
                return Err(format!("Expected non-nullable type \"{ty}\" not to be null."));
            }
            coerce(schema, inner, v)
        }
        _ if v.is_null() => Ok(Value::Null),
        Ty::List(inner) => match v {
            Value::Array(a) => Ok(Value::Array(a.iter().map(|x| coerce(schema, inner, x)).collect::<Result<_, _>>()?)),
            // A single value is a list of one.
            other => Ok(Value::Array(vec![coerce(schema, inner, other)?])),
        },
        Ty::Named(name) => match schema.get(name) {
            Some(TypeDef::Scalar) => scalar(name, v),
            Some(TypeDef::Enum(values)) => match v.as_str() {
                Some(s) if values.contains(s) => Ok(v.clone()),
                _ => Err(format!("Value {} does not exist in \"{name}\" enum.", preview(v))),
            },
            Some(TypeDef::Input(fields)) => {
                let Some(obj) = v.as_object() else {
                    return Err(format!("Expected type \"{name}\" to be an object."));
                };
                let mut out = Map::new();
                for (k, x) in obj {
                    let Some(f) = fields.get(k) else {
                        return Err(format!("Field \"{k}\" is not defined by type \"{name}\"."));
                    };
                    out.insert(k.clone(), coerce(schema, &f.ty, x).map_err(|e| format!("At \"{name}.{k}\": {e}"))?);
                }
                for (k, f) in fields {
                    if f.ty.non_null() && !f.has_default && !obj.contains_key(k) {
                        return Err(format!("Field \"{name}.{k}\" of required type \"{}\" was not provided.", f.ty));
                    }
                }
                Ok(Value::Object(out))
            }
            _ => Err(format!("Unknown type \"{name}\".")),
        },
    }
}

/// Linear's scalars, as their `@specifiedBy` / descriptions say.
fn scalar(name: &str, v: &Value) -> Result<Value, String> {
    let bad = || Err(format!("{name} cannot represent value: {}", preview(v)));
    match name {
        "String" | "ID" => match v {
            Value::String(_) => Ok(v.clone()),
            Value::Number(n) if name == "ID" && n.is_i64() => Ok(Value::String(n.to_string())),
            _ => bad(),
        },
        "Int" => match v.as_i64() {
            Some(i) if i32::try_from(i).is_ok() => Ok(v.clone()),
            _ => Err(format!("Int cannot represent non-integer or out-of-range value: {}", preview(v))),
        },
        "Float" => {
            if v.is_number() {
                Ok(v.clone())
            } else {
                bad()
            }
        }
        "Boolean" => {
            if v.is_boolean() {
                Ok(v.clone())
            } else {
                bad()
            }
        }
        "UUID" => match v.as_str() {
            Some(s) if is_uuid(s) => Ok(v.clone()),
            _ => bad(),
        },
        "TimelessDate" => match v.as_str() {
            Some(s) if jiff::civil::Date::strptime("%Y-%m-%d", s).is_ok() && s.len() == 10 => Ok(v.clone()),
            _ => bad(),
        },
        "DateTime" => match v.as_str() {
            Some(s) if s.parse::<jiff::Timestamp>().is_ok() => Ok(v.clone()),
            _ => bad(),
        },
        "DateTimeOrDuration" => match v.as_str() {
            Some(s) if s.parse::<jiff::Timestamp>().is_ok() || s.parse::<jiff::Span>().is_ok() => Ok(v.clone()),
            _ => bad(),
        },
        "JSON" => Ok(v.clone()),
        "JSONObject" => {
            if v.is_object() {
                Ok(v.clone())
            } else {
                bad()
            }
        }
        // Other custom scalars: strings.
        _ => {
            if v.is_string() || v.is_number() || v.is_boolean() {
                Ok(v.clone())
            } else {
                bad()
            }
        }
    }
}

/// A UUID in its canonical 8-4-4-4-12 hex form.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter()
            .enumerate()
            .all(|(i, c)| if [8, 13, 18, 23].contains(&i) { *c == b'-' } else { c.is_ascii_hexdigit() })
}

/// A UUID of version 4 (`…-4xxx-[89ab]xxx-…`), as `IssueCreateInput.id` asks.
pub fn is_uuid_v4(s: &str) -> bool {
    is_uuid(s) && s.as_bytes()[14] == b'4' && matches!(s.as_bytes()[19].to_ascii_lowercase(), b'8' | b'9' | b'a' | b'b')
}

/// The complexity of selecting `selection` under a field of type `ty`
/// (Linear's rule of thumb: 1 per object, 0.1 per scalar field, a
/// connection's nodes times its page size, 50 by default).
fn cost(schema: &Schema, ty: &Ty, args: &Map<String, Value>, selection: &[Sel]) -> f64 {
    if schema.is_leaf(ty.name()) {
        return 0.1;
    }
    let mut inner = 1.0;
    let fields = schema.fields(ty.name()).cloned().unwrap_or_default();
    for s in selection {
        let t = match fields.get(&s.name) {
            Some(f) => f.ty.clone(),
            None => match s.on.as_deref().and_then(|on| schema.fields(on)).and_then(|f| f.get(&s.name)) {
                Some(f) => f.ty.clone(),
                None => continue,
            },
        };
        inner += cost(schema, &t, &s.args, &s.selection);
    }
    if ty.name().ends_with("Connection") {
        let page = args.get("first").or_else(|| args.get("last")).and_then(Value::as_f64).unwrap_or(50.0);
        inner * page.max(1.0)
    } else {
        inner
    }
}

/// Projects `value` (everything the emulator knows of an object, nested
/// objects and connections included) onto `selection` for a field of type
/// `ty`. A selected field the value lacks is null when the schema lets it
/// be; a non-null one the emulator does not keep is an error naming it.
pub fn project(schema: &Schema, ty: &Ty, value: &Value, selection: &[Sel]) -> Result<Value, String> {
    match (ty, value) {
        (Ty::NonNull(inner), v) => {
            if v.is_null() {
                return Err(format!("Cannot return null for non-nullable type \"{ty}\"."));
            }
            project(schema, inner, v, selection)
        }
        (_, Value::Null) => Ok(Value::Null),
        (Ty::List(inner), Value::Array(a)) => {
            Ok(Value::Array(a.iter().map(|x| project(schema, inner, x, selection)).collect::<Result<_, _>>()?))
        }
        (Ty::List(_), other) => Err(format!("expected a list, the emulator holds {}", preview(other))),
        (Ty::Named(name), v) if schema.is_leaf(name) => Ok(v.clone()),
        (Ty::Named(name), Value::Object(obj)) => {
            let typename = obj.get("__typename").and_then(Value::as_str).unwrap_or(name).to_owned();
            let fields = schema.fields(&typename).or_else(|| schema.fields(name)).cloned().unwrap_or_default();
            let mut out = Map::new();
            for s in selection {
                if s.on.as_deref().is_some_and(|on| on != typename) {
                    continue;
                }
                if s.name == "__typename" {
                    out.insert(s.key.clone(), Value::String(typename.clone()));
                    continue;
                }
                let Some(f) = fields.get(&s.name) else { continue };
                let got = obj.get(&s.name).cloned().unwrap_or(Value::Null);
                if got.is_null() && f.ty.non_null() {
                    return Err(format!("the emulator does not implement the field {typename}.{}", s.name));
                }
                let v = project(schema, &f.ty, &got, &s.selection)?;
                // Two selections of one key (fragments) merge.
                match (out.get_mut(&s.key), v) {
                    (Some(Value::Object(a)), Value::Object(b)) => a.extend(b),
                    (_, v) => {
                        out.insert(s.key.clone(), v);
                    }
                }
            }
            Ok(Value::Object(out))
        }
        (Ty::Named(name), other) => {
            Err(format!("expected an object of type {name}, the emulator holds {}", preview(other)))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run(query: &str, vars: Value) -> Result<Operation, Vec<String>> {
        let vars = vars.as_object().cloned().unwrap_or_default();
        prepare(schema(), query, &vars, None).map_err(|e| e.into_iter().map(|e| e.message).collect())
    }

    #[test]
    fn the_published_schema_has_what_the_adapter_uses() {
        let s = schema();
        let m = s.fields("Mutation").unwrap();
        for f in ["issueCreate", "issueUpdate", "issueDelete", "issueArchive", "issueBatchUpdate", "issueBatchCreate"] {
            assert!(m.contains_key(f), "{f}");
        }
        assert!(
            matches!(s.get("IssueCreateInput"), Some(TypeDef::Input(f)) if f["teamId"].ty.to_string() == "String!")
        );
        assert_eq!(m["issueBatchUpdate"].args["ids"].ty.to_string(), "[UUID!]!");
    }

    #[test]
    fn valid_documents_are_accepted_with_variables_coerced() {
        let op = run(
            "mutation M($i: IssueCreateInput!) { a: issueCreate(input: $i) { success issue { id title state { name } } } }",
            json!({"i": {"teamId": "t", "title": "x", "id": "0a1b2c3d-0000-4000-8000-000000000000", "priority": 2}}),
        )
        .unwrap();
        assert!(op.mutation);
        assert_eq!(op.fields[0].key, "a");
        assert_eq!(op.fields[0].args["input"]["priority"], 2);
        let op = run(
            "query { issues(first: 10, filter: {updatedAt: {gt: \"2026-01-01T00:00:00Z\"}}, orderBy: updatedAt) { nodes { ...F } pageInfo { hasNextPage endCursor } } } fragment F on Issue { id updatedAt }",
            json!({}),
        )
        .unwrap();
        assert_eq!(op.fields[0].selection[0].selection.len(), 2, "the fragment is inlined");
        assert!(op.complexity >= 10.0, "a connection costs its page: {}", op.complexity);
    }

    #[test]
    fn unknown_fields_arguments_and_input_fields_are_refused_as_graphql_js_words_it() {
        let e = run("{ issue(id: \"x\") { id colour } }", json!({})).unwrap_err();
        assert_eq!(e, ["Cannot query field \"colour\" on type \"Issue\"."]);
        let e = run("{ issue(id: \"x\", shade: 1) { id } }", json!({})).unwrap_err();
        assert_eq!(e, ["Unknown argument \"shade\" on field \"Query.issue\"."]);
        let e = run("{ issue { id } }", json!({})).unwrap_err();
        assert_eq!(e, ["Field \"issue\" argument \"id\" of type \"String!\" is required, but it was not provided."]);
        let e = run("{ issue(id: \"x\") }", json!({})).unwrap_err();
        assert!(e[0].starts_with("Field \"issue\" of type \"Issue!\" must have a selection of subfields"), "{e:?}");
        let e = run("{ issue(id: \"x\") { title { a } } }", json!({})).unwrap_err();
        assert!(e[0].contains("must not have a selection"), "{e:?}");
        let e = run(
            "mutation($i: IssueCreateInput!) { issueCreate(input: $i) { success } }",
            json!({"i": {"teamId": "t", "colour": "red"}}),
        )
        .unwrap_err();
        assert!(e[0].contains("Field \"colour\" is not defined by type \"IssueCreateInput\""), "{e:?}");
        let e =
            run("mutation($i: IssueCreateInput!) { issueCreate(input: $i) { success } }", json!({"i": {"title": "x"}}))
                .unwrap_err();
        assert!(
            e[0].contains("Field \"IssueCreateInput.teamId\" of required type \"String!\" was not provided"),
            "{e:?}"
        );
        let e = run(
            "mutation($i: IssueCreateInput!) { issueCreate(input: $i) { success } }",
            json!({"i": {"teamId": "t", "priority": "high"}}),
        )
        .unwrap_err();
        assert!(e[0].contains("Int cannot represent"), "{e:?}");
        let e = run(
            "mutation($i: IssueCreateInput!) { issueCreate(input: $i) { success } }",
            json!({"i": {"teamId": "t", "dueDate": "2026-13-40"}}),
        )
        .unwrap_err();
        assert!(e[0].contains("TimelessDate cannot represent"), "{e:?}");
        let e = run("mutation { issueBatchUpdate(ids: [\"nope\"], input: {}) { success } }", json!({})).unwrap_err();
        assert!(e[0].contains("UUID cannot represent"), "{e:?}");
        let e = run("{ issue(id: $x) { id } }", json!({})).unwrap_err();
        assert_eq!(e, ["Variable \"$x\" is not defined."]);
        let e = run("mutation($i: IssueCreateInput!) { issueCreate(input: $i) { success } }", json!({})).unwrap_err();
        assert!(e[0].contains("was not provided"), "{e:?}");
        let e = run("{ issue(id: \"x\") { id }", json!({})).unwrap_err();
        assert!(e[0].starts_with("Syntax Error"), "{e:?}");
        assert!(run("query A { viewer { id } } query B { viewer { id } }", json!({})).is_err());
    }

    #[test]
    fn answers_are_projected_onto_the_selection() {
        let op = run("{ issue(id: \"x\") { id t: title state { name } __typename } }", json!({})).unwrap();
        let f = &op.fields[0];
        let full = json!({"id": "x", "title": "T", "description": "d", "state": {"id": "s", "name": "Todo", "type": "unstarted"}});
        let v = project(schema(), &f.ty, &full, &f.selection).unwrap();
        assert_eq!(v, json!({"id": "x", "t": "T", "state": {"name": "Todo"}, "__typename": "Issue"}));
        let op = run("{ issue(id: \"x\") { id branchName } }", json!({})).unwrap();
        let e = project(schema(), &op.fields[0].ty, &full, &op.fields[0].selection).unwrap_err();
        assert!(e.contains("Issue.branchName"), "{e}");
    }
}
