//! The HTTP edge's error type. Each variant chooses a status code and an error code; the body is always the
//! envelope `{error, message, details, request_id, timestamp}`. The envelope is finished (request id and
//! timestamp filled in) by `middleware::edge`, which also wraps actix's own errors (404 for unknown routes,
//! 405, payload errors) so that no response leaves the service without it.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// One problem with one field, as listed in a 422's `details`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// Path of the field, e.g. `schedule_expr` or `payload.pipeline[0].uses`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The body of every non-2xx response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorEnvelope {
    /// Machine-readable code: bad_request, unauthorized, forbidden, not_found, method_not_allowed, conflict,
    /// payload_too_large, unsupported_media_type, validation_failed, rate_limited, unavailable, internal_error.
    pub error: String,
    pub message: String,
    /// A list of field errors (422), an object (409, 503) or null.
    pub details: Option<Value>,
    pub request_id: String,
    pub timestamp: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict {
        message: String,
        details: Option<Value>,
    },
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("{0}")]
    Unavailable(String),
    /// 503 with the health report as details.
    #[error("PostgreSQL does not answer")]
    Unhealthy(Box<Value>),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::Conflict {
            message: message.into(),
            details: None,
        }
    }

    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError::new(field, message)])
    }

    pub fn not_found(what: &str, id: impl std::fmt::Display) -> Self {
        ApiError::NotFound(format!("{what} {id} not found"))
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict { .. } => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Validation(_) => "validation_failed",
            ApiError::Unavailable(_) | ApiError::Unhealthy(_) => "unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }
}

/// What the edge middleware needs to render the envelope; stored in the response's extensions.
#[derive(Debug, Clone)]
pub struct EnvelopeParts {
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) | ApiError::Unhealthy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (message, details) = match self {
            ApiError::Validation(errors) => (
                match errors.first() {
                    Some(e) if errors.len() == 1 => format!("{}: {}", e.field, e.message),
                    _ => format!("{} fields are invalid", errors.len()),
                },
                Some(serde_json::to_value(errors).unwrap_or(Value::Null)),
            ),
            ApiError::Conflict { message, details } => (message.clone(), details.clone()),
            ApiError::Unhealthy(report) => (self.to_string(), Some((**report).clone())),
            ApiError::Internal(cause) => {
                let request_id = crate::middleware::current_request_id().unwrap_or_default();
                tracing::error!(error = ?cause, request_id, "internal error");
                (
                    "internal error; the request id identifies it in the log".to_string(),
                    None,
                )
            }
            other => (other.to_string(), None),
        };
        let mut builder = HttpResponse::build(self.status_code());
        if matches!(self, ApiError::Unauthorized(_)) {
            builder.insert_header(("WWW-Authenticate", "Bearer"));
        }
        let mut resp = builder.finish();
        resp.extensions_mut().insert(EnvelopeParts {
            code: self.code(),
            message,
            details,
        });
        resp
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        tracing::warn!(error = %e, "database pool unavailable");
        ApiError::Unavailable("the database is unavailable".into())
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        if e.as_db_error().is_none() || e.is_closed() {
            tracing::warn!(error = %e, "database connection error");
            return ApiError::Unavailable("the database is unavailable".into());
        }
        ApiError::Internal(anyhow::Error::new(e).context("database query failed"))
    }
}

/// The SQLSTATE of a database error, if it is one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

/// Generic code and message for a status produced outside our handlers (routing, actix extractors).
pub fn default_parts(status: StatusCode) -> EnvelopeParts {
    let (code, message) = match status.as_u16() {
        400 => ("bad_request", "the request could not be parsed"),
        401 => ("unauthorized", "missing or invalid bearer token"),
        403 => ("forbidden", "forbidden"),
        404 => ("not_found", "no such resource"),
        405 => ("method_not_allowed", "method not allowed on this resource"),
        408 => ("request_timeout", "the request timed out"),
        409 => ("conflict", "conflict"),
        411 => ("length_required", "a Content-Length is required"),
        413 => ("payload_too_large", "the request body is too large"),
        415 => (
            "unsupported_media_type",
            "the content type must be application/json",
        ),
        422 => ("validation_failed", "validation failed"),
        429 => ("rate_limited", "too many requests"),
        431 => (
            "request_header_fields_too_large",
            "request headers are too large",
        ),
        503 => ("unavailable", "a dependency is unavailable"),
        s if s < 500 => ("bad_request", "the request could not be processed"),
        _ => (
            "internal_error",
            "internal error; the request id identifies it in the log",
        ),
    };
    EnvelopeParts {
        code,
        message: message.to_string(),
        details: None,
    }
}
