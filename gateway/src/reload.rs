//! Hot reload: watch the directories of every config file and the plugin
//! directory (notify), coalesce bursts of events, then reload the config
//! (on a `.toml` change) or re-scan the plugins (on a `.wasm` change). The
//! gateway compares contents, so a touch without a change does nothing.

use std::path::PathBuf;
use std::sync::Weak;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::gateway::Gateway;

/// Quiet time that ends a burst of file events.
const DEBOUNCE: Duration = Duration::from_millis(150);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Config,
    Plugins,
}

/// Watch the config files and plugins of `gateway` until it is dropped.
pub fn watch(gateway: Weak<Gateway>) -> notify::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Change>(16);
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        if ev.kind.is_access() {
            return;
        }
        for p in &ev.paths {
            let change = match p.extension().and_then(|e| e.to_str()) {
                Some("toml") => Change::Config,
                Some("wasm") => Change::Plugins,
                _ => continue,
            };
            // A full channel already holds a pending change.
            let _ = tx.try_send(change);
        }
    })?;
    let mut watched: Vec<PathBuf> = Vec::new();
    let Some(gw) = gateway.upgrade() else {
        return Ok(());
    };
    sync_dirs(&mut watcher, &mut watched, dirs(&gw));
    drop(gw);
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let (mut config, mut plugins) = (first == Change::Config, first == Change::Plugins);
            // Coalesce: wait until events stop for DEBOUNCE.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(c)) => {
                        config |= c == Change::Config;
                        plugins |= c == Change::Plugins;
                    }
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let Some(gw) = gateway.upgrade() else { return };
            // A config reload also re-scans the plugins.
            let reloaded = config && matches!(gw.reload().await, Ok(true));
            if plugins && !reloaded {
                let _ = gw.reload_plugins().await;
            }
            sync_dirs(&mut watcher, &mut watched, dirs(&gw));
        }
    });
    Ok(())
}

fn dirs(gw: &Gateway) -> Vec<PathBuf> {
    let config = gw.config();
    let mut dirs = config.include_dirs();
    for d in config.plugin_dirs() {
        dirs.push(std::path::absolute(&d).unwrap_or(d));
    }
    dirs
}

fn sync_dirs(
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut Vec<PathBuf>,
    dirs: Vec<PathBuf>,
) {
    for d in dirs {
        if !watched.contains(&d) && watcher.watch(&d, RecursiveMode::NonRecursive).is_ok() {
            watched.push(d);
        }
    }
}
