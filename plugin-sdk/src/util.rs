//! Helpers for plugin configurations: durations and gateway-managed headers.

use std::fmt;
use std::time::Duration;

/// What a duration looks like, for error messages.
const DURATION_HINT: &str = "write a whole number and a unit (ms, s, m, h or d), e.g. \"500ms\", \"30s\", \"10m\", \"1h\", \"1d\"";

/// Parse a duration such as `"500ms"`, `"30s"`, `"10m"`, `"1h"` or `"1d"`.
///
/// The syntax is a whole number (`0` included) directly followed by one of
/// the units `ms`, `s`, `m` (minutes), `h` or `d` (24 hours), lower case.
/// Whitespace around it is ignored; inside it, fractions, signs and other
/// units are refused with a message that quotes `text`. Callers wrap the
/// message with the config field it came from, and check their own bounds
/// (e.g. "more than 0").
///
/// ```
/// use std::time::Duration;
/// use transom_plugin_sdk::parse_duration;
///
/// assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
/// assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
/// assert!(parse_duration("1.5s").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = t.split_at(digits);
    if number.is_empty() {
        return Err(format!("{text:?} is not a duration: {DURATION_HINT}"));
    }
    let secs_per_unit: u64 = match unit {
        "ms" => 0,
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 24 * 3600,
        "" => {
            return Err(format!(
                "{text:?} is not a duration: it has no unit (ms, s, m, h or d)"
            ));
        }
        u if u.starts_with(['.', ',']) => {
            return Err(format!(
                "{text:?} is not a duration: fractions are not supported, use a smaller unit (e.g. \"1500ms\", \"90m\")"
            ));
        }
        u => {
            return Err(format!(
                "{text:?} is not a duration: {u:?} is not a unit (use ms, s, m, h or d)"
            ));
        }
    };
    let too_long = || format!("{text:?} is too long to be a duration");
    let n: u64 = number.parse().map_err(|_| too_long())?;
    if secs_per_unit == 0 {
        return Ok(Duration::from_millis(n));
    }
    n.checked_mul(secs_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(too_long)
}

/// A [`Duration`] written in a configuration as a string that
/// [`parse_duration`] accepts, for use directly as a config field:
///
/// ```
/// use transom_plugin_sdk::ConfigDuration;
///
/// #[derive(serde::Deserialize)]
/// struct Config {
///     timeout: ConfigDuration,
/// }
///
/// let cfg: Config = serde_json::from_str(r#"{"timeout": "250ms"}"#).unwrap();
/// assert_eq!(cfg.timeout.0.as_millis(), 250);
/// ```
///
/// A bad value fails deserialisation with [`parse_duration`]'s message, which
/// does not name the field: a plugin whose errors should name it keeps the
/// field a `String` and wraps the message of [`parse_duration`] itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigDuration(pub Duration);

impl From<ConfigDuration> for Duration {
    fn from(d: ConfigDuration) -> Duration {
        d.0
    }
}

impl std::str::FromStr for ConfigDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(ConfigDuration)
    }
}

impl<'de> serde::Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"500ms\", \"30s\", \"10m\", \"1h\" or \"1d\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ConfigDuration, E> {
                parse_duration(s).map(ConfigDuration).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// Headers the gateway manages itself (lower case): plugins may not set
/// them, and the gateway refuses `set-header`/`append-header` of any of them
/// with "… is managed by the gateway". The same list as the gateway's.
pub const MANAGED_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
];

/// Whether `name` (any case) is one of the [`MANAGED_HEADERS`].
pub fn is_managed_header(name: &str) -> bool {
    MANAGED_HEADERS.iter().any(|m| m.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (text, want) in [
            ("0ms", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("500ms", Duration::from_millis(500)),
            ("1500ms", Duration::from_millis(1500)),
            ("1s", Duration::from_secs(1)),
            ("010s", Duration::from_secs(10)),
            ("10m", Duration::from_secs(600)),
            ("1h", Duration::from_secs(3600)),
            ("2d", Duration::from_secs(172_800)),
            (" 30s\n", Duration::from_secs(30)),
            ("18446744073709551615ms", Duration::from_millis(u64::MAX)),
            ("18446744073709551615s", Duration::from_secs(u64::MAX)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn bad_durations_are_explained() {
        for (text, why) in [
            ("", "a whole number and a unit"),
            ("  ", "a whole number and a unit"),
            ("ms", "a whole number and a unit"),
            ("-1s", "a whole number and a unit"),
            ("+1s", "a whole number and a unit"),
            ("ten minutes", "a whole number and a unit"),
            ("5", "no unit"),
            ("1.5s", "fractions"),
            ("1,5h", "fractions"),
            ("5 s", "\" s\" is not a unit"),
            ("1S", "\"S\" is not a unit"),
            ("1sec", "\"sec\" is not a unit"),
            ("1w", "\"w\" is not a unit"),
            ("1h30m", "\"h30m\" is not a unit"),
            ("99999999999999999999h", "too long"),
            ("18446744073709551615m", "too long"),
        ] {
            let e = parse_duration(text).expect_err(text);
            assert!(e.starts_with(&format!("{text:?} is ")), "{text:?}: {e}");
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn config_durations_deserialize() {
        #[derive(serde::Deserialize)]
        struct C {
            t: ConfigDuration,
        }
        let c: C = serde_json::from_str(r#"{"t": "2m"}"#).expect("valid");
        assert_eq!(Duration::from(c.t), Duration::from_secs(120));
        let e = serde_json::from_str::<C>(r#"{"t": "2 m"}"#)
            .err()
            .expect("invalid");
        assert!(e.to_string().contains("\"2 m\" is not a duration"), "{e}");
        let e = serde_json::from_str::<C>(r#"{"t": 120}"#)
            .err()
            .expect("a number");
        assert!(e.to_string().contains("a duration such as"), "{e}");
        assert_eq!(
            "1d".parse(),
            Ok(ConfigDuration(Duration::from_secs(86_400)))
        );
    }

    #[test]
    fn managed_headers() {
        for name in MANAGED_HEADERS {
            assert_eq!(*name, name.to_ascii_lowercase());
            assert!(is_managed_header(name));
        }
        assert!(is_managed_header("Content-Length"));
        assert!(is_managed_header("TRANSFER-ENCODING"));
        assert!(is_managed_header("TE"));
        for name in ["", "content-type", "x-te", "tes", "host", "content-length "] {
            assert!(!is_managed_header(name), "{name:?}");
        }
    }

    /// The list is the gateway's (`gateway/src/plugin/host.rs`, `reserved`);
    /// checked when the SDK is built inside the repository.
    #[test]
    fn managed_headers_match_the_gateway() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway/src/plugin/host.rs");
        let Ok(source) = std::fs::read_to_string(path) else {
            return;
        };
        let body = source
            .split_once("fn reserved(")
            .and_then(|(_, rest)| rest.split_once("\n}"))
            .map(|(body, _)| body)
            .expect("gateway/src/plugin/host.rs has `fn reserved`");
        let mut gateway: Vec<&str> = body.split('"').skip(1).step_by(2).collect();
        let mut ours = MANAGED_HEADERS.to_vec();
        gateway.sort_unstable();
        ours.sort_unstable();
        assert_eq!(
            ours, gateway,
            "MANAGED_HEADERS differs from the gateway's list"
        );
    }
}
