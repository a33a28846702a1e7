//! What the gateway serves over plain HTTP besides the WebSocket: the demo
//! app and client SDK (embedded in the binary, so a gateway is all a demo
//! needs) and, when enabled, development tokens.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use schemas::token::Claims;
use serde::Deserialize;

use crate::Shared;

/// The demo app and the SDK, by path.
const FILES: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../web/index.html"),
    ),
    (
        "/index.html",
        "text/html; charset=utf-8",
        include_str!("../../web/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/app.js"),
    ),
    (
        "/cavlo.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/cavlo.js"),
    ),
    (
        "/meshcall.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/meshcall.js"),
    ),
    (
        "/roomcall.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/roomcall.js"),
    ),
    (
        "/errors.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/errors.js"),
    ),
    (
        "/callbase.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/callbase.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../../web/style.css"),
    ),
];

/// The Content-Security-Policy sent with every file, but for `connect-src`
/// (see [`DemoPolicy`]). The demo renders chat as text, never HTML; the
/// policy forbids inline and foreign script besides, so an injection bug in
/// a page would still run nothing. Media come from the camera and peers.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     media-src 'self' blob: mediastream:; img-src 'self' data:; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Sent with every file besides the policy.
const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    (
        "permissions-policy",
        "camera=(self), microphone=(self), geolocation=(), payment=()",
    ),
    // The files are not fingerprinted: a browser must ask again each time
    // (cheap with the ETag), or a new gateway version would run old code.
    ("cache-control", "no-cache"),
];

/// A URL in `gateway.demo_gateways` that cannot go into the policy.
#[derive(Debug, thiserror::Error)]
#[error("gateway.demo_gateways: {0:?} is not a ws:// or wss:// URL")]
pub struct InvalidDemoGateway(String);

/// The demo's Content-Security-Policy: WebSockets only to this gateway
/// (`'self'`) and to the other gateways it may fail over to
/// (`gateway.demo_gateways`), nowhere else.
#[derive(Clone, Debug)]
pub struct DemoPolicy(header::HeaderValue);

impl DemoPolicy {
    /// The policy allowing `gateways` besides this one.
    pub fn new(gateways: &[String]) -> Result<Self, InvalidDemoGateway> {
        let mut connect = String::from("connect-src 'self'");
        for url in gateways {
            let plain = url
                .chars()
                .all(|c| c.is_ascii_graphic() && !matches!(c, ';' | ',' | '\'' | '"'));
            if !plain || !(url.starts_with("ws://") || url.starts_with("wss://")) {
                return Err(InvalidDemoGateway(url.clone()));
            }
            connect.push(' ');
            connect.push_str(url);
        }
        let policy = format!("{CSP}; {connect}");
        let value = header::HeaderValue::from_str(&policy)
            .map_err(|_| InvalidDemoGateway(gateways.join(" ")))?;
        Ok(Self(value))
    }
}

/// Largest dev-token request body; it only carries a name.
const MAX_DEV_TOKEN_BODY: usize = 1024;

/// A static file, if `path` names one: `304 Not Modified` when the
/// browser's copy (`if_none_match`) is current.
pub(crate) fn file(
    path: &str,
    if_none_match: Option<&header::HeaderValue>,
    policy: &DemoPolicy,
) -> Option<Response<Full<Bytes>>> {
    let (_, content_type, body) = FILES.iter().find(|(p, _, _)| *p == path)?;
    let etag = etag(body);
    let current = if_none_match.is_some_and(|tag| tag.as_bytes() == etag.as_bytes());
    let mut response = if current {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        Response::new(Full::new(Bytes::from_static(body.as_bytes())))
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    headers.insert(
        header::ETAG,
        header::HeaderValue::from_str(&etag).expect("an ETag is ASCII"),
    );
    headers.insert(header::CONTENT_SECURITY_POLICY, policy.0.clone());
    for (name, value) in SECURITY_HEADERS {
        headers.insert(
            header::HeaderName::from_static(name),
            header::HeaderValue::from_static(value),
        );
    }
    Some(response)
}

/// A file's entity tag: a hash of its content, the same in every gateway
/// built from the same sources.
fn etag(body: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    body.hash(&mut hasher);
    format!("\"{:016x}\"", hasher.finish())
}

#[derive(Deserialize)]
struct DevTokenRequest {
    name: String,
    /// A token still valid, to renew: the new one names the same user, so a
    /// connection can take it as a `refresh`. Without it, a token names a
    /// new user.
    #[serde(default)]
    token: Option<String>,
}

/// `POST /auth/dev-token` with `{"name": "…"}`, or `{"name": "…", "token":
/// "<the current one>"}` to renew it, → `{"token": "…"}`.
pub(crate) async fn dev_token(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let json = bootstrap::health::json;
    let secret = match (&shared.config.auth.hs256_secret, shared.config.dev_tokens) {
        (Some(secret), true) => secret,
        _ => {
            return json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "dev tokens are disabled"}),
            );
        }
    };
    let body = match Limited::new(req.into_body(), MAX_DEV_TOKEN_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return json(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({"error": "body too large"}),
            );
        }
    };
    let request = match serde_json::from_slice::<DevTokenRequest>(&body) {
        Ok(request) => request,
        Err(_) => {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "expected {\"name\": \"…\"}"}),
            );
        }
    };
    let name = crate::auth::display_name(&request.name);
    if name.is_empty() {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "name is empty"}),
        );
    }
    let sub = match request.token {
        None => format!("dev-{}", nuid::next()),
        Some(current) => match shared.auth.verify(&current).await {
            Ok(verified) => verified.user.id.as_str().to_owned(),
            Err(reason) => {
                return json(
                    StatusCode::UNAUTHORIZED,
                    serde_json::json!({"error": format!("cannot renew: {reason}")}),
                );
            }
        },
    };
    let token = Claims::new(sub, name, shared.config.dev_token_ttl).sign_hs256(secret.0.as_bytes());
    json(StatusCode::OK, serde_json::json!({"token": token}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_carries_the_security_headers() {
        let policy = DemoPolicy::new(&["ws://other.example:8081/ws".to_owned()]).unwrap();
        for (path, _, _) in FILES {
            let response = file(path, None, &policy).expect("served");
            let headers = response.headers();
            let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            for directive in [
                "default-src 'self'",
                "script-src 'self'",
                "object-src 'none'",
                "frame-ancestors 'none'",
                "connect-src 'self' ws://other.example:8081/ws",
            ] {
                assert!(csp.contains(directive), "{path}: {csp} lacks {directive}");
            }
            assert!(!csp.contains("unsafe"), "{path}: {csp}");
            assert!(
                !csp.contains(" ws: ") && !csp.ends_with(" ws:"),
                "{path}: {csp}"
            );
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
            assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY", "{path}");
            assert_eq!(headers[header::REFERRER_POLICY], "no-referrer", "{path}");
            assert_eq!(headers[header::CACHE_CONTROL], "no-cache", "{path}");
        }
    }

    #[test]
    fn a_current_copy_is_answered_not_modified() {
        let policy = DemoPolicy::new(&[]).unwrap();
        let first = file("/app.js", None, &policy).unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        let tag = first.headers()[header::ETAG].clone();
        let again = file("/app.js", Some(&tag), &policy).unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], tag);
        let stale = header::HeaderValue::from_static("\"0\"");
        assert_eq!(
            file("/app.js", Some(&stale), &policy).unwrap().status(),
            StatusCode::OK
        );
    }

    #[test]
    fn only_websocket_urls_go_into_the_policy() {
        let only_self = DemoPolicy::new(&[]).unwrap();
        assert!(
            only_self
                .0
                .to_str()
                .unwrap()
                .ends_with("connect-src 'self'")
        );
        for bad in [
            "http://other:8081/ws",
            "ws://a; script-src *",
            "ws://a b",
            "ws:",
            "*",
        ] {
            assert!(DemoPolicy::new(&[bad.to_owned()]).is_err(), "{bad}");
        }
    }
}
