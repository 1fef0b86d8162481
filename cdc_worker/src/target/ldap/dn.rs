//! Distinguished names (RFC 4514) and the DN templates a definition's list
//! holds: `uid={uid},ou=People` names an entry by its first RDN, whose value
//! is made of `{field}` placeholders (mapped fields) and literal text, under
//! a container relative to the target's `base_dn` (`{base}` at the end is
//! optional: the base is appended when absent).

use std::borrow::Cow;

/// One piece of a template's naming value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Literal text (unescaped).
    Text(String),
    /// A mapped field's value.
    Field(String),
}

/// A definition's list parsed as a DN template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The naming attribute (`uid`).
    pub attr: String,
    /// Its value's pieces.
    pub parts: Vec<Part>,
    /// The container relative to the base (`ou=People`; empty: the base).
    pub container: String,
}

/// Splits `s` at every unescaped `sep` (a backslash escapes the next
/// character); the pieces keep their escapes.
fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    out.push(&s[start..]);
    out
}

/// Whether `s` is an attribute type name (a descriptor: a letter, then
/// letters, digits and hyphens) or a numeric OID.
fn is_attr_name(s: &str) -> bool {
    let descr = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let oid = !s.is_empty() && s.split('.').all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    descr || oid
}

/// An RDN value's escapes undone: `\,` → `,`, `\2c` → `,` (hex pairs are
/// bytes of UTF-8).
pub fn unescape(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if i + 2 < b.len() {
                if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
            }
            out.push(b[i + 1]);
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Template {
    /// Parses a definition's list: `attr=value{field}…[,container…][,{base}]`.
    pub fn parse(list: &str) -> Result<Self, String> {
        let bad =
            |why: String| format!("the list {list:?} is not a DN template ({why}); write e.g. uid={{uid}},ou=People");
        let mut rdns = split_unescaped(list, ',');
        if rdns.last().is_some_and(|r| r.trim() == "{base}") {
            rdns.pop();
        }
        let first = rdns.first().map(|s| s.trim()).unwrap_or("");
        if split_unescaped(first, '+').len() > 1 {
            return Err(bad("a multi-valued first RDN (with +) is not supported".into()));
        }
        let Some((attr, value)) = first.split_once('=') else {
            return Err(bad("its first RDN has no attribute=value".into()));
        };
        let attr = attr.trim();
        if !is_attr_name(attr) {
            return Err(bad(format!("{attr:?} is not an attribute name")));
        }
        let mut parts = Vec::new();
        let mut rest = value.trim();
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let Some(end) = rest.find('}') else {
                        return Err(bad("a { without }".into()));
                    };
                    let field = rest[1..end].trim();
                    if !is_attr_name(field) {
                        return Err(bad(format!("{{{field}}} does not name a field")));
                    }
                    parts.push(Part::Field(field.to_owned()));
                    rest = &rest[end + 1..];
                }
                Some(i) => {
                    parts.push(Part::Text(unescape(&rest[..i])));
                    rest = &rest[i..];
                }
                None => {
                    parts.push(Part::Text(unescape(rest)));
                    rest = "";
                }
            }
        }
        if parts.is_empty() {
            return Err(bad("the naming value is empty".into()));
        }
        let container: Vec<&str> = rdns[1..].iter().map(|r| r.trim()).collect();
        for r in &container {
            if r.contains('{') || !r.contains('=') {
                return Err(bad(format!("{r:?} is not an RDN of the container (placeholders go in the first RDN)")));
            }
        }
        Ok(Self { attr: attr.to_owned(), parts, container: container.join(",") })
    }

    /// The fields the naming value is made of.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(f) => Some(f.as_str()),
            Part::Text(_) => None,
        })
    }

    /// The naming value (unescaped) from each field's value; Err names a
    /// field without one.
    pub fn value<'a>(&self, lookup: impl Fn(&str) -> Option<Cow<'a, str>>) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => match lookup(f) {
                    Some(v) if !v.is_empty() => out.push_str(&v),
                    _ => return Err(format!("the naming field {f} of the DN template has no value")),
                },
            }
        }
        if out.trim().is_empty() {
            return Err("the DN template's naming value is empty".into());
        }
        Ok(out)
    }

    /// The RDN for a naming value: `attr=` and the value escaped (RFC 4514).
    pub fn rdn(&self, value: &str) -> String {
        format!("{}={}", self.attr, ldap3::dn_escape(value))
    }

    /// The container's full DN under `base`.
    pub fn parent(&self, base: &str) -> String {
        under(&self.container, base)
    }
}

/// `relative,base` (`base` alone when `relative` is empty).
pub fn under(relative: &str, base: &str) -> String {
    if relative.trim().is_empty() {
        base.to_owned()
    } else {
        format!("{},{base}", relative.trim())
    }
}

/// A DN's first RDN and its parent (as written).
pub fn split_first(dn: &str) -> (&str, &str) {
    let mut escaped = false;
    for (i, c) in dn.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            return (&dn[..i], &dn[i + 1..]);
        }
    }
    (dn, "")
}

/// A DN in a form to compare: per RDN, its attribute=value pairs with the
/// types lower-cased and the values unescaped, trimmed and lower-cased
/// (naming attributes match without case: cn, uid, ou, dc), sorted.
pub fn normalize(dn: &str) -> Vec<Vec<(String, String)>> {
    normal_form(dn, true)
}

/// Whether two DNs are the same but for escaping, spaces and the case of
/// attribute types (a change of a value's case is a rename).
pub fn exact(a: &str, b: &str) -> bool {
    normal_form(a, false) == normal_form(b, false)
}

fn normal_form(dn: &str, fold: bool) -> Vec<Vec<(String, String)>> {
    split_unescaped(dn, ',')
        .into_iter()
        .filter(|r| !r.trim().is_empty())
        .map(|rdn| {
            let mut avas: Vec<(String, String)> = split_unescaped(rdn, '+')
                .into_iter()
                .map(|ava| {
                    let (t, v) = ava.split_once('=').unwrap_or((ava, ""));
                    let v = unescape(v.trim());
                    (t.trim().to_ascii_lowercase(), if fold { v.to_lowercase() } else { v })
                })
                .collect();
            avas.sort();
            avas
        })
        .collect()
}

/// Whether two DNs name the same entry (see [`normalize`]).
pub fn same(a: &str, b: &str) -> bool {
    normalize(a) == normalize(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_into_naming_value_and_container() {
        let t = Template::parse("uid={uid},ou=People").unwrap();
        assert_eq!(t.attr, "uid");
        assert_eq!(t.parts, vec![Part::Field("uid".into())]);
        assert_eq!(t.container, "ou=People");
        assert_eq!(t.parent("dc=example,dc=com"), "ou=People,dc=example,dc=com");
        let t = Template::parse("cn={givenName} {sn},ou=Staff,ou=People,{base}").unwrap();
        assert_eq!(t.fields().collect::<Vec<_>>(), ["givenName", "sn"]);
        assert_eq!(t.container, "ou=Staff,ou=People");
        let t = Template::parse("cn={cn}").unwrap();
        assert_eq!(t.parent("dc=x"), "dc=x");
        for bad in
            ["People", "uid={uid", "uid=", "uid={a b}", "uid={uid}+cn={cn},ou=P", "uid={uid},ou={ou}", "1x={uid}"]
        {
            let e = Template::parse(bad).unwrap_err();
            assert!(e.contains("not a DN template"), "{bad}: {e}");
        }
    }

    #[test]
    fn naming_values_are_escaped_per_rfc_4514() {
        let t = Template::parse("uid={uid},ou=People").unwrap();
        let v = t.value(|_| Some(Cow::Borrowed("#smith, j+r \"x\"<y>;\\z "))).unwrap();
        let rdn = t.rdn(&v);
        assert_eq!(rdn, "uid=\\23smith\\2c j\\2br \\22x\\22\\3cy\\3e\\3b\\5cz\\20");
        // Round trip: the escaped value reads back as the original.
        assert_eq!(unescape(&rdn["uid=".len()..]), v);
        assert_eq!(t.rdn("Zoë 東京"), "uid=Zoë 東京");
        assert!(t.value(|_| None).unwrap_err().contains("naming field uid"));
        assert!(t.value(|_| Some(Cow::Borrowed(""))).is_err());
    }

    #[test]
    fn dns_compare_without_case_or_escaping_differences() {
        assert!(same("uid=A\\2cB,ou=People,dc=Example,dc=com", "UID=a\\,b, ou=people,DC=example,dc=com"));
        assert!(!same("uid=a,ou=People,dc=x", "uid=a,ou=Disabled,dc=x"));
        assert_eq!(split_first("uid=a\\,b,ou=P,dc=x"), ("uid=a\\,b", "ou=P,dc=x"));
        assert_eq!(split_first("dc=x"), ("dc=x", ""));
        assert_eq!(unescape("caf\\c3\\a9"), "café");
    }
}
