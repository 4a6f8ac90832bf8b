//! Builds the plugins workspace (`plugins/`: first-party plugins and the
//! test fixtures) for `wasm32-wasip2`, so `cargo test` alone has real
//! `.wasm` files to load. Their directory is `TRANSOM_TEST_PLUGINS`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf();
    let plugins = root.join("plugins");
    for watched in [
        "plugins/Cargo.toml",
        "plugins/add-header",
        "plugins/aggregate",
        "plugins/cors",
        "plugins/jwt-auth",
        "plugins/partner-catalog",
        "plugins/partner-catalog-v1",
        "plugins/rate-limit",
        "plugins/shape",
        "plugins/transform",
        "plugins/template",
        "plugins/fixtures",
        "plugin-sdk/src",
        "plugin-sdk/Cargo.toml",
        "wit",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = plugins.join("target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--target",
        "wasm32-wasip2",
        "--manifest-path",
    ])
    .arg(plugins.join("Cargo.toml"))
    .arg("--target-dir")
    .arg(&target_dir)
    .current_dir(&plugins);
    // What the outer build set for the host must not leak into the guest build.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().expect("run cargo for the plugins");
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("wasm32-wasip2")
            && (stderr.contains("target may not be installed")
                || stderr.contains("can't find crate for `core`")
                || stderr.contains("can't find crate for `std`"))
        {
            panic!("the wasm32-wasip2 target is missing: run `rustup target add wasm32-wasip2`");
        }
        panic!("building the plugins (plugins/) for wasm32-wasip2 failed:\n{stderr}");
    }
    println!(
        "cargo:rustc-env=TRANSOM_TEST_PLUGINS={}",
        target_dir.join("wasm32-wasip2").join("release").display()
    );
}
