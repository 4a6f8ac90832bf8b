//! `shape`: client-specific shaping of JSON responses.
//!
//! The same services answer every client; a route for the mobile app puts
//! `shape` in its chain to cut the rich document down to what the app shows:
//! keep only some fields, drop internal ones, rename, hoist nested objects
//! into their parent, cap list lengths and remove `null`s. It works in the
//! response phase, on upstream responses and on answers of plugins later in
//! the chain (e.g. the merged document of `aggregate`), and needs the body
//! (`body = true` on its entry in the route).
//!
//! ```toml
//! plugins = [{ name = "shape", version = "1.0.0", body = true, config = {
//!     include = ["profile.name", "profile.avatar_url", "orders.orders[].id", "orders.orders[].total", "recommendations[].title"],
//!     exclude = ["profile.internal_notes"],
//!     rename = { "profile.avatar_url" = "avatar" },
//!     flatten = [{ path = "profile", prefix = "user_" }],
//!     truncate = { "orders.orders" = 3, "recommendations" = 5 },
//!     drop_nulls = true,
//! } }]
//! ```
//!
//! Paths (see [`path`]) are dot-separated keys; `[]` after a key means every
//! element of that array, a leading `[]` the elements of a root-level array,
//! and a backslash escapes `.`, `[`, `]` and `\` inside a key. Paths that do
//! not exist in a document are ignored.
//!
//! The operations apply in this order, each to the result of the previous:
//!
//! 1. `truncate`: arrays keep their first N elements;
//! 2. `include`: only the listed paths are kept (when the list is not empty);
//! 3. `exclude`: the listed fields are removed;
//! 4. `rename`: fields get a new key, in place (deepest paths first, so every
//!    rename path uses the upstream's names);
//! 5. `flatten`: an object's fields replace it in its parent, in place, with
//!    an optional prefix (deepest paths first); flatten paths see renamed keys;
//! 6. `drop_nulls`: `null` object members are removed, recursively.
//!
//! So every path except those of `flatten` names fields as the upstream sends
//! them. Only responses with a shaped status (default: 2xx), a JSON content
//! type (`application/json` or `*/*+json`), no content encoding and a body
//! that parses as JSON are touched; anything else passes through unchanged.
//! Object members keep their order.

use std::collections::BTreeMap;

use transom_plugin_sdk::{Error, Level, Plugin, Response, export_plugin};

pub mod json;
pub mod path;

use json::Json;
use path::{Path, Step};

/// Headers describing the exact bytes of the upstream body; they would be
/// wrong for the shaped body, so they are removed.
const DIGEST_HEADERS: [&str; 4] = ["content-digest", "repr-digest", "digest", "content-md5"];

/// The configuration as written in the route.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Keep only these paths (empty: keep everything).
    #[serde(default)]
    include: Vec<String>,
    /// Remove these fields.
    #[serde(default)]
    exclude: Vec<String>,
    /// Field path → new key.
    #[serde(default)]
    rename: BTreeMap<String, String>,
    /// Objects to hoist into their parent.
    #[serde(default)]
    flatten: Vec<RawFlatten>,
    /// Array path → how many elements to keep.
    #[serde(default)]
    truncate: BTreeMap<String, usize>,
    /// Remove `null` members, recursively.
    #[serde(default)]
    drop_nulls: bool,
    /// Statuses to shape (default: 200..=299).
    status: Option<Vec<u16>>,
}

/// A `flatten` entry: `"path"` or `{ path = "path", prefix = "p_" }`.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum RawFlatten {
    Path(String),
    WithPrefix(FlattenWithPrefix),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FlattenWithPrefix {
    path: String,
    #[serde(default)]
    prefix: String,
}

/// The validated configuration, compiled once per instance.
#[derive(serde::Deserialize, Clone, Debug)]
#[serde(try_from = "RawConfig")]
struct Config {
    /// (array path, elements to keep).
    truncate: Vec<(Vec<Step>, usize)>,
    /// The include paths as a tree; `None` keeps everything.
    include: Option<Node>,
    /// Fields to remove.
    exclude: Vec<Path>,
    /// (field path, new key), deepest first.
    rename: Vec<(Path, String)>,
    /// (object path, prefix), deepest first.
    flatten: Vec<(Path, String)>,
    /// Remove `null` members.
    drop_nulls: bool,
    /// Statuses to shape; `None`: 2xx.
    status: Option<Vec<u16>>,
}

impl TryFrom<RawConfig> for Config {
    type Error = String;

    fn try_from(raw: RawConfig) -> Result<Config, String> {
        let ending_in_key = |field: &str, text: &str| -> Result<Path, String> {
            let path = Path::parse(text)?;
            if path.split_last_key().is_none() {
                return Err(format!(
                    "{field} path {text:?} must end with a key, not `[]`"
                ));
            }
            Ok(path)
        };

        let mut truncate = Vec::new();
        for (text, keep) in raw.truncate {
            let mut steps = Path::parse(&text)?.steps;
            // `list[]` (its elements) names the same array as `list`; this is
            // how the root array is written: `"[]" = 5`.
            if steps.last() == Some(&Step::Each) {
                steps.pop();
            }
            truncate.push((steps, keep));
        }

        let include = if raw.include.is_empty() {
            None
        } else {
            let mut root = Node::default();
            for text in &raw.include {
                root.insert(&Path::parse(text)?.steps);
            }
            Some(root)
        };

        let exclude = raw
            .exclude
            .iter()
            .map(|t| ending_in_key("exclude", t))
            .collect::<Result<Vec<_>, _>>()?;

        let mut rename = Vec::new();
        for (text, to) in raw.rename {
            if to.is_empty() {
                return Err(format!("rename of {text:?}: the new key is empty"));
            }
            rename.push((ending_in_key("rename", &text)?, to));
        }
        rename.sort_by_key(|(p, _)| std::cmp::Reverse(p.steps.len()));

        let mut flatten = Vec::new();
        for entry in raw.flatten {
            let (text, prefix) = match entry {
                RawFlatten::Path(p) => (p, String::new()),
                RawFlatten::WithPrefix(f) => (f.path, f.prefix),
            };
            flatten.push((ending_in_key("flatten", &text)?, prefix));
        }
        flatten.sort_by_key(|(p, _)| std::cmp::Reverse(p.steps.len()));

        if let Some(list) = &raw.status
            && let Some(bad) = list.iter().find(|s| !(100..=999).contains(*s))
        {
            return Err(format!("status {bad} is not an HTTP status"));
        }

        Ok(Config {
            truncate,
            include,
            exclude,
            rename,
            flatten,
            drop_nulls: raw.drop_nulls,
            status: raw.status,
        })
    }
}

impl Config {
    /// Whether responses with `status` are shaped.
    fn shapes(&self, status: u16) -> bool {
        match &self.status {
            Some(list) => list.contains(&status),
            None => (200..300).contains(&status),
        }
    }

    /// Every operation, in order.
    fn apply(&self, mut doc: Json) -> Json {
        for (steps, keep) in &self.truncate {
            walk(&mut doc, steps, &mut |v| {
                if let Json::Array(items) = v {
                    items.truncate(*keep);
                }
            });
        }
        if let Some(tree) = &self.include {
            doc = include(doc, tree);
        }
        for path in &self.exclude {
            if let Some((parent, key)) = path.split_last_key() {
                walk(&mut doc, parent, &mut |v| {
                    if let Json::Object(members) = v {
                        members.retain(|(k, _)| k != key);
                    }
                });
            }
        }
        for (path, to) in &self.rename {
            if let Some((parent, key)) = path.split_last_key() {
                walk(&mut doc, parent, &mut |v| {
                    if let Json::Object(members) = v {
                        rename(members, key, to);
                    }
                });
            }
        }
        for (path, prefix) in &self.flatten {
            if let Some((parent, key)) = path.split_last_key() {
                walk(&mut doc, parent, &mut |v| {
                    if let Json::Object(members) = v {
                        flatten(members, key, prefix);
                    }
                });
            }
        }
        if self.drop_nulls {
            drop_nulls(&mut doc);
        }
        doc
    }
}

/// The include paths as a tree: a node kept whole, or the members/elements
/// below it that are kept.
#[derive(Debug, Clone, Default)]
struct Node {
    /// An include path ends here: keep the value whole.
    whole: bool,
    /// Object members to keep, by key.
    keys: Vec<(String, Node)>,
    /// What to keep of every array element.
    each: Option<Box<Node>>,
}

impl Node {
    fn insert(&mut self, steps: &[Step]) {
        let Some((first, rest)) = steps.split_first() else {
            self.whole = true;
            return;
        };
        let child = match first {
            Step::Key(k) => {
                let at = match self.keys.iter().position(|(name, _)| name == k) {
                    Some(i) => i,
                    None => {
                        self.keys.push((k.clone(), Node::default()));
                        self.keys.len() - 1
                    }
                };
                &mut self.keys[at].1
            }
            Step::Each => self.each.get_or_insert_with(Box::default),
        };
        child.insert(rest);
    }

    fn key(&self, k: &str) -> Option<&Node> {
        self.keys.iter().find(|(name, _)| name == k).map(|(_, n)| n)
    }
}

/// Keep only what `tree` names. The root keeps its kind: an object keeps
/// the named members (maybe none), an array that no path enters becomes
/// empty, and a scalar root stays as it is.
fn include(doc: Json, tree: &Node) -> Json {
    match doc {
        Json::Object(_) | Json::Array(_) => prune(doc, tree).unwrap_or(Json::Array(Vec::new())),
        scalar => scalar,
    }
}

/// What remains of `v` under `node`; `None` when nothing does.
fn prune(v: Json, node: &Node) -> Option<Json> {
    if node.whole {
        return Some(v);
    }
    match v {
        Json::Object(members) => Some(Json::Object(
            members
                .into_iter()
                .filter_map(|(k, x)| {
                    let child = node.key(&k)?;
                    prune(x, child).map(|x| (k, x))
                })
                .collect(),
        )),
        Json::Array(items) => {
            let each = node.each.as_deref()?;
            Some(Json::Array(
                items.into_iter().filter_map(|x| prune(x, each)).collect(),
            ))
        }
        _ => None,
    }
}

/// Call `f` on every value `steps` addresses (none when the path does not
/// exist in `v`). Duplicated keys are all followed.
fn walk(v: &mut Json, steps: &[Step], f: &mut dyn FnMut(&mut Json)) {
    let Some((first, rest)) = steps.split_first() else {
        f(v);
        return;
    };
    match (first, v) {
        (Step::Key(k), Json::Object(members)) => {
            for (_, x) in members.iter_mut().filter(|(name, _)| name == k) {
                walk(x, rest, f);
            }
        }
        (Step::Each, Json::Array(items)) => {
            for x in items {
                walk(x, rest, f);
            }
        }
        _ => {}
    }
}

/// Rename member `from` to `to` in place; an existing `to` is replaced.
fn rename(members: &mut Vec<(String, Json)>, from: &str, to: &str) {
    if from == to || !members.iter().any(|(k, _)| k == from) {
        return;
    }
    members.retain(|(k, _)| k != to);
    for (k, _) in members.iter_mut().filter(|(k, _)| k == from) {
        *k = to.to_string();
    }
}

/// Replace object member `key` by its own members (prefixed), in place.
/// Hoisted members replace existing members of the same name; a `key` that
/// is not an object is left alone.
fn flatten(members: &mut Vec<(String, Json)>, key: &str, prefix: &str) {
    let hoisted: Vec<String> = members
        .iter()
        .filter(|(k, _)| k == key)
        .filter_map(|(_, v)| match v {
            Json::Object(inner) => Some(inner.iter().map(|(n, _)| format!("{prefix}{n}"))),
            _ => None,
        })
        .flatten()
        .collect();
    if !members
        .iter()
        .any(|(k, v)| k == key && matches!(v, Json::Object(_)))
    {
        return;
    }
    let old = std::mem::take(members);
    for (k, v) in old {
        match v {
            Json::Object(inner) if k == key => {
                members.extend(inner.into_iter().map(|(n, x)| (format!("{prefix}{n}"), x)));
            }
            _ if hoisted.contains(&k) => {}
            v => members.push((k, v)),
        }
    }
}

/// Remove `null` object members everywhere (array elements stay, so
/// positions keep their meaning).
fn drop_nulls(v: &mut Json) {
    match v {
        Json::Object(members) => {
            members.retain(|(_, x)| *x != Json::Null);
            members.iter_mut().for_each(|(_, x)| drop_nulls(x));
        }
        Json::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// `application/json`, or any `*/*+json` type.
fn is_json(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else {
        return false;
    };
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json"
        || media
            .split_once('/')
            .is_some_and(|(_, sub)| sub.ends_with("+json"))
}

pub struct Shape;

impl Plugin for Shape {
    const ON_REQUEST: bool = false;
    const ON_RESPONSE: bool = true;

    fn on_response(resp: &mut Response) -> Result<(), Error> {
        let cfg = transom_plugin_sdk::shared_config::<Config>()?;
        if !cfg.shapes(resp.status()) || !is_json(resp.header("content-type").as_deref()) {
            return Ok(());
        }
        if resp
            .header("content-encoding")
            .is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"))
        {
            return Ok(());
        }
        let Some(body) = resp.body() else {
            return Err(Error(
                "shape needs the response body: set `body = true` on its entry in the route".into(),
            ));
        };
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let doc: Json = match serde_json::from_slice(&body) {
            Ok(doc) => doc,
            Err(e) => {
                transom_plugin_sdk::log(
                    Level::Warn,
                    &format!("left a response unshaped: its body is not JSON ({e})"),
                );
                return Ok(());
            }
        };
        let out = serde_json::to_vec(&cfg.apply(doc))
            .map_err(|e| Error(format!("writing the shaped body: {e}")))?;
        resp.set_body(&out)?;
        for name in DIGEST_HEADERS {
            resp.remove_header(name);
        }
        Ok(())
    }
}

export_plugin!(Shape);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use transom_plugin_sdk::testing::TestHost;

    const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

    /// Shape `body` (a JSON 200) with `config`; the resulting body as text.
    fn shape_text(config: Value, body: &str) -> String {
        let mut host =
            TestHost::new()
                .config(&config.to_string())
                .response(200, JSON, Some(body.as_bytes()));
        assert_eq!(host.run_response::<Shape>(), Ok(()));
        String::from_utf8(host.response.body.expect("a body")).expect("UTF-8")
    }

    /// Shape `body` with `config`; the resulting body as a value.
    fn shape(config: Value, body: Value) -> Value {
        serde_json::from_str(&shape_text(config, &body.to_string())).expect("JSON out")
    }

    fn config_error(config: Value) -> String {
        let mut host = TestHost::new()
            .config(&config.to_string())
            .response(200, JSON, Some(b"{}"));
        match host.run_response::<Shape>() {
            Err(e) => e.0,
            Ok(()) => panic!("config {config} should be refused"),
        }
    }

    fn home() -> Value {
        json!({
            "profile": {
                "id": "u1",
                "name": "Ada",
                "avatar_url": "https://cdn/a.png",
                "internal_notes": "vip",
                "email": null
            },
            "orders": {
                "count": 4,
                "orders": [
                    {"id": "o1", "total": 10, "lines": [1, 2]},
                    {"id": "o2", "total": 20, "lines": []},
                    {"id": "o3", "total": 30, "lines": [3]},
                    {"id": "o4", "total": 40, "lines": [4]}
                ]
            },
            "recommendations": [
                {"title": "a", "score": 1}, {"title": "b", "score": 2},
                {"title": "c", "score": 3}, {"title": "d", "score": 4},
                {"title": "e", "score": 5}, {"title": "f", "score": 6}
            ]
        })
    }

    #[test]
    fn include_keeps_only_the_paths_through_nested_arrays() {
        let out = shape(
            json!({"include": ["profile.name", "orders.orders[].id", "recommendations[].title"]}),
            home(),
        );
        assert_eq!(
            out,
            json!({
                "profile": {"name": "Ada"},
                "orders": {"orders": [{"id": "o1"}, {"id": "o2"}, {"id": "o3"}, {"id": "o4"}]},
                "recommendations": [
                    {"title": "a"}, {"title": "b"}, {"title": "c"},
                    {"title": "d"}, {"title": "e"}, {"title": "f"}
                ]
            })
        );
    }

    #[test]
    fn include_of_a_whole_subtree_and_arrays_of_arrays() {
        let out = shape(
            json!({"include": ["orders.count", "profile", "m[][].x"]}),
            json!({"profile": {"a": 1}, "orders": {"count": 2, "orders": []}, "m": [[{"x": 1, "y": 2}], [{"x": 3}, 7]], "z": 0}),
        );
        assert_eq!(
            out,
            json!({"profile": {"a": 1}, "orders": {"count": 2}, "m": [[{"x": 1}], [{"x": 3}]]})
        );
    }

    #[test]
    fn include_on_a_root_array() {
        let out = shape(
            json!({"include": ["[].id", "[].tags"]}),
            json!([{"id": 1, "tags": ["a"], "secret": true}, {"id": 2}, "scalar"]),
        );
        assert_eq!(out, json!([{"id": 1, "tags": ["a"]}, {"id": 2}]));
        // A root array that no path enters keeps nothing.
        assert_eq!(
            shape(json!({"include": ["id"]}), json!([{"id": 1}])),
            json!([])
        );
    }

    #[test]
    fn include_ignores_paths_that_do_not_exist_or_do_not_fit() {
        let out = shape(
            json!({"include": ["profile.name", "nope.deeper", "orders.orders.id", "profile.name.first"]}),
            home(),
        );
        // `orders.orders` is an array, so `orders.orders.id` selects nothing;
        // `profile.name` is kept whole (a longer path below it changes nothing).
        assert_eq!(out, json!({"profile": {"name": "Ada"}, "orders": {}}));
    }

    #[test]
    fn exclude_removes_fields_everywhere_they_are() {
        let out = shape(
            json!({"exclude": ["profile.internal_notes", "orders.orders[].lines", "missing.field", "[].x"]}),
            home(),
        );
        assert!(out["profile"].get("internal_notes").is_none());
        assert_eq!(out["profile"]["name"], "Ada");
        assert_eq!(out["orders"]["orders"][0], json!({"id": "o1", "total": 10}));
        assert_eq!(out["orders"]["orders"].as_array().map(Vec::len), Some(4));
        // A root array.
        assert_eq!(
            shape(
                json!({"exclude": ["[].x"]}),
                json!([{"x": 1, "y": 2}, {"x": 3}])
            ),
            json!([{"y": 2}, {}])
        );
    }

    #[test]
    fn rename_in_place_keeping_order() {
        let text = shape_text(
            json!({"rename": {"profile.avatar_url": "avatar", "profile": "user", "[].x": "never"}}),
            r#"{"profile":{"id":"u1","avatar_url":"a.png","name":"Ada"},"after":1}"#,
        );
        // Both renames use the upstream's names: the deeper one ran first.
        assert_eq!(
            text,
            r#"{"user":{"id":"u1","avatar":"a.png","name":"Ada"},"after":1}"#
        );
    }

    #[test]
    fn rename_over_an_existing_field_replaces_it() {
        let out = shape(
            json!({"rename": {"items[].label": "name"}}),
            json!({"items": [{"name": "old", "label": "new"}, {"name": "kept"}]}),
        );
        assert_eq!(out, json!({"items": [{"name": "new"}, {"name": "kept"}]}));
    }

    #[test]
    fn flatten_without_prefix_hoists_in_place() {
        let text = shape_text(
            json!({"flatten": ["profile"]}),
            r#"{"first":0,"profile":{"name":"Ada","id":"u1"},"id":"doc","last":9}"#,
        );
        // The hoisted `id` replaces the parent's.
        assert_eq!(text, r#"{"first":0,"name":"Ada","id":"u1","last":9}"#);
    }

    #[test]
    fn flatten_with_prefix_and_through_arrays() {
        let text = shape_text(
            json!({"flatten": [{"path": "profile", "prefix": "user_"}, "items[].meta"]}),
            r#"{"profile":{"name":"Ada","id":"u1"},"id":"doc","items":[{"a":1,"meta":{"b":2}},{"meta":"not an object"}]}"#,
        );
        assert_eq!(
            text,
            r#"{"user_name":"Ada","user_id":"u1","id":"doc","items":[{"a":1,"b":2},{"meta":"not an object"}]}"#
        );
    }

    #[test]
    fn flatten_nested_paths_deepest_first() {
        let out = shape(
            json!({"flatten": ["a", "a.b"]}),
            json!({"a": {"b": {"c": 1}, "d": 2}}),
        );
        assert_eq!(out, json!({"c": 1, "d": 2}));
    }

    #[test]
    fn truncate_keeps_the_first_elements() {
        let out = shape(
            json!({"truncate": {"orders.orders": 3, "recommendations": 5, "profile": 1, "nope": 1}}),
            home(),
        );
        assert_eq!(out["orders"]["orders"].as_array().map(Vec::len), Some(3));
        assert_eq!(out["orders"]["orders"][2]["id"], "o3");
        assert_eq!(out["recommendations"].as_array().map(Vec::len), Some(5));
        // Not an array: untouched.
        assert_eq!(out["profile"]["name"], "Ada");
        // The root array, arrays inside arrays, and zero.
        assert_eq!(
            shape(json!({"truncate": {"[]": 2}}), json!([1, 2, 3])),
            json!([1, 2])
        );
        assert_eq!(
            shape(
                json!({"truncate": {"m[][]": 1, "z": 0}}),
                json!({"m": [[1, 2], [3, 4]], "z": [1]})
            ),
            json!({"m": [[1], [3]], "z": []})
        );
        // `list[]` names the same array as `list`.
        assert_eq!(
            shape(
                json!({"truncate": {"m[]": 1}}),
                json!({"m": [[1, 2], [3, 4]]})
            ),
            json!({"m": [[1, 2]]})
        );
    }

    #[test]
    fn drop_nulls_recursively_but_not_array_elements() {
        let out = shape(
            json!({"drop_nulls": true}),
            json!({"a": null, "b": {"c": null, "d": [null, {"e": null, "f": 1}]}, "g": 0}),
        );
        assert_eq!(out, json!({"b": {"d": [null, {"f": 1}]}, "g": 0}));
    }

    #[test]
    fn keys_with_dots_are_escaped_with_a_backslash() {
        let out = shape(
            json!({"include": [r"a\.b.c", r"x\[\]"], "rename": {r"a\.b.c": "see"}}),
            json!({"a.b": {"c": 1, "d": 2}, "a": {"b": {"c": 3}}, "x[]": 4}),
        );
        assert_eq!(out, json!({"a.b": {"see": 1}, "x[]": 4}));
    }

    #[test]
    fn realistic_mobile_home() {
        let config = json!({
            "include": ["profile.name", "profile.avatar_url", "profile.email", "orders.orders[].id", "orders.orders[].total", "recommendations[].title"],
            "exclude": ["profile.internal_notes"],
            "rename": {"profile.avatar_url": "avatar"},
            "flatten": [{"path": "profile", "prefix": "user_"}],
            "truncate": {"orders.orders": 3, "recommendations": 2},
            "drop_nulls": true
        });
        let out = shape(config, home());
        assert_eq!(
            out,
            json!({
                "user_name": "Ada",
                "user_avatar": "https://cdn/a.png",
                "orders": {"orders": [{"id": "o1", "total": 10}, {"id": "o2", "total": 20}, {"id": "o3", "total": 30}]},
                "recommendations": [{"title": "a"}, {"title": "b"}]
            })
        );
    }

    #[test]
    fn readme_example() {
        let config = json!({
            "include": ["profile.name", "profile.avatar_url", "orders.orders[].id", "orders.orders[].total", "recommendations[].title"],
            "exclude": ["profile.internal_notes"],
            "rename": {"profile.avatar_url": "avatar"},
            "flatten": [{"path": "profile", "prefix": "user_"}],
            "truncate": {"orders.orders": 3, "recommendations": 5},
            "drop_nulls": true
        });
        let body = r#"{"profile": {"id": "u1", "name": "Ada", "avatar_url": "https://cdn/a.png", "internal_notes": "vip"},
            "orders": {"count": 4, "orders": [{"id": "o1", "total": 10, "lines": [1]}, {"id": "o2", "total": 20}, {"id": "o3", "total": 30}, {"id": "o4", "total": 40}]},
            "recommendations": null}"#;
        assert_eq!(
            shape_text(config, body),
            r#"{"user_name":"Ada","user_avatar":"https://cdn/a.png","orders":{"orders":[{"id":"o1","total":10},{"id":"o2","total":20},{"id":"o3","total":30}]}}"#
        );
    }

    #[test]
    fn shapes_aggregate_answers_in_their_order() {
        // The merged document of `aggregate`, kept in its key order.
        let text = shape_text(
            json!({"exclude": ["profile.internal_notes"], "drop_nulls": true}),
            r#"{"profile":{"name":"Ada","internal_notes":"x"},"orders":{"orders":[]},"recommendations":null}"#,
        );
        assert_eq!(text, r#"{"profile":{"name":"Ada"},"orders":{"orders":[]}}"#);
    }

    #[test]
    fn empty_config_changes_nothing_but_whitespace() {
        assert_eq!(
            shape_text(json!({}), "{ \"b\": 1, \"a\": [ 1.5, -0, 1e3 ] }"),
            r#"{"b":1,"a":[1.5,-0.0,1000.0]}"#
        );
    }

    #[test]
    fn json_subtypes_and_parameters_are_shaped() {
        let mut host = TestHost::new().config(r#"{"exclude": ["x"]}"#).response(
            200,
            &[("content-type", "application/problem+json; charset=utf-8")],
            Some(br#"{"x": 1, "y": 2}"#),
        );
        assert_eq!(host.run_response::<Shape>(), Ok(()));
        assert_eq!(host.response.body.as_deref(), Some(&br#"{"y":2}"#[..]));
        assert_eq!(
            host.response.header("content-type").as_deref(),
            Some("application/problem+json; charset=utf-8")
        );
    }

    #[test]
    fn digest_headers_of_the_old_body_are_removed() {
        let mut host = TestHost::new().config(r#"{"exclude": ["x"]}"#).response(
            200,
            &[
                ("content-type", "application/json"),
                ("content-digest", "sha-256=:abc=:"),
                ("etag", "\"1\""),
            ],
            Some(br#"{"x": 1}"#),
        );
        assert_eq!(host.run_response::<Shape>(), Ok(()));
        assert_eq!(host.response.header("content-digest"), None);
        assert_eq!(host.response.header("etag").as_deref(), Some("\"1\""));
    }

    /// Run with `config` over a response; whether the body came back unchanged.
    fn untouched(config: &str, status: u16, headers: &[(&str, &str)], body: &[u8]) -> bool {
        let mut host = TestHost::new()
            .config(config)
            .response(status, headers, Some(body));
        let before = host.response.clone();
        assert_eq!(host.run_response::<Shape>(), Ok(()));
        host.response == before
    }

    #[test]
    fn other_content_types_pass_through() {
        let cfg = r#"{"exclude": ["x"]}"#;
        let body = br#"{"x": 1}"#;
        assert!(untouched(cfg, 200, &[("content-type", "text/plain")], body));
        assert!(untouched(
            cfg,
            200,
            &[("content-type", "application/jsonp")],
            body
        ));
        assert!(untouched(cfg, 200, &[], body));
        assert!(untouched(
            cfg,
            200,
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip")
            ],
            body
        ));
    }

    #[test]
    fn bodies_that_are_not_json_pass_through_with_a_warning() {
        let mut host = TestHost::new().config(r#"{"exclude": ["x"]}"#).response(
            200,
            JSON,
            Some(b"<html>oops</html>"),
        );
        assert_eq!(host.run_response::<Shape>(), Ok(()));
        assert_eq!(
            host.response.body.as_deref(),
            Some(&b"<html>oops</html>"[..])
        );
        assert!(
            host.logs
                .iter()
                .any(|(l, m)| *l == Level::Warn && m.contains("not JSON"))
        );
        assert!(untouched(r#"{"exclude": ["x"]}"#, 200, JSON, b"  "));
    }

    #[test]
    fn only_the_configured_statuses_are_shaped() {
        let cfg = r#"{"exclude": ["x"]}"#;
        let body = br#"{"x": 1}"#;
        assert!(untouched(cfg, 404, JSON, body));
        assert!(untouched(cfg, 500, JSON, body));
        assert!(!untouched(cfg, 201, JSON, body));
        let only_200 = r#"{"exclude": ["x"], "status": [200, 404]}"#;
        assert!(untouched(only_200, 201, JSON, body));
        assert!(!untouched(only_200, 404, JSON, body));
    }

    #[test]
    fn without_the_body_it_is_a_config_error() {
        let mut host = TestHost::new()
            .config(r#"{"exclude": ["x"]}"#)
            .response(200, JSON, None);
        let err = host.run_response::<Shape>().unwrap_err();
        assert!(err.0.contains("body = true"), "{err}");
    }

    #[test]
    fn invalid_configs_are_refused() {
        for (config, needle) in [
            (json!({"include": ["a..b"]}), "empty key"),
            (json!({"include": ["a[0]"]}), "not indices"),
            (json!({"exclude": ["a[]"]}), "must end with a key"),
            (json!({"rename": {"a": ""}}), "new key is empty"),
            (json!({"rename": {"[]": "x"}}), "must end with a key"),
            (json!({"flatten": ["a."]}), "empty key"),
            (
                json!({"flatten": [{"path": "a", "prefix": "p", "x": 1}]}),
                "",
            ),
            (json!({"truncate": {"a": -1}}), ""),
            (json!({"truncate": {"a]": 1}}), "without `[`"),
            (json!({"status": [42]}), "not an HTTP status"),
            (json!({"includes": []}), "unknown field"),
            (json!({"drop_nulls": "yes"}), ""),
        ] {
            let err = config_error(config.clone());
            assert!(err.contains(needle), "{config}: {err}");
        }
    }
}
