//! What the gateway serves over plain HTTP besides the WebSocket: the demo
//! app and client SDK (embedded in the binary, so a gateway is all a demo
//! needs) and, when enabled, development tokens.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use jsonwebtoken::{EncodingKey, Header};
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
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../../web/style.css"),
    ),
];

/// Sent with every file. The demo renders chat as text, never HTML; the
/// policy forbids inline and foreign script besides, so an injection bug in
/// a page would still run nothing. WebSockets may go to any gateway (the SDK
/// fails over across URLs), media come from the camera and peers.
const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; \
         connect-src 'self' ws: wss:; media-src 'self' blob: mediastream:; \
         img-src 'self' data:; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    (
        "permissions-policy",
        "camera=(self), microphone=(self), geolocation=(), payment=()",
    ),
];

/// Largest dev-token request body; it only carries a name.
const MAX_DEV_TOKEN_BODY: usize = 1024;

/// A static file, if `path` names one.
pub fn file(path: &str) -> Option<Response<Full<Bytes>>> {
    let (_, content_type, body) = FILES.iter().find(|(p, _, _)| *p == path)?;
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    for (name, value) in SECURITY_HEADERS {
        headers.insert(
            header::HeaderName::from_static(name),
            header::HeaderValue::from_static(value),
        );
    }
    Some(response)
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
pub async fn dev_token(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
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
    let claims = serde_json::json!({
        "sub": sub,
        "name": name,
        "exp": now + shared.config.dev_token_ttl.as_secs(),
    });
    // HS256 with a byte key cannot fail to sign.
    let token = jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.0.as_bytes()),
    )
    .expect("HS256 signing cannot fail");
    json(StatusCode::OK, serde_json::json!({"token": token}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_carries_the_security_headers() {
        for (path, _, _) in FILES {
            let response = file(path).expect("served");
            let headers = response.headers();
            let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            for directive in [
                "default-src 'self'",
                "script-src 'self'",
                "object-src 'none'",
                "frame-ancestors 'none'",
            ] {
                assert!(csp.contains(directive), "{path}: {csp} lacks {directive}");
            }
            assert!(!csp.contains("unsafe"), "{path}: {csp}");
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
            assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY", "{path}");
            assert_eq!(headers[header::REFERRER_POLICY], "no-referrer", "{path}");
        }
    }
}
