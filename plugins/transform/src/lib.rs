//! `transform`: declarative edits of requests and responses.
//!
//! From its TOML configuration alone, the plugin edits
//!
//! - request and response **headers**: `rename`, `remove`, `set` and `add`,
//!   applied in that order;
//! - the request **path**: a template rewrite (`from = "/v1/users/{id}"`,
//!   `to = "/api/users/{id}"`, with an optional trailing `{*rest}`), or
//!   `strip_prefix` / `add_prefix`;
//! - the request **query**: `rename`, `remove`, `set` and `add` of
//!   parameters, keeping the other parameters in their order and encoding;
//! - JSON request and response **bodies**: `set`, `remove`, `rename` and
//!   `move` at JSON Pointers (RFC 6901), when the route gives the plugin the
//!   body (`body = true`);
//! - the response **status** (`status = { from = 404, to = 200 }`).
//!
//! ```toml
//! plugins = [{ name = "transform", version = "1.0.0", body = true, config = {
//!     request = {
//!         headers = { rename = { "x-old" = "x-new" }, remove = ["x-debug"], set = { "x-via" = "transom" } },
//!         path = { from = "/v1/users/{id}", to = "/api/users/{id}" },
//!         query = { set = { "v" = "2" }, remove = ["debug"] },
//!         body = [{ op = "set", pointer = "/meta/source", value = "gateway" }],
//!     },
//!     response = {
//!         headers = { remove = ["server"] },
//!         body = [{ op = "remove", pointer = "/internal" }],
//!     },
//! } }]
//! ```
//!
//! The whole configuration is checked when it is parsed: bad header names,
//! path templates or pointers fail every request with a 500 naming the
//! plugin, rather than being half applied.
use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{Map, Value};
use transom_plugin_sdk::{
    Action, Error, Level, Plugin, Request, Response, export_plugin, is_managed_header,
};

/// At most this many entries in each list or table of operations.
const MAX_OPS: usize = 64;
/// Bodies larger than this are passed on untouched.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// Longest header or query parameter name, pointer or path template.
const MAX_NAME: usize = 1024;
/// Longest header value (what the gateway accepts).
const MAX_HEADER_VALUE: usize = 16 * 1024;

/// The route's `config = { ... }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Edits of the request, before it goes upstream.
    request: RequestRules,
    /// Edits of the response, before it goes to the client.
    response: ResponseRules,
}

/// `request = { ... }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RequestRules {
    /// Header edits.
    headers: HeaderOps,
    /// Path rewrite.
    path: Option<PathRewrite>,
    /// Query parameter edits.
    query: QueryOps,
    /// JSON body edits, in order.
    #[serde(deserialize_with = "body_ops")]
    body: Vec<BodyOp>,
}

/// `response = { ... }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ResponseRules {
    /// Header edits.
    headers: HeaderOps,
    /// JSON body edits, in order.
    #[serde(deserialize_with = "body_ops")]
    body: Vec<BodyOp>,
    /// Status change.
    status: Option<StatusRule>,
}

impl ResponseRules {
    /// No edit at all: the response phase has nothing to do.
    fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.body.is_empty() && self.status.is_none()
    }
}

// ---------------------------------------------------------------------------
// Headers

/// Header edits, checked and with lower-case names. Applied in the order
/// rename, remove, set, add.
#[derive(Debug, Clone, Default)]
struct HeaderOps {
    rename: Vec<(String, String)>,
    remove: Vec<String>,
    set: Vec<(String, String)>,
    add: Vec<(String, String)>,
}

impl HeaderOps {
    fn is_empty(&self) -> bool {
        self.rename.is_empty()
            && self.remove.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }
}

/// `headers = { ... }` as written.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawHeaderOps {
    /// Old name → new name; the values move, replacing any the new name had.
    rename: BTreeMap<String, String>,
    /// Names to remove.
    remove: Vec<String>,
    /// Name → value, replacing any values.
    set: BTreeMap<String, String>,
    /// Name → value, added to any values.
    add: BTreeMap<String, String>,
}

impl<'de> Deserialize<'de> for HeaderOps {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        HeaderOps::try_from(RawHeaderOps::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<RawHeaderOps> for HeaderOps {
    type Error = String;

    fn try_from(raw: RawHeaderOps) -> Result<HeaderOps, String> {
        let name = |field: &str, n: &str| -> Result<String, String> {
            check_header_name(n).map_err(|e| format!("headers.{field}: {e}"))?;
            Ok(n.to_ascii_lowercase())
        };
        let value = |field: &str, n: &str, v: &str| -> Result<String, String> {
            check_header_value(v).map_err(|e| format!("headers.{field}.{n}: {e}"))?;
            Ok(v.to_string())
        };
        for (field, len) in [
            ("rename", raw.rename.len()),
            ("remove", raw.remove.len()),
            ("set", raw.set.len()),
            ("add", raw.add.len()),
        ] {
            if len > MAX_OPS {
                return Err(format!("headers.{field}: at most {MAX_OPS} entries"));
            }
        }
        let mut ops = HeaderOps::default();
        for (old, new) in &raw.rename {
            ops.rename
                .push((name("rename", old)?, name("rename", new)?));
        }
        for n in &raw.remove {
            ops.remove.push(name("remove", n)?);
        }
        for (n, v) in &raw.set {
            ops.set.push((name("set", n)?, value("set", n, v)?));
        }
        for (n, v) in &raw.add {
            ops.add.push((name("add", n)?, value("add", n, v)?));
        }
        for (field, names) in [
            (
                "rename",
                ops.rename.iter().map(|(o, _)| o).collect::<Vec<_>>(),
            ),
            ("set", ops.set.iter().map(|(n, _)| n).collect()),
            ("add", ops.add.iter().map(|(n, _)| n).collect()),
        ] {
            let mut seen = BTreeSet::new();
            if let Some(dup) = names.into_iter().find(|n| !seen.insert(*n)) {
                return Err(format!("headers.{field}: {dup:?} is named twice"));
            }
        }
        Ok(ops)
    }
}

fn check_header_name(name: &str) -> Result<(), String> {
    const TCHAR: &[u8] = b"!#$%&'*+-.^_`|~";
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || TCHAR.contains(&b))
    {
        return Err(format!("{name:?} is not a header name"));
    }
    if is_managed_header(name) {
        return Err(format!("{name:?} is managed by the gateway"));
    }
    Ok(())
}

fn check_header_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_HEADER_VALUE {
        return Err(format!("longer than {MAX_HEADER_VALUE} bytes"));
    }
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err("control characters are not allowed in header values".into());
    }
    Ok(())
}

/// What header edits need of a request or a response.
trait Message {
    fn all_headers(&self) -> Vec<(String, String)>;
    fn header_value(&self, name: &str) -> Option<String>;
    fn put_header(&mut self, name: &str, value: &str) -> Result<(), Error>;
    fn append_header(&mut self, name: &str, value: &str) -> Result<(), Error>;
    fn drop_header(&mut self, name: &str);
    fn body_bytes(&self) -> Option<Vec<u8>>;
    fn replace_body(&mut self, body: &[u8]) -> Result<(), Error>;
}

impl Message for Request {
    fn all_headers(&self) -> Vec<(String, String)> {
        self.headers()
    }
    fn header_value(&self, name: &str) -> Option<String> {
        self.header(name)
    }
    fn put_header(&mut self, name: &str, value: &str) -> Result<(), Error> {
        self.set_header(name, value)
    }
    fn append_header(&mut self, name: &str, value: &str) -> Result<(), Error> {
        self.add_header(name, value)
    }
    fn drop_header(&mut self, name: &str) {
        self.remove_header(name)
    }
    fn body_bytes(&self) -> Option<Vec<u8>> {
        self.body()
    }
    fn replace_body(&mut self, body: &[u8]) -> Result<(), Error> {
        self.set_body(body)
    }
}

impl Message for Response {
    fn all_headers(&self) -> Vec<(String, String)> {
        self.headers()
    }
    fn header_value(&self, name: &str) -> Option<String> {
        self.header(name)
    }
    fn put_header(&mut self, name: &str, value: &str) -> Result<(), Error> {
        self.set_header(name, value)
    }
    fn append_header(&mut self, name: &str, value: &str) -> Result<(), Error> {
        self.add_header(name, value)
    }
    fn drop_header(&mut self, name: &str) {
        self.remove_header(name)
    }
    fn body_bytes(&self) -> Option<Vec<u8>> {
        self.body()
    }
    fn replace_body(&mut self, body: &[u8]) -> Result<(), Error> {
        self.set_body(body)
    }
}

/// Apply header edits: rename, remove, set, add. Renames all apply to the
/// headers as they were (so `a → b, b → a` swaps them); a rename whose old
/// header is absent does nothing.
fn apply_headers(msg: &mut impl Message, ops: &HeaderOps) -> Result<(), Error> {
    if !ops.rename.is_empty() {
        let all = msg.all_headers();
        let moves: Vec<(&str, &str, Vec<&str>)> = ops
            .rename
            .iter()
            .filter(|(old, new)| old != new)
            .map(|(old, new)| {
                let values = all
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case(old))
                    .map(|(_, v)| v.as_str())
                    .collect();
                (old.as_str(), new.as_str(), values)
            })
            .filter(|(_, _, values): &(_, _, Vec<&str>)| !values.is_empty())
            .collect();
        for (old, _, _) in &moves {
            msg.drop_header(old);
        }
        let mut cleared = BTreeSet::new();
        for (_, new, values) in &moves {
            if cleared.insert(*new) {
                msg.drop_header(new);
            }
            for v in values {
                msg.append_header(new, v)?;
            }
        }
    }
    for name in &ops.remove {
        msg.drop_header(name);
    }
    for (name, value) in &ops.set {
        msg.put_header(name, value)?;
    }
    for (name, value) in &ops.add {
        msg.append_header(name, value)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Path

/// A checked path rewrite.
#[derive(Debug, Clone)]
enum PathRewrite {
    /// `from` / `to` templates.
    Template { from: FromTemplate, to: Vec<Piece> },
    /// `strip_prefix` and/or `add_prefix`.
    Prefix {
        strip: Option<String>,
        add: Option<String>,
    },
}

/// `path = { ... }` as written: `from` and `to`, or `strip_prefix` and/or
/// `add_prefix`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPath {
    /// Template the path must match, e.g. `/v1/users/{id}/{*rest}`.
    from: Option<String>,
    /// The new path, using `from`'s captures.
    to: Option<String>,
    /// Prefix to remove (only at a segment boundary).
    strip_prefix: Option<String>,
    /// Prefix to put in front.
    add_prefix: Option<String>,
}

/// A parsed `from`: segments, then maybe a catch-all.
#[derive(Debug, Clone)]
struct FromTemplate {
    segments: Vec<Segment>,
    /// Name of the trailing `{*name}`.
    rest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Capture(String),
}

/// A part of a parsed `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Capture(String),
    /// The catch-all; `slash` when `to` had a `/` right before it, which is
    /// kept only if the path had one before the remainder.
    Rest {
        slash: bool,
    },
}

impl<'de> Deserialize<'de> for PathRewrite {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PathRewrite::try_from(RawPath::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<RawPath> for PathRewrite {
    type Error = String;

    fn try_from(raw: RawPath) -> Result<PathRewrite, String> {
        let template = raw.from.is_some() || raw.to.is_some();
        let prefix = raw.strip_prefix.is_some() || raw.add_prefix.is_some();
        if template && prefix {
            return Err("path: use either from/to or strip_prefix/add_prefix, not both".into());
        }
        match (raw.from, raw.to) {
            (Some(from), Some(to)) => {
                let from = parse_from(&from).map_err(|e| format!("path.from: {e}"))?;
                let to = parse_to(&to, &from).map_err(|e| format!("path.to: {e}"))?;
                Ok(PathRewrite::Template { from, to })
            }
            (None, None) if prefix => {
                let check = |field: &str, p: &Option<String>| match p {
                    Some(p) => check_prefix(p).map_err(|e| format!("path.{field}: {e}")),
                    None => Ok(()),
                };
                check("strip_prefix", &raw.strip_prefix)?;
                check("add_prefix", &raw.add_prefix)?;
                Ok(PathRewrite::Prefix {
                    strip: raw.strip_prefix,
                    add: raw.add_prefix,
                })
            }
            (None, None) => Err("path: set from and to, or strip_prefix and/or add_prefix".into()),
            _ => Err("path: from and to go together".into()),
        }
    }
}

/// Characters a literal part of a template or prefix may not contain.
fn bad_path_char(c: char) -> bool {
    c.is_control() || c.is_whitespace() || matches!(c, '?' | '#' | '{' | '}')
}

fn check_capture_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!("{{{name}}}: capture names are [A-Za-z0-9_]+"));
    }
    Ok(())
}

fn parse_from(from: &str) -> Result<FromTemplate, String> {
    let Some(body) = from.strip_prefix('/') else {
        return Err(format!("{from:?} must start with '/'"));
    };
    if from.len() > MAX_NAME {
        return Err(format!("longer than {MAX_NAME} bytes"));
    }
    let parts: Vec<&str> = body.split('/').collect();
    let mut template = FromTemplate {
        segments: Vec::new(),
        rest: None,
    };
    let mut names = BTreeSet::new();
    for (i, part) in parts.iter().enumerate() {
        if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let (name, rest) = match inner.strip_prefix('*') {
                Some(name) => (name, true),
                None => (inner, false),
            };
            check_capture_name(name)?;
            if !names.insert(name) {
                return Err(format!("{{{name}}} is captured twice"));
            }
            if rest {
                if i + 1 != parts.len() {
                    return Err(format!("{{*{name}}} must be the last segment"));
                }
                template.rest = Some(name.to_string());
            } else {
                template.segments.push(Segment::Capture(name.to_string()));
            }
        } else if part.chars().any(bad_path_char) {
            return Err(format!(
                "segment {part:?}: a segment is literal text or a whole {{name}} / {{*name}}"
            ));
        } else {
            template
                .segments
                .push(Segment::Literal((*part).to_string()));
        }
    }
    Ok(template)
}

fn parse_to(to: &str, from: &FromTemplate) -> Result<Vec<Piece>, String> {
    if !to.starts_with('/') {
        return Err(format!("{to:?} must start with '/'"));
    }
    if to.len() > MAX_NAME {
        return Err(format!("longer than {MAX_NAME} bytes"));
    }
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = to;
    while let Some(open) = rest.find('{') {
        literal.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err("unclosed '{'".into());
        };
        let inner = &after[..close];
        rest = &after[close + 1..];
        if let Some(name) = inner.strip_prefix('*') {
            if from.rest.as_deref() != Some(name) {
                return Err(format!("{{*{name}}} is not the catch-all of `from`"));
            }
            let slash = literal.ends_with('/');
            if slash {
                literal.pop();
            }
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Rest { slash });
        } else {
            check_capture_name(inner)?;
            if !from
                .segments
                .iter()
                .any(|s| matches!(s, Segment::Capture(n) if n == inner))
            {
                let hint = if from.rest.as_deref() == Some(inner) {
                    format!(" (write {{*{inner}}})")
                } else {
                    String::new()
                };
                return Err(format!("{{{inner}}} is not captured in `from`{hint}"));
            }
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Capture(inner.to_string()));
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    for p in &pieces {
        if let Piece::Literal(l) = p
            && l.chars().any(bad_path_char)
        {
            return Err(format!("{l:?} has a character a path cannot have"));
        }
    }
    Ok(pieces)
}

fn check_prefix(p: &str) -> Result<(), String> {
    if !p.starts_with('/') || p.len() < 2 || p.ends_with('/') {
        return Err(format!(
            "{p:?} must start with '/', not end with '/' and not be \"/\""
        ));
    }
    if p.len() > MAX_NAME || p.chars().any(bad_path_char) {
        return Err(format!("{p:?} is not a path prefix"));
    }
    Ok(())
}

/// The rewritten path, or `None` when the rule does not apply to `path`.
fn rewrite_path(path: &str, rule: &PathRewrite) -> Option<String> {
    let out = match rule {
        PathRewrite::Template { from, to } => {
            let (captures, rest) = match_template(path, from)?;
            let mut out = String::with_capacity(path.len() + 16);
            for piece in to {
                match piece {
                    Piece::Literal(l) => out.push_str(l),
                    Piece::Capture(name) => out.push_str(captures.get(name.as_str())?),
                    Piece::Rest { slash } => {
                        if let Some(r) = rest {
                            if *slash {
                                out.push('/');
                            }
                            out.push_str(r);
                        }
                    }
                }
            }
            out
        }
        PathRewrite::Prefix { strip, add } => {
            let remainder = match strip {
                Some(p) => match path.strip_prefix(p.as_str()) {
                    Some(r) if r.is_empty() || r.starts_with('/') => r,
                    _ => return None,
                },
                None => path,
            };
            format!("{}{remainder}", add.as_deref().unwrap_or(""))
        }
    };
    Some(if out.is_empty() { "/".into() } else { out })
}

/// Match `path` against `from`: the captures by name and the catch-all's
/// remainder (`None` when the path ends right after the fixed segments).
fn match_template<'t, 'p>(
    path: &'p str,
    from: &'t FromTemplate,
) -> Option<(BTreeMap<&'t str, &'p str>, Option<&'p str>)> {
    let mut cursor = Some(path.strip_prefix('/')?);
    let mut captures = BTreeMap::new();
    for seg in &from.segments {
        let s = cursor?;
        let (head, tail) = match s.split_once('/') {
            Some((h, t)) => (h, Some(t)),
            None => (s, None),
        };
        match seg {
            Segment::Literal(l) if l == head => {}
            Segment::Capture(name) if !head.is_empty() => {
                captures.insert(name.as_str(), head);
            }
            _ => return None,
        }
        cursor = tail;
    }
    if from.rest.is_none() && cursor.is_some() {
        return None;
    }
    Some((captures, cursor))
}

// ---------------------------------------------------------------------------
// Query

/// Query parameter edits, applied in the order rename, remove, set, add.
#[derive(Debug, Clone, Default)]
struct QueryOps {
    rename: Vec<(String, String)>,
    remove: Vec<String>,
    set: Vec<(String, String)>,
    add: Vec<(String, String)>,
}

/// `query = { ... }` as written.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawQueryOps {
    /// Old name → new name (values kept as they are).
    rename: BTreeMap<String, String>,
    /// Names to remove (every occurrence).
    remove: Vec<String>,
    /// Name → value: replaces the first occurrence in place (removing the
    /// others), or appends.
    set: BTreeMap<String, String>,
    /// Name → value, appended.
    add: BTreeMap<String, String>,
}

impl<'de> Deserialize<'de> for QueryOps {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawQueryOps::deserialize(d)?;
        for (field, len) in [
            ("rename", raw.rename.len()),
            ("remove", raw.remove.len()),
            ("set", raw.set.len()),
            ("add", raw.add.len()),
        ] {
            if len > MAX_OPS {
                return Err(serde::de::Error::custom(format!(
                    "query.{field}: at most {MAX_OPS} entries"
                )));
            }
        }
        let names = raw
            .rename
            .iter()
            .flat_map(|(a, b)| [a, b])
            .chain(&raw.remove)
            .chain(raw.set.keys())
            .chain(raw.add.keys());
        for n in names {
            if n.is_empty() || n.len() > MAX_NAME {
                return Err(serde::de::Error::custom(format!(
                    "query: parameter names must be 1 to {MAX_NAME} bytes (got {n:?})"
                )));
            }
        }
        Ok(QueryOps {
            rename: raw.rename.into_iter().collect(),
            remove: raw.remove,
            set: raw.set.into_iter().collect(),
            add: raw.add.into_iter().collect(),
        })
    }
}

impl QueryOps {
    fn is_empty(&self) -> bool {
        self.rename.is_empty()
            && self.remove.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }
}

/// One `name[=value]` of a query, raw, with its decoded name.
struct Param<'q> {
    name: String,
    raw_name: std::borrow::Cow<'q, str>,
    /// Raw value after `=`, if there was one.
    raw_value: Option<std::borrow::Cow<'q, str>>,
}

/// The edited query string (`Some(None)`: no query left), or `None` when
/// the edits change nothing. Work is linear in the query's size.
fn edit_query(query: Option<&str>, ops: &QueryOps) -> Option<Option<String>> {
    use std::borrow::Cow;
    let mut params: Vec<Param<'_>> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = match p.split_once('=') {
                Some((n, v)) => (n, Some(Cow::Borrowed(v))),
                None => (p, None),
            };
            Param {
                name: decode_component(n),
                raw_name: Cow::Borrowed(n),
                raw_value: v,
            }
        })
        .collect();
    let mut changed = false;

    if !ops.rename.is_empty() {
        let renames: BTreeMap<&str, &str> = ops
            .rename
            .iter()
            .filter(|(o, n)| o != n)
            .map(|(o, n)| (o.as_str(), n.as_str()))
            .collect();
        let present: BTreeSet<&str> = params
            .iter()
            .filter_map(|p| renames.get(p.name.as_str()).copied())
            .collect();
        // A rename replaces the parameters the new name already had.
        let before = params.len();
        params.retain(|p| {
            renames.contains_key(p.name.as_str()) || !present.contains(p.name.as_str())
        });
        changed |= params.len() != before;
        for p in &mut params {
            if let Some(new) = renames.get(p.name.as_str()) {
                p.raw_name = Cow::Owned(encode_component(new));
                p.name = (*new).to_string();
                changed = true;
            }
        }
    }

    if !ops.remove.is_empty() {
        let remove: BTreeSet<&str> = ops.remove.iter().map(String::as_str).collect();
        let before = params.len();
        params.retain(|p| !remove.contains(p.name.as_str()));
        changed |= params.len() != before;
    }

    if !ops.set.is_empty() {
        let set: BTreeMap<&str, &str> = ops
            .set
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let mut done: BTreeSet<&str> = BTreeSet::new();
        let mut kept = Vec::with_capacity(params.len() + set.len());
        for mut p in params {
            match set.get_key_value(p.name.as_str()) {
                Some((name, value)) => {
                    if done.insert(name) {
                        p.raw_name = Cow::Owned(encode_component(name));
                        p.raw_value = Some(Cow::Owned(encode_component(value)));
                        kept.push(p);
                    }
                }
                None => kept.push(p),
            }
        }
        params = kept;
        for (name, value) in &ops.set {
            if !done.contains(name.as_str()) {
                params.push(Param {
                    name: name.clone(),
                    raw_name: Cow::Owned(encode_component(name)),
                    raw_value: Some(Cow::Owned(encode_component(value))),
                });
            }
        }
        // Setting always writes (it may normalise an encoding), so count it.
        changed = true;
    }

    for (name, value) in &ops.add {
        params.push(Param {
            name: name.clone(),
            raw_name: Cow::Owned(encode_component(name)),
            raw_value: Some(Cow::Owned(encode_component(value))),
        });
        changed = true;
    }

    if !changed {
        return None;
    }
    if params.is_empty() {
        return Some(None);
    }
    let mut out = String::with_capacity(query.map_or(0, str::len) + 32);
    for (i, p) in params.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(&p.raw_name);
        if let Some(v) = &p.raw_value {
            out.push('=');
            out.push_str(v);
        }
    }
    Some(Some(out))
}

/// Percent-encode everything but RFC 3986's unreserved characters.
fn encode_component(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
    out
}

/// Decode a query component (`%XX` and `+` for space) to compare names;
/// invalid escapes stay as they are.
fn decode_component(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Body

/// A JSON Pointer (RFC 6901), as its unescaped reference tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pointer(Vec<String>);

impl<'de> Deserialize<'de> for Pointer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Pointer::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Pointer {
    fn parse(s: &str) -> Result<Pointer, String> {
        let Some(body) = s.strip_prefix('/') else {
            return Err(format!("pointer {s:?} must start with '/'"));
        };
        if s.len() > MAX_NAME {
            return Err(format!("pointer {s:?} is longer than {MAX_NAME} bytes"));
        }
        let mut tokens = Vec::new();
        for raw in body.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => token.push('~'),
                        Some('1') => token.push('/'),
                        _ => {
                            return Err(format!(
                                "pointer {s:?}: '~' must be followed by '0' or '1'"
                            ));
                        }
                    }
                } else {
                    token.push(c);
                }
            }
            tokens.push(token);
        }
        Ok(Pointer(tokens))
    }

    /// Whether `self` points strictly inside `other`.
    fn is_inside(&self, other: &Pointer) -> bool {
        self.0.len() > other.0.len() && self.0.starts_with(&other.0)
    }

    /// Parent tokens and the last token (a pointer has at least one token).
    fn split(&self) -> (&[String], &str) {
        match self.0.split_last() {
            Some((last, parent)) => (parent, last.as_str()),
            None => (&[], ""),
        }
    }
}

/// One body operation, as written: `{ op = "...", ... }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum RawBodyOp {
    /// Put `value` at `pointer`, creating missing intermediate objects; `-`
    /// as the last token appends to an array.
    Set { pointer: Pointer, value: Value },
    /// Remove what `pointer` names; nothing if it is missing.
    Remove { pointer: Pointer },
    /// Rename the key `pointer` names to `to` (a key, not a pointer), in
    /// the same object.
    Rename { pointer: Pointer, to: String },
    /// Remove the value at `from` and set it at `to`.
    Move { from: Pointer, to: Pointer },
}

/// A checked body operation.
#[derive(Debug, Clone)]
struct BodyOp(RawBodyOp);

impl<'de> Deserialize<'de> for BodyOp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let op = RawBodyOp::deserialize(d)?;
        match &op {
            RawBodyOp::Rename { to, .. } if to.is_empty() || to.len() > MAX_NAME => Err(
                serde::de::Error::custom("rename: `to` must be a key of 1 to 1024 bytes"),
            ),
            RawBodyOp::Move { from, to } if to.is_inside(from) => Err(serde::de::Error::custom(
                "move: `to` cannot be inside `from`",
            )),
            _ => Ok(BodyOp(op)),
        }
    }
}

/// A list of body operations, at most [`MAX_OPS`].
fn body_ops<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<BodyOp>, D::Error> {
    let ops = Vec::<BodyOp>::deserialize(d)?;
    if ops.len() > MAX_OPS {
        return Err(serde::de::Error::custom(format!(
            "body: at most {MAX_OPS} operations"
        )));
    }
    Ok(ops)
}

/// An array index token: `0` or digits without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    if token.is_empty()
        || !token.bytes().all(|b| b.is_ascii_digit())
        || (token.len() > 1 && token.starts_with('0'))
    {
        return None;
    }
    token.parse().ok()
}

/// The value at `tokens`, if there is one.
fn get_mut<'v>(doc: &'v mut Value, tokens: &[String]) -> Option<&'v mut Value> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m.get_mut(t.as_str())?,
            Value::Array(a) => a.get_mut(array_index(t)?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Whether `tokens` can be walked, creating what is missing: every existing
/// step must be an object, or an array with a valid index or `-`.
fn can_walk(doc: &Value, tokens: &[String]) -> bool {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => match m.get(t.as_str()) {
                Some(v) => v,
                None => return true,
            },
            Value::Array(_) if t == "-" => return true,
            Value::Array(a) => match array_index(t).and_then(|i| a.get(i)) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    matches!(cur, Value::Object(_) | Value::Array(_))
}

/// Walk `tokens`, creating missing object members (and appending for `-`)
/// as empty objects. Only call after [`can_walk`] said yes.
fn walk_create<'v>(doc: &'v mut Value, tokens: &[String]) -> Option<&'v mut Value> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m
                .entry(t.as_str())
                .or_insert_with(|| Value::Object(Map::new())),
            Value::Array(a) => {
                if t == "-" {
                    a.push(Value::Object(Map::new()));
                    a.last_mut()?
                } else {
                    a.get_mut(array_index(t)?)?
                }
            }
            _ => return None,
        };
    }
    Some(cur)
}

/// `set`: `Err` gives the value back when it cannot be set (an existing
/// step is not an object or array, or an index is out of range); then the
/// document is left exactly as it was.
fn set(doc: &mut Value, pointer: &Pointer, value: Value) -> Result<(), Value> {
    let (parent, last) = pointer.split();
    if !can_walk(doc, parent) {
        return Err(value);
    }
    // Check the last step too before creating anything.
    if let Some(Value::Array(a)) = get_ref(doc, parent)
        && last != "-"
        && array_index(last).is_none_or(|i| i > a.len())
    {
        return Err(value);
    }
    match walk_create(doc, parent) {
        Some(Value::Object(m)) => {
            m.insert(last.to_string(), value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            match array_index(last) {
                Some(i) if i < a.len() => a[i] = value,
                _ => a.push(value),
            }
            Ok(())
        }
        _ => Err(value),
    }
}

fn get_ref<'v>(doc: &'v Value, tokens: &[String]) -> Option<&'v Value> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m.get(t.as_str())?,
            Value::Array(a) => a.get(array_index(t)?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Remove `key` from `map`, keeping the order of the others (also when
/// serde_json preserves key order).
fn take_key(map: &mut Map<String, Value>, key: &str) -> Option<Value> {
    if !map.contains_key(key) {
        return None;
    }
    let mut taken = None;
    for (k, v) in std::mem::take(map) {
        if k == key {
            taken = Some(v);
        } else {
            map.insert(k, v);
        }
    }
    taken
}

/// `remove`: the removed value, if there was one.
fn remove(doc: &mut Value, pointer: &Pointer) -> Option<Value> {
    let (parent, last) = pointer.split();
    match get_mut(doc, parent)? {
        Value::Object(m) => take_key(m, last),
        Value::Array(a) => {
            let i = array_index(last)?;
            (i < a.len()).then(|| a.remove(i))
        }
        _ => None,
    }
}

/// `rename`: whether the document changed. The key keeps its place; a
/// member already named `to` is replaced.
fn rename(doc: &mut Value, pointer: &Pointer, to: &str) -> bool {
    let (parent, last) = pointer.split();
    if last == to {
        return false;
    }
    let Some(Value::Object(m)) = get_mut(doc, parent) else {
        return false;
    };
    if !m.contains_key(last) {
        return false;
    }
    for (k, v) in std::mem::take(m) {
        if k == last {
            m.insert(to.to_string(), v);
        } else if k != to {
            m.insert(k, v);
        }
    }
    true
}

/// `move`: whether the document changed. If the value cannot be set at
/// `to`, it is put back where it was.
fn move_value(doc: &mut Value, from: &Pointer, to: &Pointer) -> bool {
    if from == to {
        return false;
    }
    let Some(value) = remove(doc, from) else {
        return false;
    };
    let Err(value) = set(doc, to, value) else {
        return true;
    };
    // Put it back: the parent of `from` is still there.
    let (parent, last) = from.split();
    match get_mut(doc, parent) {
        Some(Value::Object(m)) => {
            m.insert(last.to_string(), value);
        }
        Some(Value::Array(a)) => {
            if let Some(i) = array_index(last) {
                a.insert(i.min(a.len()), value);
            }
        }
        _ => {}
    }
    false
}

/// Apply `ops` to a JSON body: the new body, `None` when nothing changed,
/// or why the body cannot be edited (too large, not JSON).
fn edit_json(body: &[u8], ops: &[BodyOp]) -> Result<Option<Vec<u8>>, &'static str> {
    if body.len() > MAX_BODY {
        return Err("the body is larger than 8 MiB");
    }
    let mut doc: Value = serde_json::from_slice(body).map_err(|_| "the body is not valid JSON")?;
    let mut changed = false;
    for BodyOp(op) in ops {
        changed |= match op {
            RawBodyOp::Set { pointer, value } => set(&mut doc, pointer, value.clone()).is_ok(),
            RawBodyOp::Remove { pointer } => remove(&mut doc, pointer).is_some(),
            RawBodyOp::Rename { pointer, to } => rename(&mut doc, pointer, to),
            RawBodyOp::Move { from, to } => move_value(&mut doc, from, to),
        };
    }
    if !changed {
        return Ok(None);
    }
    serde_json::to_vec(&doc)
        .map(Some)
        .map_err(|_| "the edited body could not be written")
}

/// Apply body edits to a request or response whose `content-type` says JSON.
fn apply_body(msg: &mut impl Message, ops: &[BodyOp]) -> Result<(), Error> {
    if ops.is_empty() {
        return Ok(());
    }
    let is_json = msg
        .header_value("content-type")
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("json"));
    if !is_json {
        return Ok(());
    }
    let Some(body) = msg.body_bytes() else {
        return Ok(());
    };
    if body.is_empty() {
        return Ok(());
    }
    match edit_json(&body, ops) {
        Ok(Some(new)) => msg.replace_body(&new),
        Ok(None) => Ok(()),
        Err(why) => {
            transom_plugin_sdk::log(Level::Debug, &format!("body left as it is: {why}"));
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------
// Status

/// `status = { from = 404, to = 200 }`: `to` replaces `from` (any status
/// when `from` is left out).
#[derive(Debug, Clone)]
struct StatusRule {
    from: Option<u16>,
    to: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatus {
    from: Option<u16>,
    to: u16,
}

impl<'de> Deserialize<'de> for StatusRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawStatus::deserialize(d)?;
        if !(200..=599).contains(&raw.to) {
            return Err(serde::de::Error::custom("status.to: must be 200 to 599"));
        }
        if raw.from.is_some_and(|f| !(100..=999).contains(&f)) {
            return Err(serde::de::Error::custom("status.from: must be 100 to 999"));
        }
        Ok(StatusRule {
            from: raw.from,
            to: raw.to,
        })
    }
}

// ---------------------------------------------------------------------------
// The plugin

/// The plugin.
pub struct Transform;

impl Plugin for Transform {
    const ON_RESPONSE: bool = true;

    fn on_request(req: &mut Request) -> Result<Action, Error> {
        let cfg = transom_plugin_sdk::shared_config::<Config>()?;
        let rules = &cfg.request;
        apply_headers(req, &rules.headers)?;
        if let Some(rule) = &rules.path
            && let Some(path) = rewrite_path(&req.path(), rule)
        {
            req.set_path(&path)?;
        }
        if !rules.query.is_empty()
            && let Some(query) = edit_query(req.query().as_deref(), &rules.query)
        {
            req.set_query(query.as_deref())?;
        }
        apply_body(req, &rules.body)?;
        if cfg.response.is_empty() {
            req.skip_response_phase();
        }
        Ok(Action::Continue)
    }

    fn on_response(resp: &mut Response) -> Result<(), Error> {
        let cfg = transom_plugin_sdk::shared_config::<Config>()?;
        let rules = &cfg.response;
        if let Some(rule) = &rules.status
            && rule.from.is_none_or(|f| f == resp.status())
        {
            resp.set_status(rule.to)?;
        }
        apply_headers(resp, &rules.headers)?;
        apply_body(resp, &rules.body)?;
        Ok(())
    }
}

export_plugin!(Transform);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use transom_plugin_sdk::testing::TestHost;

    fn run(mut host: TestHost, config: Value) -> TestHost {
        host.config = config.to_string();
        assert_eq!(host.run_request::<Transform>(), Ok(Action::Continue));
        host
    }

    #[test]
    fn the_response_phase_is_skipped_only_without_response_rules() {
        let host = run(
            TestHost::new(),
            json!({"request": {"headers": {"set": {"x-a": "1"}}}}),
        );
        assert!(host.response_phase_skipped);
        let host = run(
            TestHost::new(),
            json!({"response": {"headers": {"remove": ["server"]}}}),
        );
        assert!(!host.response_phase_skipped);
        let host = run(
            TestHost::new(),
            json!({"response": {"status": {"to": 201}}}),
        );
        assert!(!host.response_phase_skipped);
    }

    fn run_response(mut host: TestHost, config: Value) -> TestHost {
        host.config = config.to_string();
        assert_eq!(host.run_response::<Transform>(), Ok(()));
        host
    }

    fn values(headers: &[(String, String)], name: &str) -> Vec<String> {
        headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn config_error(config: Value) -> String {
        let mut host = TestHost::new().config(&config.to_string());
        match host.run_request::<Transform>() {
            Err(e) => e.0,
            other => panic!("expected a config error for {config}, got {other:?}"),
        }
    }

    // --- headers -----------------------------------------------------------

    #[test]
    fn header_ops() {
        let host = TestHost::new()
            .header("x-old", "1")
            .header("x-old", "2")
            .header("x-new", "replaced")
            .header("x-gone", "g")
            .header("x-set", "before")
            .header("x-add", "a")
            .header("x-keep", "k");
        let host = run(
            host,
            json!({"request": {"headers": {
                "rename": {"x-old": "x-new", "x-absent": "x-other"},
                "remove": ["x-gone", "x-absent"],
                "set": {"x-set": "after", "X-Fresh": "f"},
                "add": {"x-add": "b"},
            }}}),
        );
        let h = &host.request.headers;
        assert_eq!(values(h, "x-old"), Vec::<String>::new());
        assert_eq!(values(h, "x-new"), ["1", "2"], "all values move, replacing");
        assert_eq!(values(h, "x-other"), Vec::<String>::new());
        assert_eq!(values(h, "x-gone"), Vec::<String>::new());
        assert_eq!(values(h, "x-set"), ["after"]);
        assert_eq!(values(h, "x-fresh"), ["f"]);
        assert_eq!(values(h, "x-add"), ["a", "b"]);
        assert_eq!(values(h, "x-keep"), ["k"]);
    }

    #[test]
    fn header_renames_apply_together() {
        let host = TestHost::new()
            .header("x-a", "a")
            .header("x-b", "b")
            .header("x-c", "c")
            .header("x-d", "d");
        let host = run(
            host,
            json!({"request": {"headers": {"rename": {
                "x-a": "x-b", "x-b": "x-a",   // swap
                "x-c": "x-z", "x-d": "x-z",   // merge
            }}}}),
        );
        let h = &host.request.headers;
        assert_eq!(values(h, "x-a"), ["b"]);
        assert_eq!(values(h, "x-b"), ["a"]);
        assert_eq!(values(h, "x-z"), ["c", "d"]);
        assert!(values(h, "x-c").is_empty() && values(h, "x-d").is_empty());
    }

    #[test]
    fn header_ops_run_rename_remove_set_add() {
        let host = TestHost::new().header("x-a", "1").header("x-r", "r");
        let host = run(
            host,
            json!({"request": {"headers": {
                // rename before remove: the renamed header is removed
                "rename": {"x-a": "x-b"},
                // remove before set: x-r ends up set
                "remove": ["x-b", "x-r"],
                "set": {"x-r": "set", "x-m": "1"},
                // set before add: both values remain
                "add": {"x-m": "2"},
            }}}),
        );
        let h = &host.request.headers;
        assert!(values(h, "x-a").is_empty());
        assert!(values(h, "x-b").is_empty());
        assert_eq!(values(h, "x-r"), ["set"]);
        assert_eq!(values(h, "x-m"), ["1", "2"]);
    }

    #[test]
    fn response_headers() {
        let host = TestHost::new().response(
            200,
            &[("server", "nginx"), ("x-upstream-id", "7"), ("x-a", "1")],
            None,
        );
        let host = run_response(
            host,
            json!({"response": {"headers": {
                "remove": ["server"],
                "rename": {"x-upstream-id": "x-request-id"},
                "set": {"x-a": "2"},
                "add": {"cache-control": "no-store"},
            }}}),
        );
        let h = &host.response.headers;
        assert!(values(h, "server").is_empty());
        assert_eq!(values(h, "x-request-id"), ["7"]);
        assert_eq!(values(h, "x-a"), ["2"]);
        assert_eq!(values(h, "cache-control"), ["no-store"]);
    }

    #[test]
    fn request_rules_do_not_touch_the_response_and_back() {
        let config = json!({"request": {"headers": {"set": {"x-req": "1"}}},
                            "response": {"headers": {"set": {"x-resp": "1"}}}});
        let host = run(TestHost::new(), config.clone());
        assert_eq!(values(&host.request.headers, "x-req"), ["1"]);
        assert!(values(&host.request.headers, "x-resp").is_empty());
        let host = run_response(host, config);
        assert_eq!(values(&host.response.headers, "x-resp"), ["1"]);
        assert!(values(&host.response.headers, "x-req").is_empty());
    }

    // --- path --------------------------------------------------------------

    fn path_after(path: &str, rule: Value) -> (String, Option<String>) {
        let host = run(
            TestHost::new().request("GET", path),
            json!({"request": {"path": rule}}),
        );
        (host.request.path, host.request.query)
    }

    #[test]
    fn path_template_with_captures() {
        let rule = json!({"from": "/v1/users/{id}/posts/{post}", "to": "/api/posts/{post}?"});
        assert!(config_error(json!({"request": {"path": rule}})).contains("path.to"));

        let rule =
            json!({"from": "/v1/users/{id}/posts/{post}", "to": "/api/posts/{post}/by/{id}.json"});
        assert_eq!(
            path_after("/v1/users/42/posts/7?full=1", rule.clone()),
            ("/api/posts/7/by/42.json".into(), Some("full=1".into()))
        );
        for unchanged in [
            "/v1/users/42/posts",
            "/v1/users/42/posts/7/x",
            "/v1/users//posts/7",
            "/v1/users/42/posts/",
            "/v2/users/42/posts/7",
            "/",
        ] {
            assert_eq!(path_after(unchanged, rule.clone()).0, unchanged);
        }
        // Captures are taken raw, so encodings survive.
        assert_eq!(
            path_after("/v1/users/a%2Fb/posts/%C3%A9", rule).0,
            "/api/posts/%C3%A9/by/a%2Fb.json"
        );
    }

    #[test]
    fn path_template_with_rest() {
        let rule = json!({"from": "/files/{bucket}/{*rest}", "to": "/storage/{bucket}/{*rest}"});
        assert_eq!(
            path_after("/files/b/a/b/c.txt", rule.clone()).0,
            "/storage/b/a/b/c.txt"
        );
        assert_eq!(path_after("/files/b", rule.clone()).0, "/storage/b");
        assert_eq!(path_after("/files/b/", rule.clone()).0, "/storage/b/");
        assert_eq!(path_after("/files", rule.clone()).0, "/files");
        assert_eq!(path_after("/other/b/c", rule).0, "/other/b/c");

        let rule = json!({"from": "/{*all}", "to": "/prefix/{*all}"});
        assert_eq!(path_after("/a/b", rule.clone()).0, "/prefix/a/b");
        assert_eq!(path_after("/", rule).0, "/prefix/");

        // The catch-all may be dropped; `to` may be just the rest.
        let rule = json!({"from": "/old/{*rest}", "to": "/{*rest}"});
        assert_eq!(path_after("/old/x/y", rule.clone()).0, "/x/y");
        assert_eq!(path_after("/old", rule).0, "/");
        let rule = json!({"from": "/old/{*rest}", "to": "/new"});
        assert_eq!(path_after("/old/x/y", rule).0, "/new");
    }

    #[test]
    fn path_prefixes() {
        let both = json!({"strip_prefix": "/api", "add_prefix": "/v2"});
        assert_eq!(
            path_after("/api/users?x=1", both.clone()),
            ("/v2/users".into(), Some("x=1".into()))
        );
        assert_eq!(path_after("/api", both.clone()).0, "/v2");
        assert_eq!(path_after("/api/", both.clone()).0, "/v2/");
        assert_eq!(
            path_after("/apiary", both.clone()).0,
            "/apiary",
            "segment boundary"
        );
        assert_eq!(
            path_after("/other", both).0,
            "/other",
            "no add without the strip"
        );

        let strip = json!({"strip_prefix": "/api/v1"});
        assert_eq!(path_after("/api/v1/users", strip.clone()).0, "/users");
        assert_eq!(path_after("/api/v1", strip).0, "/");

        let add = json!({"add_prefix": "/v2"});
        assert_eq!(path_after("/users", add.clone()).0, "/v2/users");
        assert_eq!(path_after("/", add).0, "/v2/");
    }

    // --- query -------------------------------------------------------------

    fn query_after(query: Option<&str>, ops: Value) -> Option<String> {
        let path = match query {
            Some(q) => format!("/x?{q}"),
            None => "/x".into(),
        };
        run(
            TestHost::new().request("GET", &path),
            json!({"request": {"query": ops}}),
        )
        .request
        .query
    }

    #[test]
    fn query_set_replaces_in_place_and_encodes() {
        assert_eq!(
            query_after(Some("a=1&v=1&b=%20x+y&v=3"), json!({"set": {"v": "2 &=é"}})).as_deref(),
            Some("a=1&v=2%20%26%3D%C3%A9&b=%20x+y")
        );
        assert_eq!(
            query_after(Some("a=%2F"), json!({"set": {"v": "2"}})).as_deref(),
            Some("a=%2F&v=2")
        );
        assert_eq!(
            query_after(None, json!({"set": {"v": "2"}})).as_deref(),
            Some("v=2")
        );
        // A name given encoded is matched decoded.
        assert_eq!(
            query_after(Some("%76=1&x"), json!({"set": {"v": "2"}})).as_deref(),
            Some("v=2&x")
        );
    }

    #[test]
    fn query_remove_rename_add() {
        assert_eq!(
            query_after(
                Some("debug=1&a=1&debug&de%62ug=2&b"),
                json!({"remove": ["debug"]})
            )
            .as_deref(),
            Some("a=1&b")
        );
        assert_eq!(
            query_after(Some("debug=1"), json!({"remove": ["debug"]})),
            None
        );
        assert_eq!(
            query_after(
                Some("q=hello%20world&x=1&search=old&q=2"),
                json!({"rename": {"q": "search"}})
            )
            .as_deref(),
            Some("search=hello%20world&x=1&search=2"),
            "values stay raw; the old `search` is replaced"
        );
        assert_eq!(
            query_after(Some("a=1"), json!({"add": {"a": "2", "b c": "d/e"}})).as_deref(),
            Some("a=1&a=2&b%20c=d%2Fe")
        );
    }

    #[test]
    fn query_renames_apply_together() {
        assert_eq!(
            query_after(Some("a=1&b=2&c=3"), json!({"rename": {"a": "b", "b": "a"}})).as_deref(),
            Some("b=1&a=2&c=3")
        );
    }

    #[test]
    fn query_ops_run_rename_remove_set_add() {
        assert_eq!(
            query_after(
                Some("old=1&gone=2&s=3&k=%41"),
                json!({"rename": {"old": "new"}, "remove": ["new", "gone"], "set": {"s": "4"}, "add": {"s": "5"}})
            )
            .as_deref(),
            Some("s=4&k=%41&s=5")
        );
    }

    #[test]
    fn query_untouched_when_nothing_changes() {
        assert_eq!(
            query_after(
                Some("a=1&&b=%zz"),
                json!({"remove": ["x"], "rename": {"y": "z"}})
            )
            .as_deref(),
            Some("a=1&&b=%zz")
        );
        assert_eq!(query_after(None, json!({"remove": ["x"]})), None);
    }

    // --- body --------------------------------------------------------------

    fn body_after(body: &str, ops: Value) -> Value {
        let host = run(
            TestHost::new()
                .header("content-type", "application/json; charset=utf-8")
                .body(body.as_bytes()),
            json!({"request": {"body": ops}}),
        );
        serde_json::from_slice(host.request.body.as_deref().unwrap_or_default()).expect("JSON body")
    }

    fn raw_body_after(host: TestHost, ops: Value) -> Vec<u8> {
        run(host, json!({"request": {"body": ops}}))
            .request
            .body
            .unwrap_or_default()
    }

    #[test]
    fn body_set() {
        let doc = r#"{"a": 1, "meta": {"x": true}, "items": [1, 2]}"#;
        assert_eq!(
            body_after(
                doc,
                json!([{"op": "set", "pointer": "/meta/source", "value": "gateway"}])
            ),
            json!({"a": 1, "meta": {"x": true, "source": "gateway"}, "items": [1, 2]})
        );
        // Replace, create intermediates, any JSON value.
        assert_eq!(
            body_after(
                doc,
                json!([
                    {"op": "set", "pointer": "/a", "value": {"n": [1]}},
                    {"op": "set", "pointer": "/new/deep/key", "value": 3},
                ])
            ),
            json!({"a": {"n": [1]}, "meta": {"x": true}, "items": [1, 2], "new": {"deep": {"key": 3}}})
        );
        // Arrays: `-` appends, an index replaces, the length appends.
        assert_eq!(
            body_after(
                doc,
                json!([
                    {"op": "set", "pointer": "/items/-", "value": 3},
                    {"op": "set", "pointer": "/items/0", "value": 0},
                    {"op": "set", "pointer": "/items/3", "value": 4},
                    {"op": "set", "pointer": "/items/9", "value": 9},
                    {"op": "set", "pointer": "/items/01", "value": 9},
                    {"op": "set", "pointer": "/items/-/name", "value": "n"},
                ])
            )["items"],
            json!([0, 2, 3, 4, {"name": "n"}])
        );
        // Through a scalar: skipped, nothing created on the way.
        assert_eq!(
            body_after(
                doc,
                json!([
                    {"op": "set", "pointer": "/a/b", "value": 1},
                    {"op": "set", "pointer": "/meta/x/y/z", "value": 1},
                ])
            ),
            serde_json::from_str::<Value>(doc).expect("json")
        );
    }

    #[test]
    fn body_pointer_escapes() {
        let doc = r#"{"a/b": {"c~d": 1}, "": {"": 2}}"#;
        assert_eq!(
            body_after(
                doc,
                json!([
                    {"op": "set", "pointer": "/a~1b/c~0d", "value": 10},
                    {"op": "set", "pointer": "/~01", "value": "tilde-one"},
                    {"op": "remove", "pointer": "//"},
                ])
            ),
            json!({"a/b": {"c~d": 10}, "~1": "tilde-one", "": {}})
        );
        assert_eq!(
            Pointer::parse("/a~1b/c~0d/~01/"),
            Ok(Pointer(vec![
                "a/b".into(),
                "c~d".into(),
                "~1".into(),
                String::new()
            ]))
        );
    }

    #[test]
    fn body_remove() {
        let doc = r#"{"internal": {"x": 1}, "keep": [1, 2, 3]}"#;
        assert_eq!(
            body_after(
                doc,
                json!([
                    {"op": "remove", "pointer": "/internal"},
                    {"op": "remove", "pointer": "/keep/1"},
                ])
            ),
            json!({"keep": [1, 3]})
        );
    }

    #[test]
    fn body_noops_leave_the_bytes_alone() {
        let doc = "{ \"a\" : [1, 2],  \"b\": 1.50 }";
        let host = TestHost::new()
            .header("content-type", "application/json")
            .body(doc.as_bytes());
        let ops = json!([
            {"op": "remove", "pointer": "/missing"},
            {"op": "remove", "pointer": "/a/5"},
            {"op": "remove", "pointer": "/a/-"},
            {"op": "remove", "pointer": "/b/c"},
            {"op": "rename", "pointer": "/missing", "to": "x"},
            {"op": "rename", "pointer": "/a/0", "to": "x"},
            {"op": "move", "from": "/missing", "to": "/x"},
        ]);
        assert_eq!(raw_body_after(host, ops), doc.as_bytes());
    }

    #[test]
    fn body_rename() {
        let doc = r#"{"user": {"userName": "ann", "id": 1, "username": "old"}}"#;
        assert_eq!(
            body_after(
                doc,
                json!([{"op": "rename", "pointer": "/user/userName", "to": "username"}])
            ),
            json!({"user": {"username": "ann", "id": 1}})
        );
        assert_eq!(
            body_after(
                r#"{"a/b": 1}"#,
                json!([{"op": "rename", "pointer": "/a~1b", "to": "c/d"}])
            ),
            json!({"c/d": 1})
        );
    }

    #[test]
    fn body_move() {
        let doc = r#"{"a": {"b": [1, 2], "k": 0}, "x": 2}"#;
        assert_eq!(
            body_after(doc, json!([{"op": "move", "from": "/a/b", "to": "/c"}])),
            json!({"a": {"k": 0}, "x": 2, "c": [1, 2]})
        );
        assert_eq!(
            body_after(
                doc,
                json!([{"op": "move", "from": "/a/b/0", "to": "/deep/er/first"}])
            ),
            json!({"a": {"b": [2], "k": 0}, "x": 2, "deep": {"er": {"first": 1}}})
        );
        assert_eq!(
            body_after(doc, json!([{"op": "move", "from": "/x", "to": "/a/b/-"}])),
            json!({"a": {"b": [1, 2, 2], "k": 0}})
        );
        // A target it cannot reach: the value stays where it was.
        assert_eq!(
            body_after(doc, json!([{"op": "move", "from": "/a/b", "to": "/x/y"}])),
            serde_json::from_str::<Value>(doc).expect("json")
        );
        assert_eq!(
            body_after(doc, json!([{"op": "move", "from": "/a/b/0", "to": "/x/y"}])),
            serde_json::from_str::<Value>(doc).expect("json")
        );
    }

    #[test]
    fn body_ops_run_in_order() {
        assert_eq!(
            body_after(
                r#"{"a": 1}"#,
                json!([
                    {"op": "set", "pointer": "/b", "value": 2},
                    {"op": "move", "from": "/b", "to": "/c"},
                    {"op": "rename", "pointer": "/c", "to": "d"},
                    {"op": "remove", "pointer": "/a"},
                ])
            ),
            json!({"d": 2})
        );
    }

    #[test]
    fn body_is_skipped_unless_json() {
        let ops = json!([{"op": "set", "pointer": "/a", "value": 1}]);
        // Not JSON by content type.
        let host = TestHost::new()
            .header("content-type", "text/plain")
            .body(b"{}");
        assert_eq!(raw_body_after(host, ops.clone()), b"{}");
        // No content type.
        let host = TestHost::new().body(b"{}");
        assert_eq!(raw_body_after(host, ops.clone()), b"{}");
        // JSON content type, but the body is not JSON: left as it is.
        let host = TestHost::new()
            .header("content-type", "application/json")
            .body(b"{not json");
        let host = run(host, json!({"request": {"body": ops.clone()}}));
        assert_eq!(host.request.body.as_deref(), Some(&b"{not json"[..]));
        assert!(host.logs.iter().any(|(_, m)| m.contains("not valid JSON")));
        // Empty body.
        let host = TestHost::new()
            .header("content-type", "application/json")
            .body(b"");
        assert_eq!(raw_body_after(host, ops.clone()), b"");
        // The route does not give the plugin the body: nothing to do.
        let mut host = TestHost::new().header("content-type", "application/json");
        host.request.body = Some(b"{}".to_vec());
        let host = run(host, json!({"request": {"body": ops.clone()}}));
        assert_eq!(host.request.body.as_deref(), Some(&b"{}"[..]));
        // A vendor JSON type counts.
        let host = TestHost::new()
            .header("content-type", "application/vnd.api+JSON")
            .body(b"{}");
        assert_eq!(raw_body_after(host, ops), br#"{"a":1}"#);
    }

    #[test]
    fn oversized_bodies_are_left_alone() {
        let big = format!("[{}0]", "0,".repeat(MAX_BODY / 2));
        assert_eq!(
            edit_json(big.as_bytes(), &[]),
            Err("the body is larger than 8 MiB")
        );
    }

    #[test]
    fn response_body_and_status() {
        let body = br#"{"data": {"userName": "ann"}, "internal": {"trace": 1}}"#;
        let host = TestHost::new().response(
            404,
            &[("content-type", "application/problem+json")],
            Some(body),
        );
        let host = run_response(
            host,
            json!({"response": {
                "status": {"from": 404, "to": 200},
                "body": [
                    {"op": "remove", "pointer": "/internal"},
                    {"op": "rename", "pointer": "/data/userName", "to": "username"},
                ],
            }}),
        );
        assert_eq!(host.response.status, 200);
        let got: Value = serde_json::from_slice(host.response.body.as_deref().unwrap_or_default())
            .expect("json");
        assert_eq!(got, json!({"data": {"username": "ann"}}));

        // Another status is left alone; a text body too.
        let host = TestHost::new().response(500, &[("content-type", "text/html")], Some(b"<p>"));
        let host = run_response(
            host,
            json!({"response": {"status": {"from": 404, "to": 200},
                                "body": [{"op": "remove", "pointer": "/x"}]}}),
        );
        assert_eq!(host.response.status, 500);
        assert_eq!(host.response.body.as_deref(), Some(&b"<p>"[..]));

        // Without `from`, every status changes.
        let host = run_response(
            TestHost::new().response(503, &[], None),
            json!({"response": {"status": {"to": 200}}}),
        );
        assert_eq!(host.response.status, 200);
    }

    #[test]
    fn response_content_type_is_read_after_header_edits() {
        let host = TestHost::new().response(200, &[("content-type", "text/plain")], Some(b"{}"));
        let host = run_response(
            host,
            json!({"response": {
                "headers": {"set": {"content-type": "application/json"}},
                "body": [{"op": "set", "pointer": "/ok", "value": true}],
            }}),
        );
        assert_eq!(host.response.body.as_deref(), Some(&br#"{"ok":true}"#[..]));
    }

    #[test]
    fn empty_config_changes_nothing() {
        let host = TestHost::new()
            .request("POST", "/a?b=1")
            .header("x", "1")
            .header("content-type", "application/json")
            .body(b"{ }");
        let before = host.request.clone();
        let host = run(host, json!({}));
        assert_eq!(host.request, before);
    }

    // --- configuration -----------------------------------------------------

    #[test]
    fn invalid_configs_are_errors() {
        let cases = [
            (json!({"requests": {}}), "unknown field `requests`"),
            (
                json!({"request": {"headers": {"append": {}}}}),
                "unknown field `append`",
            ),
            (
                json!({"request": {"headers": {"set": {"bad name": "1"}}}}),
                "headers.set",
            ),
            (
                json!({"request": {"headers": {"set": {"content-length": "1"}}}}),
                "managed by the gateway",
            ),
            (
                json!({"request": {"headers": {"remove": ["Transfer-Encoding"]}}}),
                "managed by the gateway",
            ),
            (
                json!({"request": {"headers": {"set": {"x-a": "1\r\nx-b: 2"}}}}),
                "control characters",
            ),
            (
                json!({"request": {"headers": {"set": {"x-a": "1", "X-A": "2"}}}}),
                "named twice",
            ),
            (
                json!({"response": {"headers": {"rename": {"x-a": ""}}}}),
                "headers.rename",
            ),
            (
                json!({"request": {"path": {"from": "v1/{id}", "to": "/x"}}}),
                "path.from",
            ),
            (
                json!({"request": {"path": {"from": "/v1/{id}", "to": "/x/{uid}"}}}),
                "{uid} is not captured",
            ),
            (
                json!({"request": {"path": {"from": "/v1/{*rest}", "to": "/x/{rest}"}}}),
                "write {*rest}",
            ),
            (
                json!({"request": {"path": {"from": "/v1/{id}", "to": "/x/{*id}"}}}),
                "not the catch-all",
            ),
            (
                json!({"request": {"path": {"from": "/{*rest}/x", "to": "/"}}}),
                "last segment",
            ),
            (
                json!({"request": {"path": {"from": "/{id}/{id}", "to": "/"}}}),
                "captured twice",
            ),
            (
                json!({"request": {"path": {"from": "/user-{id}", "to": "/"}}}),
                "literal text or a whole",
            ),
            (
                json!({"request": {"path": {"from": "/{a-b}", "to": "/"}}}),
                "capture names",
            ),
            (
                json!({"request": {"path": {"from": "/x", "to": "/{y"}}}),
                "unclosed",
            ),
            (
                json!({"request": {"path": {"from": "/x", "to": "y"}}}),
                "path.to",
            ),
            (
                json!({"request": {"path": {"from": "/x"}}}),
                "from and to go together",
            ),
            (json!({"request": {"path": {}}}), "set from and to"),
            (
                json!({"request": {"path": {"from": "/x", "to": "/y", "strip_prefix": "/a"}}}),
                "not both",
            ),
            (
                json!({"request": {"path": {"strip_prefix": "/api/"}}}),
                "path.strip_prefix",
            ),
            (
                json!({"request": {"path": {"add_prefix": "v2"}}}),
                "path.add_prefix",
            ),
            (
                json!({"request": {"path": {"add_prefix": "/"}}}),
                "path.add_prefix",
            ),
            (
                json!({"request": {"query": {"remove": [""]}}}),
                "parameter names",
            ),
            (
                json!({"request": {"body": [{"op": "set", "pointer": "a/b", "value": 1}]}}),
                "must start with '/'",
            ),
            (
                json!({"request": {"body": [{"op": "remove", "pointer": ""}]}}),
                "must start with '/'",
            ),
            (
                json!({"request": {"body": [{"op": "remove", "pointer": "/a~2"}]}}),
                "'~' must be followed",
            ),
            (
                json!({"request": {"body": [{"op": "remove", "pointer": "/a~"}]}}),
                "'~' must be followed",
            ),
            (
                json!({"request": {"body": [{"op": "copy", "from": "/a", "to": "/b"}]}}),
                "unknown variant `copy`",
            ),
            (
                json!({"request": {"body": [{"pointer": "/a"}]}}),
                "missing field `op`",
            ),
            (
                json!({"request": {"body": [{"op": "set", "pointer": "/a"}]}}),
                "missing field `value`",
            ),
            (
                json!({"request": {"body": [{"op": "remove", "pointer": "/a", "value": 1}]}}),
                "unknown field `value`",
            ),
            (
                json!({"request": {"body": [{"op": "rename", "pointer": "/a", "to": ""}]}}),
                "rename",
            ),
            (
                json!({"request": {"body": [{"op": "move", "from": "/a", "to": "/a/b"}]}}),
                "cannot be inside",
            ),
            (
                json!({"response": {"status": {"from": 404, "to": 99}}}),
                "status.to",
            ),
            (
                json!({"response": {"status": {"from": 404}}}),
                "missing field `to`",
            ),
            (
                json!({"request": {"status": {"to": 200}}}),
                "unknown field `status`",
            ),
        ];
        for (config, want) in cases {
            let err = config_error(config.clone());
            assert!(
                err.contains(want),
                "config {config}: error {err:?} should mention {want:?}"
            );
        }
        // Response-only mistakes fail the response phase too.
        let mut host = TestHost::new().config(r#"{"response": {"body": [{"op": "nope"}]}}"#);
        assert!(host.run_response::<Transform>().is_err());
    }

    #[test]
    fn readme_example_config_works() {
        let config = json!({
            "request": {
                "headers": {"rename": {"x-client": "x-client-id"}, "remove": ["x-debug"], "set": {"x-via": "transom"}},
                "path": {"from": "/v1/users/{id}/{*rest}", "to": "/api/users/{id}/{*rest}"},
                "query": {"rename": {"q": "search"}, "remove": ["debug"], "set": {"v": "2"}},
                "body": [
                    {"op": "set", "pointer": "/meta/source", "value": "gateway"},
                    {"op": "rename", "pointer": "/userName", "to": "username"},
                ],
            },
            "response": {
                "headers": {"remove": ["server", "x-powered-by"], "add": {"cache-control": "no-store"}},
                "body": [
                    {"op": "remove", "pointer": "/internal"},
                    {"op": "move", "from": "/data/attributes", "to": "/attributes"},
                ],
            },
        });
        let host = TestHost::new()
            .request("POST", "/v1/users/42/avatar?q=ann&debug=1")
            .header("x-client", "c1")
            .header("x-debug", "1")
            .header("content-type", "application/json")
            .body(br#"{"userName": "ann"}"#)
            .response(
                200,
                &[("content-type", "application/json"), ("server", "s")],
                Some(br#"{"data": {"attributes": {"a": 1}}, "internal": 1}"#),
            );
        let host = run(host, config.clone());
        assert_eq!(host.request.path, "/api/users/42/avatar");
        assert_eq!(host.request.query.as_deref(), Some("search=ann&v=2"));
        assert_eq!(host.request.header("x-client-id").as_deref(), Some("c1"));
        assert_eq!(host.request.header("x-debug"), None);
        assert_eq!(host.request.header("x-via").as_deref(), Some("transom"));
        assert_eq!(
            serde_json::from_slice::<Value>(host.request.body.as_deref().unwrap_or_default()).ok(),
            Some(json!({"username": "ann", "meta": {"source": "gateway"}}))
        );
        let host = run_response(host, config);
        assert_eq!(host.response.header("server"), None);
        assert_eq!(
            host.response.header("cache-control").as_deref(),
            Some("no-store")
        );
        assert_eq!(
            serde_json::from_slice::<Value>(host.response.body.as_deref().unwrap_or_default()).ok(),
            Some(json!({"data": {}, "attributes": {"a": 1}}))
        );
    }

    #[test]
    fn too_many_ops_are_refused() {
        let many: Vec<Value> = (0..=MAX_OPS)
            .map(|i| json!({"op": "remove", "pointer": format!("/k{i}")}))
            .collect();
        assert!(config_error(json!({"request": {"body": many}})).contains("at most"));
        let names: Map<String, Value> = (0..=MAX_OPS)
            .map(|i| (format!("x-{i}"), json!("v")))
            .collect();
        assert!(config_error(json!({"request": {"headers": {"set": names}}})).contains("at most"));
    }

    #[test]
    fn codec_helpers() {
        assert_eq!(encode_component("a-Z_0.~ /é"), "a-Z_0.~%20%2F%C3%A9");
        assert_eq!(decode_component("a+b%20c%2x%"), "a b c%2x%");
        assert_eq!(decode_component("%C3%A9"), "é");
        assert_eq!(array_index("0"), Some(0));
        assert_eq!(array_index("10"), Some(10));
        for bad in ["", "-", "01", "-1", "1a", "99999999999999999999999"] {
            assert_eq!(array_index(bad), None, "{bad:?}");
        }
    }
}
