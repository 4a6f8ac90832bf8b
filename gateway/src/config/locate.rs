//! Map between byte offsets in a TOML file and field paths, so that every
//! error, from serde or from validation, names both the line and the field.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

impl Seg {
    /// A key segment.
    pub fn key(k: &str) -> Seg {
        Seg::Key(k.to_string())
    }
}

/// `frontends.web.routes[0].upstream`; keys that are not plain words are quoted.
pub fn display_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                if !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    out.push_str(k);
                } else {
                    out.push_str(&format!("{k:?}"));
                }
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The path of the innermost field whose key or value covers `offset`.
pub fn path_at(text: &str, offset: usize) -> String {
    let Ok(doc) = DeTable::parse(text) else {
        return String::new();
    };
    let mut path = Vec::new();
    find_in_table(doc.get_ref(), offset, &mut path)
        .map(|p| display_path(&p))
        .unwrap_or_default()
}

// Table headers give implicit tables spans that do not cover their bodies,
// so search every branch rather than only the spans that contain `offset`.
fn find_in_table(table: &DeTable<'_>, offset: usize, path: &mut Vec<Seg>) -> Option<Vec<Seg>> {
    for (k, v) in table.iter() {
        path.push(Seg::Key(k.get_ref().to_string()));
        if let Some(found) = find_in_value(v.get_ref(), offset, path) {
            return Some(found);
        }
        if contains(&k.span(), offset) || contains(&v.span(), offset) {
            return Some(path.clone());
        }
        path.pop();
    }
    None
}

fn find_in_value(value: &DeValue<'_>, offset: usize, path: &mut Vec<Seg>) -> Option<Vec<Seg>> {
    match value {
        DeValue::Table(t) => find_in_table(t, offset, path),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                if let Some(found) = find_in_value(item.get_ref(), offset, path) {
                    return Some(found);
                }
                if contains(&item.span(), offset) {
                    return Some(path.clone());
                }
                path.pop();
            }
            None
        }
        _ => None,
    }
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

/// The span of the field at `path`: the value's span, or the closest ancestor
/// that exists when the field itself was left out.
pub fn span_at(text: &str, path: &[Seg]) -> Option<Range<usize>> {
    let doc = DeTable::parse(text).ok()?;
    let mut best: Option<Range<usize>> = None;
    let root = DeValue::Table(doc.into_inner());
    let mut current = &root;
    for seg in path {
        let next = match (seg, current) {
            (Seg::Key(k), DeValue::Table(t)) => t
                .iter()
                .find(|(key, _)| key.get_ref() == k)
                .map(|(key, v)| (key.span(), v)),
            (Seg::Index(i), DeValue::Array(a)) => a.get(*i).map(|v| (v.span(), v)),
            _ => None,
        };
        match next {
            Some((key_span, v)) => {
                // Point at the value for scalars, at the key for tables and arrays.
                best = Some(match v.get_ref() {
                    DeValue::Table(_) | DeValue::Array(_) => key_span,
                    _ => v.span(),
                });
                current = v.get_ref();
            }
            None => break,
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str =
        "[upstreams.a]\nendpoints = [\"x:1\"]\n\n[[frontends.web.routes]]\nupstream = \"nope\"\n";

    #[test]
    fn finds_path_for_offset() {
        let off = DOC.find("\"nope\"").unwrap_or(0);
        assert_eq!(path_at(DOC, off), "frontends.web.routes[0].upstream");
    }

    #[test]
    fn finds_span_for_path() {
        let path = [
            Seg::key("frontends"),
            Seg::key("web"),
            Seg::key("routes"),
            Seg::Index(0),
            Seg::key("upstream"),
        ];
        let span = span_at(DOC, &path).unwrap_or(0..0);
        assert_eq!(&DOC[span], "\"nope\"");
    }
}
