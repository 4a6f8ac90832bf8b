//! `add-header`: set headers on the request to the upstream and on the
//! response to the client.
//!
//! ```toml
//! plugins = [{ name = "add-header", version = "1.0.0", config = { request = { "x-team" = "mobile" }, response = { "x-served-by" = "transom" } } }]
//! ```
//!
//! Both kinds are set in the request phase: the gateway applies the
//! response headers when the response arrives, so the plugin is called once
//! per request.
use std::collections::BTreeMap;

use transom_plugin_sdk::{Action, Error, Plugin, Request, export_plugin};

#[derive(serde::Deserialize, Default, Clone)]
#[serde(default, deny_unknown_fields)]
struct Config {
    request: BTreeMap<String, String>,
    response: BTreeMap<String, String>,
}

pub struct AddHeader;

impl Plugin for AddHeader {
    fn on_request(req: &mut Request) -> Result<Action, Error> {
        let cfg = transom_plugin_sdk::shared_config::<Config>()?;
        for (name, value) in &cfg.request {
            req.set_header(name, value)?;
        }
        for (name, value) in &cfg.response {
            req.set_response_header(name, value)?;
        }
        Ok(Action::Continue)
    }
}

export_plugin!(AddHeader);

#[cfg(test)]
mod tests {
    use super::*;
    use transom_plugin_sdk::testing::TestHost;

    #[test]
    fn sets_request_and_response_headers() {
        let mut host = TestHost::new()
            .header("x-team", "web")
            .config(r#"{"request": {"x-team": "mobile"}, "response": {"x-served-by": "transom"}}"#);
        assert_eq!(host.run_request::<AddHeader>(), Ok(Action::Continue));
        assert_eq!(host.request.header("x-team").as_deref(), Some("mobile"));
        assert_eq!(host.request.headers.len(), 1, "replaced, not added");
        assert_eq!(
            host.response.header("x-served-by").as_deref(),
            Some("transom")
        );
    }

    #[test]
    fn bad_config_is_an_error() {
        let mut host = TestHost::new().config(r#"{"requets": {}}"#);
        assert!(host.run_request::<AddHeader>().is_err());
    }

    #[test]
    fn reserved_headers_are_refused() {
        let mut host = TestHost::new().config(r#"{"request": {"content-length": "5"}}"#);
        assert!(host.run_request::<AddHeader>().is_err());
        let mut host = TestHost::new().config(r#"{"response": {"Transfer-Encoding": "x"}}"#);
        assert!(host.run_request::<AddHeader>().is_err());
    }
}
