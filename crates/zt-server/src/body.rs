//! The JSON body extractor of the API: every way a body can be wrong becomes a 4xx problem
//! naming what is wrong, never a panic and never a 500.

use axum::RequestExt as _;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use zt_core::FieldError;

use crate::problem::Problem;

/// A JSON request body, parsed into `T`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        use http_body_util::BodyExt as _;
        check_content_type(req.headers().get(header::CONTENT_TYPE))?;
        // `into_limited_body` applies the router's `DefaultBodyLimit` (`--max-body-bytes`).
        let collected = req
            .into_limited_body()
            .collect()
            .await
            .map_err(|e| body_problem(&*e.into_inner()))?;
        parse(&collected.to_bytes()).map(JsonBody)
    }
}

/// The problem of a body that could not be read whole. The cause may be wrapped in several
/// layers (the router's body, its length limit), so the whole chain is searched.
pub fn body_problem(error: &(dyn std::error::Error + 'static)) -> Problem {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<http_body_util::LengthLimitError>() {
            return too_large();
        }
        match e.downcast_ref::<crate::conn::BodyError>() {
            Some(cut) => return cut.problem(),
            None => current = e.source(),
        }
    }
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-request",
        "invalid request",
        format!("cannot read the request body: {error}"),
    )
}

/// A body over `--max-body-bytes`.
pub fn too_large() -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        "request body too large",
        "the request body exceeds the configured limit (`--max-body-bytes`)",
    )
}

fn check_content_type(value: Option<&header::HeaderValue>) -> Result<(), Problem> {
    let unsupported = |detail: String| {
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "unsupported media type",
            detail,
        )
    };
    let Some(value) = value else {
        return Err(unsupported(
            "the request has no `Content-Type`; send `application/json`".to_owned(),
        ));
    };
    let essence = media_type(value);
    if is_json(&essence) {
        Ok(())
    } else {
        Err(unsupported(format!(
            "`Content-Type: {essence}` is not accepted; send `application/json`"
        )))
    }
}

/// The media type of a `Content-Type` value, lower case, without parameters.
pub(crate) fn media_type(value: &header::HeaderValue) -> String {
    let value = value.to_str().unwrap_or("");
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// `application/json`, or an `application/...+json` type such as problem details.
pub(crate) fn is_json(media_type: &str) -> bool {
    media_type == "application/json"
        || (media_type.starts_with("application/") && media_type.ends_with("+json"))
}

/// Parses a JSON body, locating the first problem by JSON pointer where it concerns a field.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Problem::invalid(
            format!(
                "the request body is not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ),
            Vec::new(),
        )
    })?;
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => {
            return Err(Problem::invalid(
                "the request body is empty; send a JSON object",
                Vec::new(),
            ));
        }
        Some(_) => {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                    Ok(_) => Problem::invalid("the request body must be a JSON object", Vec::new()),
                    Err(e) => Problem::invalid(format!("malformed JSON: {e}"), Vec::new()),
                },
            );
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() {
            return Problem::invalid(format!("malformed JSON: {inner}"), Vec::new());
        }
        let pointer = to_pointer(e.path());
        let detail = inner.to_string();
        // serde's message carries its own position; a pointer is more useful here.
        let detail = detail
            .rsplit_once(" at line ")
            .map_or(detail.as_str(), |(message, _)| message)
            .to_owned();
        let field = missing_field(&detail)
            .map(|name| format!("{pointer}/{name}"))
            .unwrap_or(pointer);
        Problem::invalid_fields(vec![FieldError::new(field, detail)])
    })?;
    de.end()
        .map_err(|e| Problem::invalid(format!("malformed JSON: {e}"), Vec::new()))?;
    one_meaning(text)?;
    Ok(value)
}

/// Refuses a JSON text that repeats a member name of one of its objects, at any depth (400,
/// naming the pointer): readers disagree on which occurrence wins.
pub fn one_meaning(text: &str) -> Result<(), Problem> {
    match zt_evidence::strict::duplicate_key(text) {
        None => Ok(()),
        Some(pointer) => Err(Problem::invalid_fields(vec![FieldError::new(
            pointer,
            "repeats a member name of its object; send each name once",
        )])),
    }
}

/// The name in serde's "missing field `x`" message.
fn missing_field(detail: &str) -> Option<&str> {
    detail
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
}

fn to_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        pointer.push('/');
        match segment {
            Segment::Seq { index } => pointer.push_str(&index.to_string()),
            Segment::Map { key } => pointer.push_str(&key.replace('~', "~0").replace('/', "~1")),
            Segment::Enum { variant } => pointer.push_str(variant),
            Segment::Unknown => pointer.push('?'),
        }
    }
    pointer
}

#[cfg(test)]
mod tests {
    use super::*;
    use zt_core::DecisionRequest;

    fn problem(body: &[u8]) -> Problem {
        parse::<DecisionRequest>(body).unwrap_err()
    }

    #[test]
    fn fields_are_named_by_pointer() {
        let p = problem(br#"{"actor": "a", "action": "x"}"#);
        assert_eq!(p.status, 400);
        assert_eq!(p.errors[0].pointer, "/resource");
        assert_eq!(p.errors[0].detail, "missing field `resource`");
        let p = problem(br#"{"actor": 7, "action": "x", "resource": "r"}"#);
        assert_eq!(p.errors[0].pointer, "/actor");
        assert!(
            p.errors[0].detail.starts_with("invalid type: integer `7`"),
            "{p:?}"
        );
        let p = problem(br#"{"actor": "a", "action": "x", "resource": "r", "context": []}"#);
        assert_eq!(p.errors[0].pointer, "/context");
    }

    #[test]
    fn syntax_and_encoding_errors_are_reported_whole() {
        let p = problem(b"{\"actor\": ");
        assert!(p.detail.starts_with("malformed JSON"), "{p:?}");
        let p = problem(b"{\"actor\": \"\xff\"}");
        assert_eq!(p.detail, "the request body is not valid UTF-8 (at byte 11)");
        let p = problem(br#"{"actor": "a", "action": "x", "resource": "r"} trailing"#);
        assert!(p.detail.starts_with("malformed JSON"), "{p:?}");
        assert_eq!(
            problem(b"  ").detail,
            "the request body is empty; send a JSON object"
        );
        assert_eq!(
            problem(b"[1]").detail,
            "the request body must be a JSON object"
        );
        assert!(problem(b"[1").detail.starts_with("malformed JSON"));
    }

    #[test]
    fn repeated_names_are_refused_at_every_depth() {
        let p = problem(
            br#"{"actor": "a", "action": "x", "resource": "r", "context": {"k": 1, "k": 2}}"#,
        );
        assert_eq!(p.status, 400);
        assert_eq!(p.errors[0].pointer, "/context/k");
        let p = parse::<serde_json::Map<String, serde_json::Value>>(
            br#"{"subject": {"type": "user", "id": "bob", "id": "alice"}}"#,
        )
        .unwrap_err();
        assert_eq!(p.errors[0].pointer, "/subject/id");
    }

    #[test]
    fn content_types() {
        let ok = |v: &str| check_content_type(Some(&header::HeaderValue::from_str(v).unwrap()));
        assert!(ok("application/json").is_ok());
        assert!(ok("Application/JSON; charset=utf-8").is_ok());
        assert!(ok("application/problem+json").is_ok());
        assert_eq!(ok("text/plain").unwrap_err().status, 415);
        assert_eq!(check_content_type(None).unwrap_err().status, 415);
    }
}
