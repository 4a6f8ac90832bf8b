//! Transom: a programmable API gateway. Each frontend (web, mobile, partner,
//! ...) is its own gateway with its own listener, routes and limits, in front
//! of shared, pooled, health-checked upstreams.
//!
//! # Layout
//! Modules follow a request's path:
//!
//! - [`config`]: the TOML format, loading with includes, validation with
//!   file:line:field errors;
//! - [`gateway`]: builds a snapshot from a config and swaps it in (start, reload);
//! - [`frontend`]: listeners, TLS, HTTP/1.1 and HTTP/2, connection limits;
//! - [`proxy`]: the per-request phases (identify, route, admit, forward, respond, log);
//! - [`route`]: matching a request to a route;
//! - [`upstream`]: endpoints, balancing, pools, retries, circuit breaking, health checks;
//! - [`compress`]: response compression;
//! - [`admin`], [`metrics`], [`reload`]: operating it.
#![deny(missing_docs)]

pub mod admin;
pub mod body;
pub mod compress;
pub mod config;
pub mod demo;
pub mod error;
pub mod filter;
pub mod frontend;
pub mod gateway;
pub mod metrics;
pub mod plugin;
pub mod proxy;
pub mod reload;
pub mod route;
pub mod tls;
pub mod upstream;

pub use config::Config;
pub use gateway::{Gateway, Options};
