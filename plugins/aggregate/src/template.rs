//! Call paths with placeholders: `/orders?user={header.x-user-id}&limit={query.limit|5}`.
//!
//! A placeholder is `{SOURCE}` or `{SOURCE|DEFAULT}`:
//!
//! | source | value |
//! |---|---|
//! | `path.NAME` | the parameter `{NAME}` of the plugin's `pattern`, percent-decoded |
//! | `query.NAME` | the first `NAME=` of the client's query string, decoded |
//! | `header.NAME` | the first value of the client's request header `NAME` |
//! | `method` | the client's method |
//! | `item` | in a call with `for_each`: the value this call is made for |
//! | `CALL.a.b[].c` | values from the JSON result of call `CALL` of an earlier stage |
//!
//! A result path is the call's name followed by `.key` steps and `[]` steps
//! (`[]`: every element of an array). It yields every string, number and
//! boolean it reaches, distinct, in document order; other values are
//! skipped. Several values are joined with `,`.
//!
//! An empty value counts as missing; the default (which may be empty:
//! `{query.q|}`) stands in for a missing value, and also for the result of a
//! call that failed. Values are percent-encoded for where they land: in the
//! path, everything but unreserved characters and `!$&'()*+;=:@` is encoded
//! (so `/` is `%2F`); in the query, everything but unreserved characters and
//! `!$'()*;:@/?` (so `&`, `=`, `+` and `#` are encoded). A `,` inside a value
//! is always encoded, so the commas between joined values are unambiguous. A
//! path segment that comes out as `.` or `..` is refused, so no value can
//! climb out of the path the config wrote.

use std::collections::BTreeSet;

use serde_json::Value;

/// Longest path (with query) a filled template may have.
pub const MAX_PATH: usize = 8 * 1024;

/// Characters besides the unreserved ones left as they are in a path segment.
const PATH_SAFE: &[u8] = b"!$&'()*+;=:@";
/// Characters besides the unreserved ones left as they are in a query.
const QUERY_SAFE: &[u8] = b"!$'()*;:@/?";

/// Where a placeholder's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A parameter of the plugin's path pattern.
    Path(String),
    /// A query parameter of the client's request.
    Query(String),
    /// A header of the client's request (lower-case name).
    Header(String),
    /// The client's method.
    Method,
    /// The value a `for_each` call is made for.
    Item,
    /// Values from an earlier call's result.
    Call(CallRef),
}

impl Source {
    /// Whether the value comes from the client's request.
    pub fn from_client(&self) -> bool {
        matches!(
            self,
            Source::Path(_) | Source::Query(_) | Source::Header(_) | Source::Method
        )
    }
}

/// One step of a path into a call's JSON result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The member of an object.
    Key(String),
    /// Every element of an array.
    Each,
}

/// `CALL.a.b[].c`: values in the result of call `CALL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRef {
    /// The call's name.
    pub name: String,
    /// The call's position in the config (set when the config is checked).
    pub index: usize,
    /// The path inside its result.
    pub steps: Vec<Step>,
}

/// Whether `name` is usable as a call or parameter name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl CallRef {
    /// Parse `name.key[].key`.
    pub fn parse(text: &str) -> Result<CallRef, String> {
        let bad = |why: &str| Err(format!("{text:?}: {why}"));
        let end = text.find(['.', '[']).unwrap_or(text.len());
        let name = &text[..end];
        if !valid_name(name) {
            return bad("not a call name (letters, digits, `_` and `-`)");
        }
        let mut steps = Vec::new();
        let mut rest = &text[end..];
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("[]") {
                steps.push(Step::Each);
                rest = after;
            } else if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[', ']']).unwrap_or(after.len());
                if end == 0 {
                    return bad("empty key");
                }
                steps.push(Step::Key(after[..end].to_string()));
                rest = &after[end..];
            } else {
                return bad("only `.key` and `[]` (every element) may follow the call name");
            }
        }
        Ok(CallRef {
            name: name.to_string(),
            index: 0,
            steps,
        })
    }

    /// The strings, numbers and booleans this path reaches in `result`:
    /// distinct, non-empty, in document order.
    pub fn values(&self, result: &Value) -> Vec<String> {
        let mut found = Vec::new();
        collect(result, &self.steps, &mut found);
        let mut seen = BTreeSet::new();
        found
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            })
            .filter(|s| !s.is_empty() && seen.insert(s.clone()))
            .collect()
    }
}

fn collect<'a>(v: &'a Value, steps: &[Step], out: &mut Vec<&'a Value>) {
    match steps.split_first() {
        None => out.push(v),
        Some((Step::Key(k), rest)) => {
            if let Some(x) = v.as_object().and_then(|o| o.get(k)) {
                collect(x, rest, out);
            }
        }
        Some((Step::Each, rest)) => {
            if let Some(items) = v.as_array() {
                for x in items {
                    collect(x, rest, out);
                }
            }
        }
    }
}

/// A placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Var {
    /// As written between the braces, without the default.
    pub text: String,
    /// Where the value comes from.
    pub source: Source,
    /// What stands in for a missing value.
    pub default: Option<String>,
    /// Whether it lands in the query (else in the path).
    in_query: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Var(Var),
}

/// A parsed call path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// As written.
    pub text: String,
    pieces: Vec<Piece>,
}

/// What a source has for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Its values (empty: missing).
    Values(Vec<String>),
    /// The call it reads failed (the reason).
    Unavailable(String),
}

/// Why a template could not be filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillError {
    /// The placeholder, as written.
    pub var: String,
    /// What went wrong.
    pub kind: FillErrorKind,
    /// Whether the client's request is to blame.
    pub from_client: bool,
}

/// What went wrong filling a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FillErrorKind {
    /// No value and no default.
    Missing,
    /// The call it reads failed.
    Unavailable(String),
    /// A path segment came out as `.` or `..`.
    DotSegment,
    /// The path came out longer than [`MAX_PATH`].
    TooLong,
}

impl std::fmt::Display for FillError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let var = &self.var;
        match &self.kind {
            FillErrorKind::Missing => write!(f, "{{{var}}} has no value"),
            FillErrorKind::Unavailable(why) => write!(f, "{{{var}}} is unavailable: {why}"),
            FillErrorKind::DotSegment => {
                write!(f, "{{{var}}} would make a `.` or `..` path segment")
            }
            FillErrorKind::TooLong => write!(f, "the path would exceed {MAX_PATH} bytes"),
        }
    }
}

/// Characters a template may contain outside placeholders.
fn literal_ok(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '#' | '"' | '<' | '>' | '\\' | '^' | '`' | '|')
}

impl Template {
    /// Parse a call path; errors name what is wrong.
    pub fn parse(text: &str) -> Result<Template, String> {
        let bad = |why: String| Err(format!("path {text:?}: {why}"));
        if !text.starts_with('/') {
            return bad("must start with `/`".into());
        }
        if text.len() > MAX_PATH {
            return bad(format!("longer than {MAX_PATH} bytes"));
        }
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut in_query = false;
        // The current path segment: its literal text, and whether a
        // placeholder is part of it.
        let mut segment = String::new();
        let mut segment_var = false;
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            match c {
                '{' => {
                    let Some(end) = rest.find('}') else {
                        return bad("`{` without `}`".into());
                    };
                    let inner = &rest[1..end];
                    if inner.contains('{') {
                        return bad("`{` inside a placeholder".into());
                    }
                    let (source_text, default) = match inner.split_once('|') {
                        Some((s, d)) => (s, Some(d.to_string())),
                        None => (inner, None),
                    };
                    let source =
                        parse_source(source_text).map_err(|e| format!("path {text:?}: {e}"))?;
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Var(Var {
                        text: source_text.to_string(),
                        source,
                        default,
                        in_query,
                    }));
                    segment_var = true;
                    rest = &rest[end + 1..];
                    continue;
                }
                '}' => return bad("`}` without `{`".into()),
                c if !literal_ok(c) => {
                    return bad(format!(
                        "{c:?} must be percent-encoded (or come from a placeholder)"
                    ));
                }
                '/' | '?' if !in_query => {
                    if !segment_var && (segment == "." || segment == "..") {
                        return bad("`.` and `..` segments are not allowed".into());
                    }
                    segment.clear();
                    segment_var = false;
                    in_query = c == '?';
                    lit.push(c);
                }
                c => {
                    if !in_query {
                        segment.push(c);
                    }
                    lit.push(c);
                }
            }
            rest = &rest[c.len_utf8()..];
        }
        if !in_query && !segment_var && (segment == "." || segment == "..") {
            return bad("`.` and `..` segments are not allowed".into());
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Template {
            text: text.to_string(),
            pieces,
        })
    }

    /// The placeholders, in order.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Var(v) => Some(v),
            Piece::Lit(_) => None,
        })
    }

    /// The placeholders, to check and resolve references.
    pub fn vars_mut(&mut self) -> impl Iterator<Item = &mut Var> {
        self.pieces.iter_mut().filter_map(|p| match p {
            Piece::Var(v) => Some(v),
            Piece::Lit(_) => None,
        })
    }

    /// Fill in the placeholders with what `resolve` finds for their sources.
    pub fn fill(&self, resolve: &mut dyn FnMut(&Source) -> Resolved) -> Result<String, FillError> {
        let mut out = String::new();
        let mut in_query = false;
        let mut segment_start = 0;
        let mut segment_vars: Vec<&Var> = Vec::new();
        for piece in &self.pieces {
            match piece {
                Piece::Lit(s) => {
                    for c in s.chars() {
                        if !in_query && (c == '/' || c == '?') {
                            check_segment(&out[segment_start..], &segment_vars)?;
                            segment_vars.clear();
                            in_query = c == '?';
                            out.push(c);
                            segment_start = out.len();
                        } else {
                            out.push(c);
                        }
                    }
                }
                Piece::Var(v) => {
                    let fail = |kind| FillError {
                        var: v.text.clone(),
                        kind,
                        from_client: v.source.from_client(),
                    };
                    let values = match (resolve(&v.source), &v.default) {
                        (Resolved::Values(vs), _) if !vs.is_empty() => vs,
                        (_, Some(d)) => vec![d.clone()],
                        (Resolved::Values(_), None) => return Err(fail(FillErrorKind::Missing)),
                        (Resolved::Unavailable(why), None) => {
                            return Err(fail(FillErrorKind::Unavailable(why)));
                        }
                    };
                    let safe = if v.in_query { QUERY_SAFE } else { PATH_SAFE };
                    for (i, value) in values.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        encode(value, safe, &mut out);
                        if out.len() > MAX_PATH {
                            return Err(fail(FillErrorKind::TooLong));
                        }
                    }
                    if !v.in_query {
                        segment_vars.push(v);
                    }
                }
            }
        }
        if !in_query {
            check_segment(&out[segment_start..], &segment_vars)?;
        }
        if out.len() > MAX_PATH {
            return Err(FillError {
                var: self
                    .vars()
                    .last()
                    .map(|v| v.text.clone())
                    .unwrap_or_default(),
                kind: FillErrorKind::TooLong,
                from_client: self.vars().all(|v| v.source.from_client()),
            });
        }
        Ok(out)
    }
}

/// Refuse a path segment that came out as `.` or `..` (the template's own
/// text cannot have one, so placeholders made it).
fn check_segment(segment: &str, vars: &[&Var]) -> Result<(), FillError> {
    if segment != "." && segment != ".." {
        return Ok(());
    }
    Err(FillError {
        var: vars.first().map(|v| v.text.clone()).unwrap_or_default(),
        kind: FillErrorKind::DotSegment,
        from_client: vars.iter().all(|v| v.source.from_client()),
    })
}

/// `path.NAME`, `query.NAME`, `header.NAME`, `method`, `item` or a call reference.
fn parse_source(text: &str) -> Result<Source, String> {
    let named = |kind: &str, name: &str| {
        if name.is_empty() {
            Err(format!("{{{text}}}: `{kind}.` needs a name"))
        } else {
            Ok(name.to_string())
        }
    };
    if let Some(name) = text.strip_prefix("path.") {
        return named("path", name).map(Source::Path);
    }
    if let Some(name) = text.strip_prefix("query.") {
        return named("query", name).map(Source::Query);
    }
    if let Some(name) = text.strip_prefix("header.") {
        return named("header", name).map(|n| Source::Header(n.to_ascii_lowercase()));
    }
    match text {
        "method" => Ok(Source::Method),
        "item" => Ok(Source::Item),
        _ => CallRef::parse(text)
            .map(Source::Call)
            .map_err(|e| format!("placeholder {e}")),
    }
}

/// Percent-encode `value` onto `out`, leaving unreserved characters and
/// `safe` as they are.
pub fn encode(value: &str, safe: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || safe.contains(&b)
        {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

/// Percent-decode (and, in queries, `+` → space); malformed escapes stay as
/// they are, and invalid UTF-8 becomes U+FFFD.
pub fn decode(s: &str, plus_is_space: bool) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                match (
                    bytes.get(i + 1).and_then(|&b| hex(b)),
                    bytes.get(i + 2).and_then(|&b| hex(b)),
                ) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The pairs of a query string, decoded.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k, true), decode(v, true))
        })
        .collect()
}

/// A path pattern: `/home/{section}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    segments: Vec<PatternSegment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternSegment {
    Lit(String),
    Param(String),
}

impl Pattern {
    /// Parse `/a/{b}/c`: whole segments are literal or a `{param}`.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let bad = |why: &str| Err(format!("pattern {text:?}: {why}"));
        let Some(rest) = text.strip_prefix('/') else {
            return bad("must start with `/`");
        };
        let mut segments = Vec::new();
        for seg in rest.split('/') {
            if let Some(name) = seg
                .strip_prefix('{')
                .and_then(|s| s.strip_suffix('}'))
                .filter(|n| !n.contains(['{', '}']))
            {
                if !valid_name(name) {
                    return bad("parameter names are letters, digits, `_` and `-`");
                }
                if segments.contains(&PatternSegment::Param(name.to_string())) {
                    return bad("a parameter appears twice");
                }
                segments.push(PatternSegment::Param(name.to_string()));
            } else if seg.contains(['{', '}']) {
                return bad("a parameter must be a whole segment, like `/{id}`");
            } else {
                segments.push(PatternSegment::Lit(seg.to_string()));
            }
        }
        Ok(Pattern { segments })
    }

    /// Whether the pattern has this parameter.
    pub fn has_param(&self, name: &str) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, PatternSegment::Param(p) if p == name))
    }

    /// The parameters when `path` matches (one trailing `/` is ignored);
    /// values are percent-decoded and never empty.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let rest = path.strip_prefix('/')?;
        let mut parts: Vec<&str> = rest.split('/').collect();
        if parts.len() == self.segments.len() + 1 && parts.last() == Some(&"") {
            parts.pop();
        }
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut params = Vec::new();
        for (seg, part) in self.segments.iter().zip(parts) {
            match seg {
                PatternSegment::Lit(l) if l == part => {}
                PatternSegment::Lit(_) => return None,
                PatternSegment::Param(_) if part.is_empty() => return None,
                PatternSegment::Param(name) => params.push((name.clone(), decode(part, false))),
            }
        }
        Some(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fill(
        template: &str,
        resolve: &mut dyn FnMut(&Source) -> Resolved,
    ) -> Result<String, FillError> {
        Template::parse(template).unwrap().fill(resolve)
    }

    fn vals(vs: &[&str]) -> Resolved {
        Resolved::Values(vs.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn encodes_for_the_position() {
        let mut r = |_: &Source| vals(&["a b/c?d&e=f+g,h"]);
        assert_eq!(
            fill("/x/{header.v}?q={header.v}", &mut r).unwrap(),
            "/x/a%20b%2Fc%3Fd&e=f+g%2Ch?q=a%20b/c?d%26e%3Df%2Bg%2Ch"
        );
        let mut r = |_: &Source| vals(&["ü#%"]);
        assert_eq!(fill("/{method}", &mut r).unwrap(), "/%C3%BC%23%25");
    }

    #[test]
    fn joins_values_with_literal_commas() {
        let mut r = |_: &Source| vals(&["1", "a,b", "3"]);
        assert_eq!(
            fill("/p/{o.ids}?ids={o.ids}", &mut r).unwrap(),
            "/p/1,a%2Cb,3?ids=1,a%2Cb,3"
        );
    }

    #[test]
    fn defaults_stand_in_for_missing_and_unavailable_values() {
        let mut r = |s: &Source| match s {
            Source::Query(_) => vals(&[]),
            _ => Resolved::Unavailable("call failed".into()),
        };
        assert_eq!(
            fill("/a?l={query.limit|5}&ids={o.x|}&s={query.s|a b}", &mut r).unwrap(),
            "/a?l=5&ids=&s=a%20b"
        );
        let e = fill("/a?l={query.limit}", &mut r).unwrap_err();
        assert_eq!(e.kind, FillErrorKind::Missing);
        assert_eq!(e.var, "query.limit");
        assert!(e.from_client);
        let e = fill("/a/{o.x}", &mut r).unwrap_err();
        assert_eq!(e.kind, FillErrorKind::Unavailable("call failed".into()));
        assert!(!e.from_client);
    }

    #[test]
    fn refuses_dot_segments_made_by_values() {
        let mut r = |_: &Source| vals(&["."]);
        let e = fill("/users/{header.id}/x", &mut r).unwrap_err();
        assert_eq!(e.kind, FillErrorKind::DotSegment);
        assert!(e.from_client);
        assert!(fill("/users/{header.id}{header.id}", &mut r).is_err());
        // Dots inside a segment or in the query are harmless.
        assert_eq!(fill("/users/v{header.id}", &mut r).unwrap(), "/users/v.");
        assert_eq!(fill("/u?x={header.id}", &mut r).unwrap(), "/u?x=.");
    }

    #[test]
    fn bounds_the_length() {
        let long = "x".repeat(MAX_PATH);
        let mut r = |_: &Source| vals(&[&long]);
        assert_eq!(
            fill("/{header.a}", &mut r).unwrap_err().kind,
            FillErrorKind::TooLong
        );
    }

    #[test]
    fn parses_sources() {
        let t = Template::parse(
            "/a/{path.id}/{query.q.x|d}/{header.X-User}/{method}/{item}/{orders.list[].id}/{recs[]}/{p}",
        )
        .unwrap();
        let sources: Vec<Source> = t.vars().map(|v| v.source.clone()).collect();
        assert_eq!(
            sources,
            vec![
                Source::Path("id".into()),
                Source::Query("q.x".into()),
                Source::Header("x-user".into()),
                Source::Method,
                Source::Item,
                Source::Call(CallRef {
                    name: "orders".into(),
                    index: 0,
                    steps: vec![Step::Key("list".into()), Step::Each, Step::Key("id".into())]
                }),
                Source::Call(CallRef {
                    name: "recs".into(),
                    index: 0,
                    steps: vec![Step::Each]
                }),
                Source::Call(CallRef {
                    name: "p".into(),
                    index: 0,
                    steps: vec![]
                }),
            ]
        );
    }

    #[test]
    fn refuses_malformed_templates() {
        for bad in [
            "users/{x}",
            "{x}/users",
            "/a/{x",
            "/a/x}",
            "/a/{{x}}",
            "/a/{}",
            "/a/{path.}",
            "/a/{o..x}",
            "/a/{o[0]}",
            "/a/{o x}",
            "/a b",
            "/a#frag",
            "/a/../b",
            "/a/.",
            "/ä",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(Template::parse("/a/..b/c?x=../y").is_ok());
    }

    #[test]
    fn collects_values_from_results() {
        let r = json!({"orders": [{"product_id": 7}, {"product_id": "x"}, {"product_id": 7}, {"product_id": null}, {"product_id": ""}, {"product_id": true}, {"other": 1}], "n": 1.5});
        let v = |t: &str| CallRef::parse(t).unwrap().values(&r);
        assert_eq!(v("o.orders[].product_id"), vec!["7", "x", "true"]);
        assert_eq!(v("o.n"), vec!["1.5"]);
        assert!(v("o.orders").is_empty(), "an array without [] is no value");
        assert!(v("o.missing.deeper").is_empty());
        assert_eq!(
            CallRef::parse("o[]").unwrap().values(&json!([1, 2])),
            vec!["1", "2"]
        );
    }

    #[test]
    fn decodes_client_values() {
        assert_eq!(decode("a%20b+c%2F%zz%4", false), "a b+c/%zz%4");
        assert_eq!(decode("a+b%2B", true), "a b+");
        assert_eq!(decode("%C3%BC%FF", false), "ü\u{FFFD}");
        assert_eq!(
            parse_query("a=1&b=x+y&c&=z&a=2"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), "".into()),
                ("".into(), "z".into()),
                ("a".into(), "2".into())
            ]
        );
    }

    #[test]
    fn patterns() {
        let p = Pattern::parse("/home/{section}/v/{id}").unwrap();
        assert_eq!(
            p.matches("/home/top%20picks/v/7"),
            Some(vec![
                ("section".into(), "top picks".into()),
                ("id".into(), "7".into())
            ])
        );
        assert!(p.matches("/home/top/v/7/").is_some());
        assert_eq!(p.matches("/home/top/x/7"), None);
        assert_eq!(p.matches("/home//v/7"), None);
        assert_eq!(p.matches("/home/top/v"), None);
        assert_eq!(p.matches("/home/top/v/7/8"), None);
        assert!(Pattern::parse("/").unwrap().matches("/").is_some());
        for bad in ["home", "/a/{x}/{x}", "/a/v{x}", "/a/{x y}"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
