//! A plugin template: copy `plugins/template` to `plugins/NAME`, rename the
//! package, add it to `plugins/Cargo.toml`'s members, and fill in the phases.
use transom_plugin_sdk::{Action, Answer, Error, Plugin, Request, export_plugin};

/// The plugin's per-route configuration (`config = { ... }` in the route).
#[derive(serde::Deserialize, Default, Clone)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Requests without this header are refused with 400.
    require_header: Option<String>,
}

pub struct Template;

impl Plugin for Template {
    fn on_request(req: &mut Request) -> Result<Action, Error> {
        let cfg = transom_plugin_sdk::shared_config::<Config>()?;
        if let Some(name) = &cfg.require_header
            && req.header(name).is_none()
        {
            return Ok(Action::Respond(
                Answer::new(400).body(format!("missing header {name}")),
            ));
        }
        Ok(Action::Continue)
    }
}

export_plugin!(Template);

#[cfg(test)]
mod tests {
    use super::*;
    use transom_plugin_sdk::testing::TestHost;

    #[test]
    fn refuses_requests_without_the_header() {
        let mut host = TestHost::new().config(r#"{"require_header": "x-api-key"}"#);
        match host.run_request::<Template>() {
            Ok(Action::Respond(a)) => assert_eq!(a.status, 400),
            other => panic!("expected a 400 answer, got {other:?}"),
        }
        let mut host = host.header("x-api-key", "k");
        assert_eq!(host.run_request::<Template>(), Ok(Action::Continue));
    }
}
