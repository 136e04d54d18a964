//! Turning requests into values, field by field, so that every problem names its field.
//!
//! Bodies: `application/json` only (415 otherwise), at most `API_BODY_LIMIT_BYTES` (413), JSON (400), then
//! read as a `serde_json::Value` into a typed body (`crate::body`: 422 with `details: [{field, message}]`
//! naming every field at fault).
//! Query strings that cannot be parsed are 400; values of the wrong type or out of range are 422.

use std::collections::HashMap;
use std::str::FromStr;

use actix_web::dev::Payload;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::{web, FromRequest, HttpRequest};
use chrono::{DateTime, Datelike, Utc};
use futures::future::LocalBoxFuture;
use serde_json::Value;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};

/// The body limit configured for the app (a copy so the extractor does not depend on actix's config).
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

fn is_json_content_type(req: &HttpRequest) -> bool {
    let Some(value) = req.headers().get(CONTENT_TYPE) else {
        return false;
    };
    let Ok(text) = value.to_str() else {
        return false;
    };
    let essence = text.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

async fn read_body(req: HttpRequest, mut payload: Payload) -> ApiResult<web::Bytes> {
    let limit = req.app_data::<BodyLimit>().map(|l| l.0).unwrap_or(262_144);
    match web::Bytes::from_request(&req, &mut payload).await {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.as_response_error().status_code().as_u16() == 413 => {
            Err(ApiError::PayloadTooLarge(limit))
        }
        Err(e) => Err(ApiError::BadRequest(format!(
            "the request body could not be read: {e}"
        ))),
    }
}

fn parse_json(bytes: &[u8]) -> ApiResult<Value> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::BadRequest(
            "the request body is empty; expected a JSON object".into(),
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))
}

/// A JSON request body (required).
pub struct JsonBody(pub Value);

impl FromRequest for JsonBody {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let payload = payload.take();
        Box::pin(async move {
            if !is_json_content_type(&req) {
                return Err(ApiError::UnsupportedMediaType(
                    "the request body must be sent as Content-Type: application/json".into(),
                ));
            }
            let bytes = read_body(req, payload).await?;
            Ok(JsonBody(parse_json(&bytes)?))
        })
    }
}

/// A JSON request body that may be absent (empty body, any or no content type).
pub struct OptionalJsonBody(pub Option<Value>);

impl FromRequest for OptionalJsonBody {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let payload = payload.take();
        Box::pin(async move {
            let json = is_json_content_type(&req);
            let bytes = read_body(req, payload).await?;
            if bytes.iter().all(|b| b.is_ascii_whitespace()) {
                return Ok(OptionalJsonBody(None));
            }
            if !json {
                return Err(ApiError::UnsupportedMediaType(
                    "the request body must be sent as Content-Type: application/json".into(),
                ));
            }
            Ok(OptionalJsonBody(Some(parse_json(&bytes)?)))
        })
    }
}

/// A parsed query string (`a=1&b=2`); an unparseable one is a 400. Empty values count as absent.
pub struct QueryParams(HashMap<String, String>);

impl FromRequest for QueryParams {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let parsed = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
            .map(|q| {
                QueryParams(
                    q.into_inner()
                        .into_iter()
                        .filter(|(_, v)| !v.is_empty())
                        .collect(),
                )
            })
            .map_err(|e| {
                ApiError::BadRequest(format!("the query string could not be parsed: {e}"))
            });
        std::future::ready(parsed)
    }
}

impl QueryParams {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn int(&self, name: &str, min: i64, max: i64, default: i64) -> ApiResult<i64> {
        match self.get(name) {
            None => Ok(default),
            Some(s) => match s.trim().parse::<i64>() {
                Ok(n) if n >= min && n <= max => Ok(n),
                _ => Err(ApiError::field(
                    name,
                    format!("must be an integer between {min} and {max}"),
                )),
            },
        }
    }

    pub fn parsed<T: FromStr>(&self, name: &str, what: &str) -> ApiResult<Option<T>> {
        match self.get(name) {
            None => Ok(None),
            Some(s) => s
                .parse::<T>()
                .map(Some)
                .map_err(|_| ApiError::field(name, format!("must be {what}"))),
        }
    }

    pub fn boolean(&self, name: &str) -> ApiResult<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some("true") | Some("1") => Ok(Some(true)),
            Some("false") | Some("0") => Ok(Some(false)),
            Some(_) => Err(ApiError::field(name, "must be true or false")),
        }
    }

    pub fn uuid(&self, name: &str) -> ApiResult<Option<Uuid>> {
        self.parsed::<Uuid>(name, "a UUID")
    }

    pub fn instant(&self, name: &str) -> ApiResult<Option<DateTime<Utc>>> {
        match self.get(name) {
            None => Ok(None),
            Some(s) => parse_instant(s)
                .map(Some)
                .ok_or_else(|| ApiError::field(name, "must be an RFC 3339 instant between the years 1 and 9999, e.g. 2026-01-31T09:00:00Z")),
        }
    }
}

/// An RFC 3339 instant within years 1..=9999 (what PostgreSQL and the schedule engine both handle).
pub fn parse_instant(s: &str) -> Option<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(s.trim())
        .ok()?
        .with_timezone(&Utc);
    (1..=9999).contains(&t.year()).then_some(t)
}

/// Parses a UUID path segment (422 naming `field` otherwise).
pub fn path_uuid(raw: &str, field: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw).map_err(|_| ApiError::field(field, "must be a UUID"))
}

/// Parses a bigint path segment (422 naming `field` otherwise).
pub fn path_i64(raw: &str, field: &str) -> ApiResult<i64> {
    match raw.parse::<i64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ApiError::field(field, "must be a positive integer id")),
    }
}

pub use orrery::store::Page;

/// `limit` (1..200, default 50) and `offset` (≥ 0) of a paginated list.
pub fn page(q: &QueryParams) -> ApiResult<Page> {
    Ok(Page {
        limit: q.int("limit", 1, 200, 50)?,
        offset: q.int("offset", 0, i64::MAX, 0)?,
    })
}
