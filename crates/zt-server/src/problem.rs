//! RFC 9457 problem details: the one shape every error response of the API takes.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use zt_core::{FieldError, PolicyError};

pub const CONTENT_TYPE: &str = "application/problem+json";

/// An error response (`application/problem+json`, RFC 9457).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem, such as `urn:zt-infra:problem:invalid-request`.
    #[serde(rename = "type", serialize_with = "type_uri")]
    #[schema(value_type = String)]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// For invalid requests: each field at fault, by JSON pointer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// For policy sets that failed to load: every error, with file and line.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policy_errors: Vec<PolicyError>,
    /// For 401 and 403: the `WWW-Authenticate` challenge sent with the answer.
    #[serde(skip)]
    pub challenge: Option<Challenge>,
}

/// A `WWW-Authenticate: Bearer` challenge (RFC 6750 section 3), by its error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// No credential was sent.
    Credential,
    InvalidRequest,
    InvalidToken,
    InsufficientScope,
}

impl Challenge {
    pub fn header(self) -> &'static str {
        match self {
            Challenge::Credential => "Bearer realm=\"ztinfra\"",
            Challenge::InvalidRequest => "Bearer realm=\"ztinfra\", error=\"invalid_request\"",
            Challenge::InvalidToken => "Bearer realm=\"ztinfra\", error=\"invalid_token\"",
            Challenge::InsufficientScope => {
                "Bearer realm=\"ztinfra\", error=\"insufficient_scope\""
            }
        }
    }
}

/// Problem types are `urn:zt-infra:problem:<slug>`.
fn type_uri<S: serde::Serializer>(slug: &&'static str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_args!("urn:zt-infra:problem:{slug}"))
}

impl Problem {
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind: slug,
            title,
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            policy_errors: Vec::new(),
            challenge: None,
        }
    }

    /// A request body that is not what the endpoint takes.
    pub fn invalid(detail: impl Into<String>, errors: Vec<FieldError>) -> Self {
        Self {
            errors,
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid-request",
                "invalid request",
                detail,
            )
        }
    }

    /// Invalid fields, summarized in `detail`.
    pub fn invalid_fields(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        Self::invalid(detail, errors)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "not found", detail)
    }

    /// 503: the service cannot do it now (its store, its log); the client may retry.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "service unavailable",
            detail,
        )
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
            detail,
        )
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Some(challenge) = self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge.header()),
            );
        }
        response
    }
}
