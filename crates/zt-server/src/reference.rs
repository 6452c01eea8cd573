//! The ZT-Infra reference contract: `POST /actions` and `GET /health`, with the field names of
//! the first public ZT-Infra implementation, so that clients and adapters written for it work
//! against this server unchanged.
//!
//! `POST /actions` takes `{"actor", "action", "resource"?, "context"?}` (the request of
//! `POST /v1/decide`, except that `resource` may be left out, as the reference server reads it:
//! a missing or empty `resource` is no particular resource, the Cedar resource `Resource::""`,
//! recorded as `"resource": ""`) and answers 200 on allow and 403 on deny, with
//! `{"ok", "actor", "action", "resource", "decision", "reason", "audit"}`. The `audit` object
//! is backed by this server's evidence log: `previous_hash` and `current_hash` are the hashes
//! of the decision's record and the one before it, and `kms_signature` is an Ed25519
//! signature by the log's signing key over the 32 bytes of `current_hash` (algorithm
//! `ED25519`; the public key is listed under its `key_id` at `GET /v1/evidence/keys`).
//! Unlike the log's checkpoints, which sign many records at once, this is one signature per
//! decision, as the contract asks (about 20 µs each).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;
use zt_core::{Decision, DecisionRequest, ReferenceRequest};

use crate::api::{AppState, answer_one};
use crate::auth::Decider;
use crate::body::JsonBody;
use crate::evidence::Receipt;
use crate::problem::Problem;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/actions", post(actions))
        .route("/health", get(health))
}

/// The signature of a decision's record.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KmsSignature {
    /// Always `ED25519`.
    pub algorithm: &'static str,
    /// The id of the signing key, as listed at `GET /v1/evidence/keys`.
    pub key_id: String,
    /// Base64 Ed25519 signature over the 32 bytes of `current_hash`.
    pub signature: String,
}

/// Where a decision is in the evidence log, and its signature.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Audit {
    /// The decision time, RFC 3339 in UTC with milliseconds.
    pub timestamp: String,
    /// SHA-256 (hex) of the record before this decision's record.
    pub previous_hash: String,
    /// SHA-256 (hex) of this decision's record.
    pub current_hash: String,
    pub kms_signature: KmsSignature,
}

/// The answer of `POST /actions` (HTTP 200 on allow, 403 on deny).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActionAnswer {
    /// Whether the action may go ahead.
    pub ok: bool,
    pub actor: String,
    pub action: String,
    pub resource: String,
    /// `allow` or `deny`.
    pub decision: Decision,
    /// The reasons of the decision, joined with `; `.
    pub reason: String,
    /// `null` only when the record could not be made durable; the decision is then `deny`.
    pub audit: Option<Audit>,
    /// This server's decision id.
    pub decision_id: String,
    /// This server's evidence receipt (sequence number, hash, checkpoint size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Receipt>,
    /// When the action waits for a person's approval (`decision` is then `deny`, as this
    /// contract has two outcomes): `{"approval": {id, status, status_url, ...}}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub context: Option<serde_json::Value>,
}

/// Decide one action (the ZT-Infra reference contract).
#[utoipa::path(
    post, path = "/actions",
    security(("bearer" = [])),
    request_body(content = DecisionRequest, description = "The decision request; unlike `/v1/decide`, `resource` may be left out (no particular resource: `Resource::\"\"`, recorded as `\"\"`)"),
    responses(
        (status = 200, description = "Allowed", body = ActionAnswer),
        (status = 403, description = "Denied (also when the decision could not be recorded)", body = ActionAnswer),
        (status = 400, description = "Malformed or invalid request", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn actions(
    State(app): State<Arc<AppState>>,
    decider: Decider,
    JsonBody(ReferenceRequest(mut request)): JsonBody<ReferenceRequest>,
) -> Result<Response, Problem> {
    let origin = decider.origin("actions");
    decider
        .bind(&mut request, "")
        .map_err(|e| Problem::invalid_fields(vec![e]))?;
    let announced = app.evidence.announce();
    let mut request = request
        .validate_reference(&app.limits)
        .map_err(Problem::invalid_fields)?;
    let answered = answer_one(&app, origin, &mut request, announced).await?;
    let mut decision = answered.decision;
    let audit = answered.evidence.as_ref().and_then(|receipt| {
        let (key_id, signature) = app.evidence.sign_record_hash(&receipt.hash)?;
        Some(Audit {
            timestamp: rfc3339_utc(answered.time_ms),
            previous_hash: receipt.prev_hash.clone(),
            current_hash: receipt.hash.clone(),
            kms_signature: KmsSignature {
                algorithm: "ED25519",
                key_id,
                signature,
            },
        })
    });
    if audit.is_none() || decision == Decision::ApprovalRequired {
        // No signed audit, no allow; an approval to wait for is not an allow either.
        decision = Decision::Deny;
    }
    let reason = answered
        .reasons
        .iter()
        .map(|r| r.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let status = if decision == Decision::Allow {
        StatusCode::OK
    } else {
        StatusCode::FORBIDDEN
    };
    let body = ActionAnswer {
        ok: decision == Decision::Allow,
        actor: request.actor().to_owned(),
        action: request.action().to_string(),
        resource: request.resource().to_owned(),
        decision,
        reason,
        audit,
        decision_id: answered.decision_id,
        evidence: answered.evidence,
        context: answered
            .approval
            .map(|ticket| serde_json::json!({ "approval": ticket })),
    };
    Ok((status, Json(body)).into_response())
}

/// The answer of `GET /health`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReferenceHealth {
    pub ok: bool,
    pub service: &'static str,
    pub version: &'static str,
    /// `sha256:<hex>` of the active policy set.
    pub policy_version: String,
    /// Records in the evidence log's latest checkpoint.
    pub evidence_tree_size: u64,
}

/// Liveness in the reference contract's shape.
#[utoipa::path(get, path = "/health", responses((status = 200, body = ReferenceHealth)))]
pub(crate) async fn health(State(app): State<Arc<AppState>>) -> Json<ReferenceHealth> {
    Json(ReferenceHealth {
        ok: true,
        service: "ztinfra",
        version: env!("CARGO_PKG_VERSION"),
        policy_version: app.policies.with_engine(|e| e.version().to_owned()),
        evidence_tree_size: app.evidence.checkpoint().tree_size,
    })
}

/// `2026-11-22T09:30:00.123Z` for a time in milliseconds since the Unix epoch.
pub fn rfc3339_utc(time_ms: i64) -> String {
    let days = time_ms.div_euclid(86_400_000);
    let in_day = time_ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute) = (in_day / 3_600_000, in_day / 60_000 % 60);
    let (second, milli) = (in_day / 1000 % 60, in_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z")
}

/// The proleptic Gregorian date of a day count from 1970-01-01 (the "days to civil" algorithm
/// from Howard Hinnant's date library notes).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_utc(1_795_397_400_123), "2026-11-23T01:30:00.123Z");
        assert_eq!(rfc3339_utc(-1), "1969-12-31T23:59:59.999Z");
    }
}
