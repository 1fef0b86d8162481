//! Plain text (a column's value, Markdown-like) to Atlassian Document
//! Format and back, for Jira's `description`.
//!
//! What is understood, line by line: paragraphs (separated by a blank line;
//! the lines of one paragraph are joined with hard breaks), headings
//! (`# ` to `###### `), bullet lists (`- ` or `* `), numbered lists (`1. `,
//! the first number is the list's `order`), fenced code blocks (```` ```lang ````
//! … ```` ``` ````), and inline links `[text](https://…)`, bare `http(s)://`
//! URLs and `` `code` ``. Everything else is text, kept as it is. [`to_text`]
//! writes the same forms back, so `to_text(to_adf(s)) == s` for text already
//! in the normal form (one blank line between blocks, no trailing spaces).

use serde_json::{json, Value};

/// The ADF document of `text` (`None` for empty text: no description).
pub fn to_adf(text: &str) -> Option<Value> {
    let text = text.replace("\r\n", "\n");
    if text.trim().is_empty() {
        return None;
    }
    let lines: Vec<&str> = text.split('\n').collect();
    let mut content: Vec<Value> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim().is_empty() {
            i += 1;
            continue;
        }
        if let Some(lang) = line.strip_prefix("```") {
            let mut code: Vec<&str> = Vec::new();
            i += 1;
            while i < lines.len() && lines[i] != "```" {
                code.push(lines[i]);
                i += 1;
            }
            i += 1; // the closing fence (or the end)
            let body = code.join("\n");
            let mut block = json!({"type": "codeBlock"});
            if !lang.trim().is_empty() {
                block["attrs"] = json!({"language": lang.trim()});
            }
            if !body.is_empty() {
                block["content"] = json!([{"type": "text", "text": body}]);
            }
            content.push(block);
            continue;
        }
        if let Some((level, rest)) = heading(line) {
            content.push(json!({"type": "heading", "attrs": {"level": level}, "content": inline(rest)}));
            i += 1;
            continue;
        }
        if bullet(line).is_some() || numbered(line).is_some() {
            let ordered = numbered(line).is_some();
            let mut items = Vec::new();
            let first = numbered(line).map(|(n, _)| n);
            while i < lines.len() {
                let item = if ordered { numbered(lines[i]).map(|(_, r)| r) } else { bullet(lines[i]) };
                let Some(item) = item else { break };
                items.push(json!({"type": "listItem", "content": [paragraph(&[item])]}));
                i += 1;
            }
            let mut list = json!({"type": if ordered { "orderedList" } else { "bulletList" }, "content": items});
            if let Some(n) = first.filter(|n| *n != 1) {
                list["attrs"] = json!({"order": n});
            }
            content.push(list);
            continue;
        }
        let mut para: Vec<&str> = Vec::new();
        while i < lines.len() {
            let l = lines[i];
            if l.trim().is_empty() || l.starts_with("```") || heading(l).is_some() || bullet(l).is_some() {
                break;
            }
            if numbered(l).is_some() && !para.is_empty() {
                break;
            }
            para.push(l);
            i += 1;
        }
        content.push(paragraph(&para));
    }
    Some(json!({"version": 1, "type": "doc", "content": content}))
}

fn heading(line: &str) -> Option<(usize, &str)> {
    let level = line.bytes().take_while(|b| *b == b'#').count();
    let rest = line.get(level..)?.strip_prefix(' ')?;
    ((1..=6).contains(&level) && !rest.trim().is_empty()).then_some((level, rest))
}

fn bullet(line: &str) -> Option<&str> {
    line.strip_prefix("- ").or_else(|| line.strip_prefix("* "))
}

fn numbered(line: &str) -> Option<(u64, &str)> {
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 9 {
        return None;
    }
    let rest = line[digits..].strip_prefix(". ")?;
    Some((line[..digits].parse().ok()?, rest))
}

/// A paragraph of lines joined by hard breaks.
fn paragraph(lines: &[&str]) -> Value {
    let mut content = Vec::new();
    for (n, l) in lines.iter().enumerate() {
        if n > 0 {
            content.push(json!({"type": "hardBreak"}));
        }
        content.extend(inline(l));
    }
    if content.is_empty() {
        json!({"type": "paragraph"})
    } else {
        json!({"type": "paragraph", "content": content})
    }
}

/// Text nodes of one line: links and inline code marked.
fn inline(s: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut plain = String::new();
    let mut rest = s;
    while !rest.is_empty() {
        if let Some((text, href, after)) = md_link(rest) {
            flush(&mut out, &mut plain);
            out.push(json!({"type": "text", "text": text, "marks": [{"type": "link", "attrs": {"href": href}}]}));
            rest = after;
            continue;
        }
        if rest.starts_with("http://") || rest.starts_with("https://") {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let url = &rest[..end];
            flush(&mut out, &mut plain);
            out.push(json!({"type": "text", "text": url, "marks": [{"type": "link", "attrs": {"href": url}}]}));
            rest = &rest[end..];
            continue;
        }
        if let Some(code) = rest.strip_prefix('`') {
            if let Some(end) = code.find('`').filter(|e| *e > 0) {
                flush(&mut out, &mut plain);
                out.push(json!({"type": "text", "text": &code[..end], "marks": [{"type": "code"}]}));
                rest = &code[end + 1..];
                continue;
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        plain.push(c);
        rest = &rest[c.len_utf8()..];
    }
    flush(&mut out, &mut plain);
    out
}

fn flush(out: &mut Vec<Value>, plain: &mut String) {
    if !plain.is_empty() {
        out.push(json!({"type": "text", "text": std::mem::take(plain)}));
    }
}

/// `[text](http…)` at the start of `s`: the text, the URL and what follows.
fn md_link(s: &str) -> Option<(&str, &str, &str)> {
    let inner = s.strip_prefix('[')?;
    let close = inner.find("](")?;
    let text = &inner[..close];
    let after = &inner[close + 2..];
    let end = after.find(')')?;
    let href = &after[..end];
    let ok = !text.is_empty()
        && !text.contains('[')
        && (href.starts_with("http://") || href.starts_with("https://") || href.starts_with("mailto:"))
        && !href.contains(char::is_whitespace);
    ok.then_some((text, href, &after[end + 1..]))
}

/// The text of an ADF document (the forms [`to_adf`] reads; other nodes
/// give their text).
pub fn to_text(doc: &Value) -> String {
    let blocks: Vec<String> = children(doc).iter().map(block).collect();
    blocks.join("\n\n")
}

fn children(v: &Value) -> &[Value] {
    v.get("content").and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn block(b: &Value) -> String {
    match b.get("type").and_then(Value::as_str).unwrap_or("") {
        "codeBlock" => {
            let lang = b.pointer("/attrs/language").and_then(Value::as_str).unwrap_or("");
            let body: String = children(b).iter().filter_map(|t| t.get("text").and_then(Value::as_str)).collect();
            format!("```{lang}\n{body}\n```")
        }
        "heading" => {
            let level = b.pointer("/attrs/level").and_then(Value::as_u64).unwrap_or(1).clamp(1, 6) as usize;
            format!("{} {}", "#".repeat(level), inline_text(b))
        }
        "bulletList" => children(b).iter().map(|i| format!("- {}", item_text(i))).collect::<Vec<_>>().join("\n"),
        "orderedList" => {
            let start = b.pointer("/attrs/order").and_then(Value::as_u64).unwrap_or(1);
            children(b)
                .iter()
                .enumerate()
                .map(|(n, i)| format!("{}. {}", start + n as u64, item_text(i)))
                .collect::<Vec<_>>()
                .join("\n")
        }
        "paragraph" => inline_text(b),
        _ => {
            if children(b).iter().any(|c| c.get("type").and_then(Value::as_str) == Some("text")) {
                inline_text(b)
            } else {
                children(b).iter().map(block).collect::<Vec<_>>().join("\n\n")
            }
        }
    }
}

fn item_text(item: &Value) -> String {
    children(item).iter().map(block).collect::<Vec<_>>().join(" ")
}

fn inline_text(b: &Value) -> String {
    let mut s = String::new();
    for n in children(b) {
        match n.get("type").and_then(Value::as_str).unwrap_or("") {
            "hardBreak" => s.push('\n'),
            "text" => {
                let text = n.get("text").and_then(Value::as_str).unwrap_or("");
                let marks = n.get("marks").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
                let link = marks.iter().find(|m| m["type"] == "link").and_then(|m| m.pointer("/attrs/href"));
                let code = marks.iter().any(|m| m["type"] == "code");
                match link.and_then(Value::as_str) {
                    Some(href) if href == text => s.push_str(text),
                    Some(href) => s.push_str(&format!("[{text}]({href})")),
                    None if code => s.push_str(&format!("`{text}`")),
                    None => s.push_str(text),
                }
            }
            "mention" => s.push_str(n.pointer("/attrs/text").and_then(Value::as_str).unwrap_or("")),
            "emoji" => s.push_str(n.pointer("/attrs/text").and_then(Value::as_str).unwrap_or("")),
            _ => s.push_str(&inline_text(n)),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_lists_code_and_links_go_to_adf_and_back() {
        let text = "First line\nsecond line of the same paragraph\n\n\
                    # Title\n\n\
                    - one\n- two with [a link](https://example.com/a?b=1)\n\n\
                    3. three\n4. four\n\n\
                    ```rust\nfn main() {\n\n    println!(\"hi\");\n}\n```\n\n\
                    See https://example.org/x and `x < y` — ünïcødé ✓";
        let doc = to_adf(text).unwrap();
        assert_eq!(doc["version"], 1);
        assert_eq!(doc["type"], "doc");
        let types: Vec<&str> = doc["content"].as_array().unwrap().iter().map(|b| b["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["paragraph", "heading", "bulletList", "orderedList", "codeBlock", "paragraph"]);
        assert_eq!(doc["content"][0]["content"][1]["type"], "hardBreak");
        assert_eq!(doc["content"][3]["attrs"]["order"], 3);
        assert_eq!(doc["content"][4]["attrs"]["language"], "rust");
        assert_eq!(doc["content"][4]["content"][0]["text"], "fn main() {\n\n    println!(\"hi\");\n}");
        let link = &doc["content"][2]["content"][1]["content"][0]["content"][1];
        assert_eq!(link["text"], "a link");
        assert_eq!(link["marks"][0]["attrs"]["href"], "https://example.com/a?b=1");
        assert_eq!(to_text(&doc), text);
    }

    #[test]
    fn empty_text_is_no_description_and_odd_text_stays_text() {
        assert_eq!(to_adf(""), None);
        assert_eq!(to_adf(" \n\n "), None);
        for s in ["[not a link](javascript:alert(1))", "a ` lone backtick", "#nospace", "-dash", "12.5 percent", "```"]
        {
            let doc = to_adf(s).unwrap();
            let back = to_text(&doc);
            if s == "```" {
                assert_eq!(doc["content"][0]["type"], "codeBlock");
            } else {
                assert_eq!(back, s);
            }
        }
        // Every text node is non-empty (ADF refuses empty ones).
        let doc = to_adf("a\n\n\n\nb\n``\n- \n").unwrap();
        let s = doc.to_string();
        assert!(!s.contains("\"text\":\"\""), "{s}");
    }
}
