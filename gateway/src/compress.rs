//! Response compression by `Accept-Encoding` (zstd, br, gzip), streamed.
//! Skipped for small bodies, for bodies that are already encoded, and for
//! content types that do not compress.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyDataStream, StreamBody};
use tokio_util::io::{ReaderStream, StreamReader};

use async_compression::Level;
use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use futures_util::{StreamExt, TryStreamExt};

use crate::body::{Body, boxed};
use crate::config::{CompressConfig, Encoding};

/// The first configured encoding the client accepts (q > 0).
pub fn negotiate(cfg: &CompressConfig, headers: &HeaderMap) -> Option<Encoding> {
    let accept = headers.get(header::ACCEPT_ENCODING)?.to_str().ok()?;
    let mut accepted: Vec<(&str, bool)> = Vec::new();
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let token = parts.next().unwrap_or("").trim();
        let q_zero = parts.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        accepted.push((token, !q_zero));
    }
    let allows = |tok: &str| {
        accepted
            .iter()
            .find(|(t, _)| t.eq_ignore_ascii_case(tok))
            .or_else(|| accepted.iter().find(|(t, _)| *t == "*"))
            .is_some_and(|(_, ok)| *ok)
    };
    cfg.algorithms.iter().copied().find(|e| allows(e.token()))
}

fn compressible(headers: &HeaderMap) -> bool {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    !(ct.starts_with("image/") && !ct.starts_with("image/svg")
        || ct.starts_with("video/")
        || ct.starts_with("audio/")
        || ct.starts_with("text/event-stream")
        || ct.contains("zip")
        || ct.contains("compressed")
        || ct.contains("octet-stream"))
}

/// Compress `resp` with `enc` if it is worth it.
pub fn apply(cfg: &CompressConfig, enc: Encoding, resp: Response<Body>) -> Response<Body> {
    let h = resp.headers();
    if resp.status() == StatusCode::NO_CONTENT
        || resp.status() == StatusCode::NOT_MODIFIED
        || resp.status().is_informational()
        || h.contains_key(header::CONTENT_ENCODING)
        || h.contains_key(header::CONTENT_RANGE)
        || !compressible(h)
    {
        return resp;
    }
    let known_len = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if known_len.is_some_and(|n| n < cfg.min_size.bytes()) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::ACCEPT_RANGES);
    parts.headers.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(enc.token()),
    );
    parts
        .headers
        .append(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(etag) = parts.headers.get(header::ETAG).cloned() {
        // A strong validator no longer describes the encoded bytes.
        if let Ok(s) = etag.to_str()
            && !s.starts_with("W/")
            && let Ok(weak) = HeaderValue::from_str(&format!("W/{s}"))
        {
            parts.headers.insert(header::ETAG, weak);
        }
    }
    let reader = StreamReader::new(BodyDataStream::new(body).map_err(std::io::Error::other));
    let stream = match enc {
        Encoding::Gzip => {
            ReaderStream::new(GzipEncoder::with_quality(reader, Level::Default)).boxed()
        }
        Encoding::Br => {
            ReaderStream::new(BrotliEncoder::with_quality(reader, Level::Precise(4))).boxed()
        }
        Encoding::Zstd => {
            ReaderStream::new(ZstdEncoder::with_quality(reader, Level::Default)).boxed()
        }
    };
    let body = StreamBody::new(stream.map_ok(http_body::Frame::data));
    Response::from_parts(parts, boxed(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn negotiation_follows_config_order_and_q() {
        let cfg = CompressConfig::default();
        assert_eq!(negotiate(&cfg, &accept("gzip, br")), Some(Encoding::Br));
        assert_eq!(
            negotiate(&cfg, &accept("gzip, br;q=0")),
            Some(Encoding::Gzip)
        );
        assert_eq!(negotiate(&cfg, &accept("identity")), None);
        assert_eq!(negotiate(&cfg, &HeaderMap::new()), None);
    }
}
