//! The route's configuration, checked and compiled once per instance.

use std::time::Duration;

use transom_plugin_sdk::{is_managed_header, parse_duration};

use crate::template::{CallRef, Pattern, Source, Template, valid_name};

/// `max_calls` when the config does not say.
pub const DEFAULT_MAX_CALLS: usize = 16;
/// The highest `max_calls` (and the most calls a config may list).
pub const HARD_MAX_CALLS: usize = 64;
/// `max_bytes` when the config does not say.
pub const DEFAULT_MAX_BYTES: usize = 4 << 20;
/// The highest `max_bytes`.
pub const HARD_MAX_BYTES: usize = 64 << 20;
/// Longest timeout a call may have.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Headers refused in `forward_headers` besides the SDK's managed ones: the
/// gateway sets `host` on upstream calls and strips the other hop-by-hop ones.
const NOT_FORWARDED: [&str; 3] = ["host", "keep-alive", "proxy-connection"];

/// Names a call may not have: they are the template sources.
const RESERVED_NAMES: [&str; 5] = ["path", "query", "header", "method", "item"];

/// The configuration as written in the route.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Path pattern whose `{params}` templates read as `{path.NAME}`.
    pattern: Option<String>,
    /// Most upstream calls per request.
    max_calls: Option<usize>,
    /// Client request headers copied onto every call.
    forward_headers: Option<Vec<String>>,
    /// Timeout of calls that set none.
    timeout: Option<String>,
    /// Most bytes of call results in one merged document.
    max_bytes: Option<usize>,
    /// Stages, run one after the other.
    stages: Vec<RawStage>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    calls: Vec<RawCall>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCall {
    name: String,
    upstream: String,
    path: String,
    #[serde(default)]
    required: bool,
    timeout: Option<String>,
    for_each: Option<String>,
}

/// The checked configuration.
#[derive(serde::Deserialize, Clone, Debug)]
#[serde(try_from = "RawConfig")]
pub struct Config {
    /// The path pattern, if any.
    pub pattern: Option<Pattern>,
    /// Most upstream calls per request.
    pub max_calls: usize,
    /// Client headers copied onto every call (lower-case).
    pub forward_headers: Vec<String>,
    /// Most bytes of call results in one merged document.
    pub max_bytes: usize,
    /// Every call, in config order (the order of the merged document).
    pub calls: Vec<CallSpec>,
    /// Each stage's calls, as positions in `calls`.
    pub stages: Vec<Vec<usize>>,
    /// Calls made whatever the data: those without `for_each`.
    pub static_calls: usize,
}

/// One configured call.
#[derive(Clone, Debug)]
pub struct CallSpec {
    /// Its key in the merged document.
    pub name: String,
    /// The upstream it goes to.
    pub upstream: String,
    /// Its path and query.
    pub path: Template,
    /// Whether the answer fails when it does.
    pub required: bool,
    /// Its time limit (default: the upstream's `request_timeout`).
    pub timeout: Option<Duration>,
    /// One call per distinct value found here.
    pub for_each: Option<CallRef>,
    /// Whether a later call reads its result (so it is parsed).
    pub read_later: bool,
}

impl TryFrom<RawConfig> for Config {
    type Error = String;

    fn try_from(raw: RawConfig) -> Result<Config, String> {
        let max_calls = raw.max_calls.unwrap_or(DEFAULT_MAX_CALLS);
        if !(1..=HARD_MAX_CALLS).contains(&max_calls) {
            return Err(format!(
                "max_calls must be between 1 and {HARD_MAX_CALLS}, not {max_calls}"
            ));
        }
        let max_bytes = raw.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
        if !(1..=HARD_MAX_BYTES).contains(&max_bytes) {
            return Err(format!(
                "max_bytes must be between 1 and {HARD_MAX_BYTES}, not {max_bytes}"
            ));
        }
        let pattern = raw.pattern.as_deref().map(Pattern::parse).transpose()?;
        let forward_headers = match raw.forward_headers {
            None => vec!["x-request-id".to_string()],
            Some(list) => list
                .into_iter()
                .map(|h| {
                    let h = h.to_ascii_lowercase();
                    if h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                        Err(format!("forward_headers: {h:?} is not a header name"))
                    } else if is_managed_header(&h) || NOT_FORWARDED.contains(&h.as_str()) {
                        Err(format!("forward_headers: {h:?} is managed by the gateway"))
                    } else {
                        Ok(h)
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        let default_timeout = raw
            .timeout
            .as_deref()
            .map(|t| parse_timeout("timeout", t))
            .transpose()?;

        if raw.stages.is_empty() {
            return Err("stages: at least one stage is needed".into());
        }
        let mut calls: Vec<CallSpec> = Vec::new();
        let mut stage_of: Vec<usize> = Vec::new();
        let mut stages = Vec::new();
        for (s, stage) in raw.stages.into_iter().enumerate() {
            if stage.calls.is_empty() {
                return Err(format!("stage {}: it has no calls", s + 1));
            }
            let mut members = Vec::new();
            for c in stage.calls {
                let name = c.name;
                let at = format!("call {name:?}");
                if !valid_name(&name) {
                    return Err(format!(
                        "{at}: names are letters, digits, `_` and `-` (no dots)"
                    ));
                }
                if RESERVED_NAMES.contains(&name.as_str()) {
                    return Err(format!("{at}: {name:?} is reserved for template sources"));
                }
                if calls.iter().any(|other| other.name == name) {
                    return Err(format!("{at}: the name is used twice"));
                }
                if c.upstream.is_empty() {
                    return Err(format!("{at}: upstream is empty"));
                }
                let mut path = Template::parse(&c.path).map_err(|e| format!("{at}: {e}"))?;
                let timeout = match c.timeout {
                    Some(t) => {
                        Some(parse_timeout("timeout", &t).map_err(|e| format!("{at}: {e}"))?)
                    }
                    None => default_timeout,
                };
                // References must name calls of earlier stages.
                let resolve = |r: &mut CallRef, what: &str| -> Result<(), String> {
                    match calls.iter().position(|o| o.name == r.name) {
                        Some(i) if stage_of[i] < s => {
                            r.index = i;
                            Ok(())
                        }
                        Some(_) => Err(format!(
                            "{at}: {what} reads call {:?} of the same stage; move it to a later stage",
                            r.name
                        )),
                        None => Err(format!(
                            "{at}: {what} reads {:?}, which is not a call of an earlier stage \
                             (nor path., query., header., method or item)",
                            r.name
                        )),
                    }
                };
                let mut for_each = match c.for_each {
                    Some(text) => {
                        let mut r =
                            CallRef::parse(&text).map_err(|e| format!("{at}: for_each {e}"))?;
                        resolve(&mut r, "for_each")?;
                        Some(r)
                    }
                    None => None,
                };
                let mut uses_item = false;
                for v in path.vars_mut() {
                    let what = format!("{{{}}}", v.text);
                    match &mut v.source {
                        Source::Call(r) => resolve(r, &what)?,
                        Source::Path(p) => {
                            if !pattern.as_ref().is_some_and(|pat| pat.has_param(p)) {
                                return Err(format!("{at}: {what} needs a `pattern` with {{{p}}}"));
                            }
                        }
                        Source::Item => {
                            if for_each.is_none() {
                                return Err(format!("{at}: {{item}} needs for_each"));
                            }
                            if v.default.is_some() {
                                return Err(format!("{at}: {{item}} takes no default"));
                            }
                            uses_item = true;
                        }
                        Source::Query(_) | Source::Header(_) | Source::Method => {}
                    }
                }
                if for_each.is_some() && !uses_item {
                    return Err(format!("{at}: with for_each, the path must use {{item}}"));
                }
                for r in path
                    .vars()
                    .filter_map(|v| match &v.source {
                        Source::Call(r) => Some(r.index),
                        _ => None,
                    })
                    .chain(for_each.as_mut().map(|r| r.index))
                    .collect::<Vec<_>>()
                {
                    calls[r].read_later = true;
                }
                members.push(calls.len());
                stage_of.push(s);
                calls.push(CallSpec {
                    name,
                    upstream: c.upstream,
                    path,
                    required: c.required,
                    timeout,
                    for_each,
                    read_later: false,
                });
                if calls.len() > HARD_MAX_CALLS {
                    return Err(format!("at most {HARD_MAX_CALLS} calls may be configured"));
                }
            }
            stages.push(members);
        }
        let static_calls = calls.iter().filter(|c| c.for_each.is_none()).count();
        if static_calls > max_calls {
            return Err(format!(
                "{static_calls} calls are configured but max_calls is {max_calls}"
            ));
        }
        Ok(Config {
            pattern,
            max_calls,
            forward_headers,
            max_bytes,
            calls,
            stages,
            static_calls,
        })
    }
}

/// A timeout: `500ms`, `2s`, `10m`, `1h` (see
/// [`transom_plugin_sdk::parse_duration`]), more than 0 and at most an hour.
/// Errors name `field`.
pub fn parse_timeout(field: &str, text: &str) -> Result<Duration, String> {
    let d = parse_duration(text).map_err(|e| format!("{field}: {e}"))?;
    if d.is_zero() || d > MAX_TIMEOUT {
        return Err(format!(
            "{field}: {text:?} must be more than 0 and at most 1h"
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_timeout("t", "150ms"), Ok(Duration::from_millis(150)));
        assert_eq!(parse_timeout("t", "2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_timeout("t", "10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_timeout("t", "1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_timeout("t", " 1s "), Ok(Duration::from_secs(1)));
        for bad in [
            "", "ms", "5", "1.5s", "-1s", "0ms", "2h", "5 s", "1d", "3601s",
        ] {
            let e = parse_timeout("timeout", bad).unwrap_err();
            assert!(e.starts_with("timeout:"), "{bad:?}: {e}");
        }
        let e = parse_timeout("timeout", "soon").unwrap_err();
        assert!(e.starts_with("timeout: \"soon\" is not a duration"), "{e}");
        let e = parse_timeout("timeout", "0s").unwrap_err();
        assert!(e.ends_with("must be more than 0 and at most 1h"), "{e}");
    }
}
