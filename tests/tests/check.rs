//! `transom check` errors, as golden files: each `ui/invalid/NAME.toml` must
//! fail with exactly the text in `NAME.err` (`FILE:LINE:COL: field: what`).
//! Run with `BLESS=1` to rewrite the expected files after a deliberate change.
#![allow(clippy::unwrap_used)]

use transom::Config;

#[test]
fn invalid_configs_match_their_golden_errors() {
    let bless = std::env::var_os("BLESS").is_some();
    let mut cases = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir("ui/invalid")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    entries.sort();
    for path in entries {
        cases += 1;
        let got = match Config::load(&path) {
            Ok(_) => "(loaded without error)".to_string(),
            Err(e) => e.to_string(),
        };
        let golden = path.with_extension("err");
        if bless {
            std::fs::write(&golden, format!("{got}\n")).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if got.trim() != want.trim() {
            failures.push(format!(
                "{}:\n--- want\n{}\n--- got\n{}\n",
                path.display(),
                want.trim(),
                got.trim()
            ));
        }
    }
    assert!(cases >= 10, "found only {cases} cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every `examples/*/transom.toml` loads without error.
#[test]
fn shipped_examples_are_valid() {
    let mut roots: Vec<_> = std::fs::read_dir("../examples")
        .unwrap()
        .map(|e| e.unwrap().path().join("transom.toml"))
        .filter(|p| p.exists())
        .collect();
    roots.sort();
    assert!(!roots.is_empty(), "no example configs found");
    for root in roots {
        // Plugins are built, not committed: check a copy with them installed.
        let name = root
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let (_dir, copy) = transom_tests::example_copy(name, &[]);
        if let Err(e) = Config::load(&copy) {
            panic!("{} is invalid:\n{e}", root.display());
        }
    }
}
