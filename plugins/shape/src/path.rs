//! Paths into a JSON document: `orders.orders[].total`.
//!
//! - keys are separated by `.`;
//! - `[]` after a key means every element of that array (`[][]` for arrays of
//!   arrays); a leading `[]` addresses the elements of a root-level array
//!   (`[].title`);
//! - a key containing `.`, `[`, `]` or `\` escapes it with a backslash:
//!   `a\.b` is the single key `a.b`, `a\\b` is `a\b`.
//!
//! Anything else (empty keys, indices like `[0]`, a stray `]`, a dangling
//! `\`) is refused, so a typo is a config error rather than a silent no-op.

use std::fmt;

/// One step of a [`Path`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The member of an object with this key.
    Key(String),
    /// Every element of an array.
    Each,
}

/// A parsed path, with its text for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// As written in the config.
    pub text: String,
    /// What it addresses, from the root.
    pub steps: Vec<Step>,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Path {
    /// Parse `text`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Path, String> {
        let bad = |why: &str| Err(format!("invalid path {text:?}: {why}"));
        let mut steps = Vec::new();
        let mut chars = text.chars().peekable();
        // A leading run of `[]`: elements of a root-level array.
        let mut root_each = false;
        while chars.peek() == Some(&'[') {
            chars.next();
            if chars.next() != Some(']') {
                return bad("only `[]` (every element) is supported, not indices");
            }
            steps.push(Step::Each);
            root_each = true;
        }
        if root_each {
            match chars.next() {
                None => {
                    return Ok(Path {
                        text: text.to_string(),
                        steps,
                    });
                }
                Some('.') => {}
                Some(_) => return bad("`[]` must be followed by `.`, `[]` or the end"),
            }
        }
        loop {
            // A key, up to `.`, `[` or the end.
            let mut key = String::new();
            while let Some(&c) = chars.peek() {
                match c {
                    '.' | '[' => break,
                    ']' => return bad("`]` without `[` (escape it as `\\]`)"),
                    '\\' => {
                        chars.next();
                        match chars.next() {
                            Some(e @ ('.' | '[' | ']' | '\\')) => key.push(e),
                            _ => return bad("`\\` escapes only `.`, `[`, `]` and `\\`"),
                        }
                    }
                    _ => {
                        key.push(c);
                        chars.next();
                    }
                }
            }
            if key.is_empty() {
                return bad("empty key");
            }
            steps.push(Step::Key(key));
            while chars.peek() == Some(&'[') {
                chars.next();
                if chars.next() != Some(']') {
                    return bad("only `[]` (every element) is supported, not indices");
                }
                steps.push(Step::Each);
            }
            match chars.next() {
                None => break,
                Some('.') => {}
                Some(_) => return bad("`[]` must be followed by `.`, `[]` or the end"),
            }
        }
        Ok(Path {
            text: text.to_string(),
            steps,
        })
    }

    /// The path without its last step when that is a key: (parent steps, key).
    pub fn split_last_key(&self) -> Option<(&[Step], &str)> {
        match self.steps.split_last() {
            Some((Step::Key(k), parent)) => Some((parent, k)),
            _ => None,
        }
    }
}

impl TryFrom<String> for Path {
    type Error = String;
    fn try_from(s: String) -> Result<Path, String> {
        Path::parse(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(text: &str) -> Vec<Step> {
        Path::parse(text).unwrap().steps
    }

    fn k(s: &str) -> Step {
        Step::Key(s.into())
    }

    #[test]
    fn parses_keys_and_elements() {
        assert_eq!(steps("a"), vec![k("a")]);
        assert_eq!(steps("a.b.c"), vec![k("a"), k("b"), k("c")]);
        assert_eq!(
            steps("orders.orders[].id"),
            vec![k("orders"), k("orders"), Step::Each, k("id")]
        );
        assert_eq!(
            steps("m[][].x"),
            vec![k("m"), Step::Each, Step::Each, k("x")]
        );
        assert_eq!(steps("list[]"), vec![k("list"), Step::Each]);
    }

    #[test]
    fn parses_root_arrays() {
        assert_eq!(steps("[]"), vec![Step::Each]);
        assert_eq!(steps("[].title"), vec![Step::Each, k("title")]);
        assert_eq!(steps("[][].x"), vec![Step::Each, Step::Each, k("x")]);
    }

    #[test]
    fn backslash_escapes() {
        assert_eq!(steps(r"a\.b.c"), vec![k("a.b"), k("c")]);
        assert_eq!(steps(r"x\[\]"), vec![k("x[]")]);
        assert_eq!(steps(r"back\\slash"), vec![k(r"back\slash")]);
        assert_eq!(steps("ünï côdé"), vec![k("ünï côdé")]);
    }

    #[test]
    fn refuses_malformed_paths() {
        for bad in [
            "", ".", "a.", ".a", "a..b", "a[0]", "a[", "a]", "a[]b", "[]a", "[0].a", r"a\", r"a\b",
            "[].", "a.[]",
        ] {
            assert!(Path::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
