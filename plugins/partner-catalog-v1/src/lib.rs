//! `partner-catalog` 1.0.0: turns the products service's documents into the
//! partner API's version 1 contract, which partners integrated against:
//! flat records with `sku`, `title`, `price_cents` and `in_stock`.
//!
//! Version 2.0.0 (`../partner-catalog`) changed the contract; both versions
//! serve side by side (`/v1` and `/v2`), pinned per route, until every
//! partner has moved.
//!
//! ```toml
//! plugins = [{ name = "partner-catalog", version = "1.0.0", body = true }]
//! ```
use serde_json::{Value, json};
use transom_plugin_sdk::{Error, Plugin, Response, export_plugin};

pub struct CatalogV1;

fn product(p: &Value) -> Value {
    let price = p["price"].as_f64().unwrap_or(0.0);
    json!({
        "sku": p["id"],
        "title": p["name"],
        "price_cents": (price * 100.0).round() as i64,
        "in_stock": p["stock"].as_u64().unwrap_or(0) > 0,
    })
}

/// The v1 document for a products-service body, or `None` when it is not one.
pub fn convert(body: &Value) -> Option<Value> {
    if let Some(list) = body.get("products").and_then(Value::as_array) {
        let items: Vec<Value> = list.iter().map(product).collect();
        return Some(json!({ "api_version": 1, "count": items.len(), "items": items }));
    }
    body.get("id")
        .map(|_| json!({ "api_version": 1, "item": product(body) }))
}

impl Plugin for CatalogV1 {
    const ON_REQUEST: bool = false;
    const ON_RESPONSE: bool = true;

    fn on_response(resp: &mut Response) -> Result<(), Error> {
        if resp.status() != 200 {
            return Ok(());
        }
        let Some(body) = resp.body() else {
            return Err(Error::from(
                "partner-catalog needs `body = true` on its route",
            ));
        };
        let Ok(doc) = serde_json::from_slice::<Value>(&body) else {
            return Ok(());
        };
        if let Some(v1) = convert(&doc) {
            resp.set_body(v1.to_string().as_bytes())?;
            resp.set_header("x-api-version", "1")?;
        }
        Ok(())
    }
}

export_plugin!(CatalogV1);

#[cfg(test)]
mod tests {
    use super::*;
    use transom_plugin_sdk::testing::TestHost;

    #[test]
    fn lists_become_v1_items() {
        let body = br#"{"products":[{"id":"p-1","name":"Trail Shoes","price":47.5,"stock":0,"currency":"EUR"}]}"#;
        let mut host =
            TestHost::new().response(200, &[("content-type", "application/json")], Some(body));
        assert_eq!(host.run_response::<CatalogV1>(), Ok(()));
        let out: Value = serde_json::from_slice(host.response.body.as_deref().unwrap_or_default())
            .unwrap_or_default();
        assert_eq!(out["api_version"], 1);
        assert_eq!(
            out["items"][0],
            json!({"sku": "p-1", "title": "Trail Shoes", "price_cents": 4750, "in_stock": false})
        );
        assert_eq!(host.response.header("x-api-version").as_deref(), Some("1"));
    }

    #[test]
    fn errors_pass_through() {
        let mut host = TestHost::new().response(404, &[], Some(br#"{"error":"not found"}"#));
        assert_eq!(host.run_response::<CatalogV1>(), Ok(()));
        assert_eq!(
            host.response.body.as_deref(),
            Some(&br#"{"error":"not found"}"#[..])
        );
    }
}
