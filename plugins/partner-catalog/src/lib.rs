//! `partner-catalog` 2.0.0: the partner API's version 2 contract for
//! products: stable `id`, a `price` object with its currency, a stock
//! `availability` level instead of a raw count, and `rating`.
//!
//! Version 1.0.0 (`../partner-catalog-v1`) keeps serving `/v1` beside it.
//!
//! ```toml
//! plugins = [{ name = "partner-catalog", version = "2.0.0", body = true }]
//! ```
use serde_json::{Value, json};
use transom_plugin_sdk::{Error, Plugin, Response, export_plugin};

pub struct CatalogV2;

fn availability(stock: u64) -> &'static str {
    match stock {
        0 => "out_of_stock",
        1..=5 => "low",
        _ => "in_stock",
    }
}

fn product(p: &Value) -> Value {
    json!({
        "id": p["id"],
        "name": p["name"],
        "price": { "amount": p["price"], "currency": p["currency"] },
        "availability": availability(p["stock"].as_u64().unwrap_or(0)),
        "rating": p["rating"],
    })
}

/// The v2 document for a products-service body, or `None` when it is not one.
pub fn convert(body: &Value) -> Option<Value> {
    if let Some(list) = body.get("products").and_then(Value::as_array) {
        let data: Vec<Value> = list.iter().map(product).collect();
        return Some(json!({ "api_version": 2, "data": data, "meta": { "count": data.len() } }));
    }
    body.get("id")
        .map(|_| json!({ "api_version": 2, "data": product(body) }))
}

impl Plugin for CatalogV2 {
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
        if let Some(v2) = convert(&doc) {
            resp.set_body(v2.to_string().as_bytes())?;
            resp.set_header("x-api-version", "2")?;
        }
        Ok(())
    }
}

export_plugin!(CatalogV2);

#[cfg(test)]
mod tests {
    use super::*;
    use transom_plugin_sdk::testing::TestHost;

    #[test]
    fn one_product_becomes_v2_data() {
        let body = br#"{"id":"p-2","name":"Rain Jacket","price":129.0,"currency":"EUR","stock":3,"rating":4.6}"#;
        let mut host =
            TestHost::new().response(200, &[("content-type", "application/json")], Some(body));
        assert_eq!(host.run_response::<CatalogV2>(), Ok(()));
        let out: Value = serde_json::from_slice(host.response.body.as_deref().unwrap_or_default())
            .unwrap_or_default();
        assert_eq!(out["api_version"], 2);
        assert_eq!(
            out["data"]["price"],
            json!({"amount": 129.0, "currency": "EUR"})
        );
        assert_eq!(out["data"]["availability"], "low");
        assert_eq!(host.response.header("x-api-version").as_deref(), Some("2"));
    }

    #[test]
    fn without_the_body_it_says_what_is_missing() {
        let mut host = TestHost::new();
        assert!(host.run_response::<CatalogV2>().is_err());
    }
}
