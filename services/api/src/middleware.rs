//! The edge of every request: trailing slashes trimmed (served without redirect), X-Request-ID (a valid incoming one is echoed, else a fresh uuid v4), the error
//! envelope for every non-2xx response (including actix's own routing and payload errors), and the request
//! metrics, labelled by route template and status class only.

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse, Url};
use actix_web::http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use actix_web::http::uri::{PathAndQuery, Uri};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{Error, HttpMessage};

use crate::error::{default_parts, EnvelopeParts, ErrorEnvelope};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    /// The request id while a request is being served, so that logs of internal errors carry it.
    pub static CURRENT_REQUEST_ID: String;
}

/// The id of the request being served on this task, if any.
pub fn current_request_id() -> Option<String> {
    CURRENT_REQUEST_ID.try_with(|id| id.clone()).ok()
}

/// The id of the request being served (in the request's extensions).
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// An incoming request id is kept only if it is short and plain, so it can never inject into logs or headers.
pub fn valid_request_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Serves `/tasks/` as `/tasks` (no redirect). actix's NormalizePath does this too, but runs a regex over every
/// path to merge slashes; this only touches paths that end with a slash.
fn trim_trailing_slash(req: &mut ServiceRequest) {
    let path = req.path();
    if path.len() <= 1 || !path.ends_with('/') {
        return;
    }
    let trimmed = match path.trim_end_matches('/') {
        "" => "/",
        t => t,
    };
    let path_and_query = match req.query_string() {
        "" => trimmed.to_string(),
        q => format!("{trimmed}?{q}"),
    };
    let mut parts = req.head().uri.clone().into_parts();
    let Ok(pq) = PathAndQuery::from_maybe_shared(Bytes::from(path_and_query)) else {
        return;
    };
    parts.path_and_query = Some(pq);
    if let Ok(uri) = Uri::from_parts(parts) {
        req.match_info_mut().set(Url::new(uri.clone()));
        req.head_mut().uri = uri;
    }
}

pub async fn edge(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let started = Instant::now();
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| valid_request_id(s))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    trim_trailing_slash(&mut req);
    let method = method_label(req.method());
    // No clone of the request may live across the call: routing needs it uniquely owned. Handlers and
    // extractors turn their errors into responses, so an Err here would come from actix itself.
    let res = CURRENT_REQUEST_ID
        .scope(id.clone(), next.call(req))
        .await?
        .map_into_boxed_body();
    let status = res.status();
    let mut res = if status.as_u16() >= 400 {
        finish_envelope(res, &id)
    } else {
        res
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), v);
    }
    let route = res.request().match_pattern();
    let route = route.as_deref().unwrap_or("unmatched");
    let class = orrery::metrics::status_class(status.as_u16());
    orrery::metrics::HTTP_REQUESTS
        .with_label_values(&[route, method, class])
        .inc();
    orrery::metrics::HTTP_LATENCY
        .with_label_values(&[route, method, class])
        .observe(started.elapsed().as_secs_f64());
    Ok(res)
}

fn finish_envelope(res: ServiceResponse<BoxBody>, request_id: &str) -> ServiceResponse<BoxBody> {
    let status = res.status();
    // The app's clock; a response from outside the app (none is registered) takes the process clock.
    let now = res
        .request()
        .app_data::<actix_web::web::Data<crate::state::AppState>>()
        .map(|s| s.clock.now())
        .unwrap_or_else(chrono::Utc::now);
    let parts: EnvelopeParts = res
        .response()
        .extensions()
        .get::<EnvelopeParts>()
        .cloned()
        .unwrap_or_else(|| {
            if status.is_server_error() && status.as_u16() != 503 {
                tracing::error!(status = status.as_u16(), path = %res.request().path(), request_id, "server error outside a handler");
            }
            default_parts(status)
        });
    let envelope = ErrorEnvelope {
        error: parts.code.to_string(),
        message: parts.message,
        details: parts.details,
        request_id: request_id.to_string(),
        timestamp: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    };
    let body = serde_json::to_vec(&envelope).unwrap_or_default();
    res.map_body(move |head, _old| {
        head.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        BoxBody::new(body)
    })
}

#[cfg(test)]
mod tests {
    use super::valid_request_id;

    #[test]
    fn only_short_plain_request_ids_are_echoed() {
        assert!(valid_request_id("abc-123.DEF_4"));
        assert!(valid_request_id(&"a".repeat(200)));
        assert!(!valid_request_id(&"a".repeat(201)));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id("has space"));
        assert!(!valid_request_id("new\nline"));
        assert!(!valid_request_id("ünïcode"));
    }
}
