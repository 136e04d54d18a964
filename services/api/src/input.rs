//! Turning requests into values, field by field, so that every problem names its field.
//!
//! Bodies: `application/json` only (415 otherwise), at most `API_BODY_LIMIT_BYTES` (413), JSON (400), then
//! read as a `serde_json::Value` and checked field by field (422 with `details: [{field, message}]`).
//! Query strings that cannot be parsed are 400; values of the wrong type or out of range are 422.

use std::collections::HashMap;
use std::str::FromStr;

use actix_web::dev::Payload;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::{web, FromRequest, HttpRequest};
use chrono::{DateTime, Datelike, Utc};
use futures::future::LocalBoxFuture;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, FieldError};

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

/// A field that may be absent, explicitly null, or set.
#[derive(Debug, Clone, PartialEq)]
pub enum Opt<T> {
    Absent,
    Null,
    Set(T),
}

impl<T> Opt<T> {
    pub fn set(self) -> Option<T> {
        match self {
            Opt::Set(v) => Some(v),
            _ => None,
        }
    }

    pub fn is_absent(&self) -> bool {
        matches!(self, Opt::Absent)
    }
}

/// The path of a NUL character inside a JSON value (PostgreSQL cannot store one), if any.
pub fn find_nul(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::String(s) if s.contains('\0') => Some(path.to_string()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_nul(v, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                Some(path.to_string())
            } else {
                find_nul(v, &format!("{path}.{k}"))
            }
        }),
        _ => None,
    }
}

/// A JSON object read field by field; problems accumulate in `errors`.
pub struct Fields<'a> {
    obj: &'a Map<String, Value>,
    pub errors: Vec<FieldError>,
}

impl<'a> Fields<'a> {
    /// The body must be an object whose keys are all in `allowed` (unknown fields are 422).
    pub fn object(value: &'a Value, allowed: &[&str]) -> ApiResult<Fields<'a>> {
        let obj = value
            .as_object()
            .ok_or_else(|| ApiError::field("body", "must be a JSON object"))?;
        let mut errors = Vec::new();
        for key in obj.keys() {
            if !allowed.contains(&key.as_str()) {
                let shown: String = key.chars().take(100).collect();
                errors.push(FieldError::new(shown, "unknown field"));
            }
        }
        Ok(Fields { obj, errors })
    }

    pub fn raw(&self, name: &str) -> Option<&'a Value> {
        self.obj.get(name)
    }

    fn err(&mut self, name: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(name, message));
    }

    /// Absent → Absent; null → Null if `nullable`, else an error.
    fn value(&mut self, name: &str, nullable: bool) -> Option<Opt<&'a Value>> {
        match self.obj.get(name) {
            None => Some(Opt::Absent),
            Some(Value::Null) if nullable => Some(Opt::Null),
            Some(Value::Null) => {
                self.err(name, "must not be null");
                None
            }
            Some(v) => Some(Opt::Set(v)),
        }
    }

    pub fn string(&mut self, name: &str, min: usize, max: usize, nullable: bool) -> Opt<String> {
        match self.value(name, nullable) {
            Some(Opt::Set(Value::String(s))) => {
                let n = s.chars().count();
                if s.contains('\0') {
                    self.err(name, "must not contain NUL characters");
                    Opt::Absent
                } else if n < min || n > max {
                    if min == 1 && n == 0 {
                        self.err(
                            name,
                            format!("must not be empty (at most {max} characters)"),
                        );
                    } else {
                        self.err(
                            name,
                            format!("must be {min} to {max} characters long (is {n})"),
                        );
                    }
                    Opt::Absent
                } else {
                    Opt::Set(s.clone())
                }
            }
            Some(Opt::Set(_)) => {
                self.err(name, "must be a string");
                Opt::Absent
            }
            Some(Opt::Null) => Opt::Null,
            _ => Opt::Absent,
        }
    }

    pub fn int(&mut self, name: &str, min: i64, max: i64) -> Opt<i64> {
        match self.value(name, false) {
            Some(Opt::Set(v)) => match v.as_i64() {
                Some(n) if n >= min && n <= max => Opt::Set(n),
                Some(_) => {
                    self.err(name, format!("must be between {min} and {max}"));
                    Opt::Absent
                }
                None if v.is_number() && v.as_u64().is_some() => {
                    self.err(name, format!("must be between {min} and {max}"));
                    Opt::Absent
                }
                None => {
                    self.err(name, "must be an integer");
                    Opt::Absent
                }
            },
            _ => Opt::Absent,
        }
    }

    pub fn parsed<T: FromStr<Err = String>>(&mut self, name: &str) -> Opt<T> {
        match self.value(name, false) {
            Some(Opt::Set(Value::String(s))) => match s.parse::<T>() {
                Ok(v) => Opt::Set(v),
                Err(message) => {
                    self.err(name, truncate(&message));
                    Opt::Absent
                }
            },
            Some(Opt::Set(_)) => {
                self.err(name, "must be a string");
                Opt::Absent
            }
            _ => Opt::Absent,
        }
    }

    pub fn uuid(&mut self, name: &str) -> Opt<Uuid> {
        match self.value(name, false) {
            Some(Opt::Set(Value::String(s))) => match Uuid::parse_str(s) {
                Ok(v) => Opt::Set(v),
                Err(_) => {
                    self.err(name, "must be a UUID");
                    Opt::Absent
                }
            },
            Some(Opt::Set(_)) => {
                self.err(name, "must be a UUID string");
                Opt::Absent
            }
            _ => Opt::Absent,
        }
    }

    /// Any JSON object (checked for NUL characters, which PostgreSQL cannot store).
    pub fn object_value(&mut self, name: &str, nullable: bool) -> Opt<Value> {
        match self.value(name, nullable) {
            Some(Opt::Set(v @ Value::Object(_))) => match find_nul(v, name) {
                Some(path) => {
                    self.err(&path, "must not contain NUL characters");
                    Opt::Absent
                }
                None => Opt::Set(v.clone()),
            },
            Some(Opt::Set(_)) => {
                self.err(name, "must be an object");
                Opt::Absent
            }
            Some(Opt::Null) => Opt::Null,
            _ => Opt::Absent,
        }
    }

    pub fn require<T>(&mut self, name: &str, v: &Opt<T>) {
        if v.is_absent() && !self.obj.contains_key(name) {
            self.err(name, "is required");
        }
    }

    pub fn finish(self) -> ApiResult<()> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.errors))
        }
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 300 {
        let mut t: String = s.chars().take(300).collect();
        t.push('…');
        t
    } else {
        s.to_string()
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

/// `limit` (1..200, default 50) and `offset` (≥ 0) of a paginated list.
#[derive(Clone, Copy, Debug)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

impl Page {
    pub fn from_query(q: &QueryParams) -> ApiResult<Page> {
        Ok(Page {
            limit: q.int("limit", 1, 200, 50)?,
            offset: q.int("offset", 0, i64::MAX, 0)?,
        })
    }

    pub fn has_more(&self, returned: usize, total: i64) -> bool {
        self.offset.saturating_add(returned as i64) < total
    }
}
