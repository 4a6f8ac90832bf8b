//! Config hot reload: watch the directories of every config file (notify),
//! coalesce bursts of events, and reload when a `.toml` file changed. The
//! gateway compares file contents, so a touch without change does nothing.

use std::path::PathBuf;
use std::sync::Weak;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::gateway::Gateway;

/// Quiet time that ends a burst of file events.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Watch the config files of `gateway` until it is dropped.
pub fn watch(gateway: Weak<Gateway>) -> notify::Result<()> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        if ev.kind.is_access() {
            return;
        }
        if ev
            .paths
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "toml"))
        {
            // A full channel already means "reload pending".
            let _ = tx.try_send(());
        }
    })?;
    let mut watched: Vec<PathBuf> = Vec::new();
    let Some(gw) = gateway.upgrade() else {
        return Ok(());
    };
    sync_dirs(&mut watcher, &mut watched, gw.config().include_dirs());
    drop(gw);
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Coalesce: wait until events stop for DEBOUNCE.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let Some(gw) = gateway.upgrade() else { return };
            if gw.reload().await.is_ok() {
                sync_dirs(&mut watcher, &mut watched, gw.config().include_dirs());
            }
        }
    });
    Ok(())
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
