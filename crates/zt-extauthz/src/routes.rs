//! Which decision an HTTP request asks for: its method and path matched against route
//! templates (`/v1/invoices/{id}`), giving an action (`http.invoices.get`) and a resource
//! (`invoice/42`). Pure: strings in, values out.
//!
//! Matching is strict, so that a path an upstream would read differently cannot slip past a
//! route: each segment is percent-decoded before it is compared, and a path with a `.` or `..`
//! segment, an encoded `/`, a control character or text that is not UTF-8 matches nothing.
//! A request that matches no route is refused: there is no catch-all unless one is configured.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One `[[ext_authz.routes]]` entry of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A path template: literal segments and `{name}` segments (one segment each), such as
    /// `/v1/invoices/{id}`. A last segment `{name...}` takes the rest of the path.
    pub path: String,
    /// The methods it applies to (`GET`, `POST`, ...); empty: any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// The action, with `{method}` (lowercase) and the path's `{name}`s filled in
    /// [default: `http.<service>.{method}`].
    pub action: Option<String>,
    /// The resource, with the path's `{name}`s filled in, such as `invoice/{id}`.
    pub resource: String,
    /// Whether a request on this route with no session token and no client certificate may
    /// name its actor in the declared actor header (the enforcement point then vouches for it).
    #[serde(default)]
    pub trust_declared_actor: bool,
}

/// A route, checked.
#[derive(Debug, Clone)]
pub struct Route {
    /// The template as configured, for the context and logs.
    pub template: String,
    segments: Vec<Segment>,
    methods: Vec<String>,
    action: Vec<Part>,
    resource: Vec<Part>,
    pub trust_declared_actor: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    /// The rest of the path, one or more segments joined by `/`.
    Rest(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Param(String),
    Method,
}

/// What a request matched: the route, its action and resource, and the path's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched<'r> {
    pub route: &'r str,
    pub trust_declared_actor: bool,
    pub action: String,
    pub resource: String,
    pub params: BTreeMap<String, String>,
}

/// Why a request matched no route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoMatch {
    #[error("the path is not one a route can match: {0}")]
    Unreadable(String),
    #[error("no route takes {method} {path}")]
    NoRoute { method: String, path: String },
    #[error(
        "the value `{value}` of `{{{name}}}` cannot be part of an action (dots separate an action's names)"
    )]
    ActionValue { name: String, value: String },
}

impl Route {
    /// Checks a configured route; `service` names the default action's namespace.
    pub fn new(config: &RouteConfig, service: Option<&str>) -> Result<Self, String> {
        let at = |why: String| format!("route `{}`: {why}", config.path);
        let segments = parse_path(&config.path).map_err(at)?;
        let names: Vec<&str> = segments
            .iter()
            .filter_map(|s| match s {
                Segment::Param(name) | Segment::Rest(name) => Some(name.as_str()),
                Segment::Literal(_) => None,
            })
            .collect();
        let default_action;
        let action = match (&config.action, service) {
            (Some(action), _) => action.as_str(),
            (None, Some(service)) => {
                default_action = format!("http.{service}.{{method}}");
                default_action.as_str()
            }
            (None, None) => {
                return Err(at(
                    "has no `action`, and `[ext_authz]` names no `service` for the default `http.<service>.{method}`".into(),
                ));
            }
        };
        let action =
            parse_template(action, &names, true).map_err(|e| at(format!("`action`: {e}")))?;
        let probe: String = action
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                Part::Param(_) | Part::Method => "x",
            })
            .collect();
        zt_core::ActionName::parse(&probe).map_err(|e| at(format!("`action`: {e}")))?;
        let resource = parse_template(&config.resource, &names, false)
            .map_err(|e| at(format!("`resource`: {e}")))?;
        if resource.is_empty() {
            return Err(at("`resource` is empty".into()));
        }
        let mut methods = Vec::new();
        for method in &config.methods {
            if !is_method(method) {
                return Err(at(format!("`{method}` is not an HTTP method")));
            }
            methods.push(method.to_ascii_uppercase());
        }
        Ok(Self {
            template: config.path.clone(),
            segments,
            methods,
            action,
            resource,
            trust_declared_actor: config.trust_declared_actor,
        })
    }

    /// The parameters of `segments` (decoded) if this route takes them.
    fn params(&self, segments: &[String]) -> Option<BTreeMap<String, String>> {
        let mut params = BTreeMap::new();
        let mut rest = segments.iter();
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => {
                    if rest.next()? != text {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    let value = rest.next().filter(|v| !v.is_empty())?;
                    params.insert(name.clone(), value.clone());
                }
                Segment::Rest(name) => {
                    let taken: Vec<&str> = rest.by_ref().map(String::as_str).collect();
                    if taken.is_empty() || taken.iter().any(|s| s.is_empty()) {
                        return None;
                    }
                    params.insert(name.clone(), taken.join("/"));
                }
            }
        }
        rest.next().is_none().then_some(params)
    }

    fn fill(
        parts: &[Part],
        method: &str,
        params: &BTreeMap<String, String>,
        in_action: bool,
    ) -> Result<String, NoMatch> {
        let mut text = String::new();
        for part in parts {
            match part {
                Part::Text(t) => text.push_str(t),
                Part::Method => text.push_str(&method.to_ascii_lowercase()),
                Part::Param(name) => {
                    let value = params.get(name).map(String::as_str).unwrap_or_default();
                    if in_action && (value.contains('.') || value.is_empty()) {
                        return Err(NoMatch::ActionValue {
                            name: name.clone(),
                            value: value.to_owned(),
                        });
                    }
                    text.push_str(value);
                }
            }
        }
        Ok(text)
    }
}

/// Routes in the order configured: the first that takes a request decides what it asks.
#[derive(Debug, Clone, Default)]
pub struct Routes(Vec<Route>);

impl Routes {
    pub fn new(configs: &[RouteConfig], service: Option<&str>) -> Result<Self, String> {
        if let Some(service) = service {
            zt_core::ActionName::parse(&format!("http.{service}.get"))
                .map_err(|e| format!("`service` `{service}`: {e}"))?;
            if service.contains('.') || service.contains('{') {
                return Err(format!(
                    "`service` `{service}` is one name: no dots, no braces"
                ));
            }
        }
        configs
            .iter()
            .map(|c| Route::new(c, service))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The route that takes `method` and `path` (a request target: the query, if any, is not
    /// matched), and what it asks.
    pub fn find(&self, method: &str, path: &str) -> Result<Matched<'_>, NoMatch> {
        if !is_method(method) {
            return Err(NoMatch::Unreadable(format!(
                "`{method}` is not an HTTP method"
            )));
        }
        let method = method.to_ascii_uppercase();
        let segments = decode_path(path_of(path)).map_err(NoMatch::Unreadable)?;
        for route in &self.0 {
            if !route.methods.is_empty() && !route.methods.contains(&method) {
                continue;
            }
            let Some(params) = route.params(&segments) else {
                continue;
            };
            return Ok(Matched {
                route: &route.template,
                trust_declared_actor: route.trust_declared_actor,
                action: Route::fill(&route.action, &method, &params, true)?,
                resource: Route::fill(&route.resource, &method, &params, false)?,
                params,
            });
        }
        Err(NoMatch::NoRoute {
            method,
            path: path_of(path).to_owned(),
        })
    }
}

/// The path of a request target, without its query or fragment.
pub fn path_of(target: &str) -> &str {
    target
        .split_once(['?', '#'])
        .map_or(target, |(path, _)| path)
}

/// The query of a request target (without `?`), empty if it has none.
pub fn query_of(target: &str) -> &str {
    let without_fragment = target.split_once('#').map_or(target, |(t, _)| t);
    without_fragment
        .split_once('?')
        .map_or("", |(_, query)| query)
}

fn is_method(method: &str) -> bool {
    !method.is_empty()
        && method.len() <= 32
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn parse_path(template: &str) -> Result<Vec<Segment>, String> {
    let Some(rest) = template.strip_prefix('/') else {
        return Err("a path template begins with `/`".into());
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let pieces: Vec<&str> = rest.split('/').collect();
    let mut segments = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let segment = match piece.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(inner) => {
                let (name, rest) = match inner.strip_suffix("...") {
                    Some(name) => (name, true),
                    None => (inner, false),
                };
                if !is_name(name) {
                    return Err(format!(
                        "`{piece}`: a parameter is `{{name}}` (letters, digits, `_`)"
                    ));
                }
                if names.iter().any(|n| n == name) {
                    return Err(format!("`{{{name}}}` appears twice"));
                }
                names.push(name.to_owned());
                if rest {
                    if i + 1 != pieces.len() {
                        return Err(format!(
                            "`{piece}` takes the rest of the path: it comes last"
                        ));
                    }
                    Segment::Rest(name.to_owned())
                } else {
                    Segment::Param(name.to_owned())
                }
            }
            None => {
                if piece.is_empty() || piece.contains(['{', '}']) || *piece == "." || *piece == ".."
                {
                    return Err(format!(
                        "`{piece}` is not a segment: a literal name or `{{name}}`"
                    ));
                }
                Segment::Literal(decode_segment(piece)?)
            }
        };
        segments.push(segment);
    }
    Ok(segments)
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_template(template: &str, names: &[&str], in_action: bool) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let (text, tail) = rest.split_at(open);
        if text.contains('}') {
            return Err(format!("`{template}` has a `}}` without its `{{`"));
        }
        if !text.is_empty() {
            parts.push(Part::Text(text.to_owned()));
        }
        let close = tail
            .find('}')
            .ok_or_else(|| format!("`{template}` has a `{{` without its `}}`"))?;
        let name = tail.get(1..close).unwrap_or_default();
        if in_action && name == "method" {
            parts.push(Part::Method);
        } else if names.contains(&name) {
            parts.push(Part::Param(name.to_owned()));
        } else {
            return Err(format!(
                "`{{{name}}}` is not a parameter of the path{}",
                if in_action { " (nor `{method}`)" } else { "" }
            ));
        }
        rest = tail.get(close + 1..).unwrap_or_default();
    }
    if rest.contains('}') {
        return Err(format!("`{template}` has a `}}` without its `{{`"));
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

/// A request path's segments, each percent-decoded, or why it is refused.
fn decode_path(path: &str) -> Result<Vec<String>, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("`{path}` does not begin with `/`"));
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    rest.split('/').map(decode_segment).collect()
}

fn decode_segment(segment: &str) -> Result<String, String> {
    let decoded = percent_decode(segment.as_bytes())
        .ok_or_else(|| format!("`{segment}` has a `%` that is not `%` and two hex digits"))?;
    let text = String::from_utf8(decoded).map_err(|_| format!("`{segment}` is not UTF-8"))?;
    if text == "." || text == ".." {
        return Err("a `.` or `..` segment".into());
    }
    if text.contains('/') || text.contains('\\') {
        return Err(format!("`{segment}` encodes a path separator"));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("`{segment}` has a control character"));
    }
    Ok(text)
}

/// `%XX` escapes decoded; `None` for a `%` not followed by two hex digits.
pub fn percent_decode(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut iter = bytes.iter();
    while let Some(&b) = iter.next() {
        if b == b'%' {
            let hi = (*iter.next()? as char).to_digit(16)?;
            let lo = (*iter.next()? as char).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
        } else {
            out.push(b);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str, methods: &[&str], action: Option<&str>, resource: &str) -> RouteConfig {
        RouteConfig {
            path: path.into(),
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            action: action.map(str::to_owned),
            resource: resource.into(),
            trust_declared_actor: false,
        }
    }

    fn invoices() -> Routes {
        Routes::new(
            &[
                route(
                    "/v1/invoices/{id}",
                    &["GET", "DELETE"],
                    None,
                    "invoice/{id}",
                ),
                route(
                    "/v1/invoices/{id}/pay",
                    &["POST"],
                    Some("http.invoices.pay"),
                    "invoice/{id}",
                ),
                route(
                    "/files/{path...}",
                    &[],
                    Some("http.files.{method}"),
                    "file/{path}",
                ),
                route(
                    "/v1/tenants/{t}/reports",
                    &["GET"],
                    Some("http.{t}.report"),
                    "reports/{t}",
                ),
            ],
            Some("invoices"),
        )
        .unwrap()
    }

    #[test]
    fn a_template_gives_the_action_and_resource() {
        let routes = invoices();
        let m = routes.find("GET", "/v1/invoices/42?expand=lines").unwrap();
        assert_eq!(m.action, "http.invoices.get");
        assert_eq!(m.resource, "invoice/42");
        assert_eq!(m.route, "/v1/invoices/{id}");
        assert_eq!(m.params.get("id").map(String::as_str), Some("42"));
        let m = routes.find("delete", "/v1/invoices/7").unwrap();
        assert_eq!(m.action, "http.invoices.delete");
        let m = routes.find("POST", "/v1/invoices/7/pay").unwrap();
        assert_eq!(
            (m.action.as_str(), m.resource.as_str()),
            ("http.invoices.pay", "invoice/7")
        );
        let m = routes.find("PUT", "/files/a/b%20c.txt").unwrap();
        assert_eq!(
            (m.action.as_str(), m.resource.as_str()),
            ("http.files.put", "file/a/b c.txt")
        );
    }

    #[test]
    fn what_no_route_takes_is_refused() {
        let routes = invoices();
        for (method, path) in [
            ("POST", "/v1/invoices/42"),    // method not listed
            ("GET", "/v1/invoices"),        // too short
            ("GET", "/v1/invoices/42/pay"), // too long for GET
            ("GET", "/v1/invoices/"),       // empty parameter
            ("GET", "/V1/invoices/42"),     // case differs
            ("GET", "/v1//invoices/42"),    // empty segment
            ("GET", "/files"),              // the rest is one segment at least
            ("GET", "/files/a//b"),         // an empty segment in the rest
        ] {
            assert!(
                matches!(routes.find(method, path), Err(NoMatch::NoRoute { .. })),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn paths_an_upstream_could_read_otherwise_match_nothing() {
        let routes = invoices();
        for path in [
            "/v1/invoices/../admin",
            "/v1/invoices/%2e%2e",
            "/v1/invoices/.",
            "/v1/invoices/a%2Fb",
            "/v1/invoices/a%5cb",
            "/v1/invoices/%00",
            "/v1/invoices/%zz",
            "/v1/invoices/%ff",
            "v1/invoices/1",
        ] {
            assert!(
                matches!(routes.find("GET", path), Err(NoMatch::Unreadable(_))),
                "{path}"
            );
        }
        assert!(matches!(
            routes.find("G ET", "/v1/invoices/1"),
            Err(NoMatch::Unreadable(_))
        ));
        // Encoded letters are the letters: the upstream reads them so.
        let m = routes.find("GET", "/v1/%69nvoices/4%32").unwrap();
        assert_eq!(m.resource, "invoice/42");
    }

    #[test]
    fn a_parameter_in_an_action_cannot_add_names_to_it() {
        let routes = invoices();
        let m = routes.find("GET", "/v1/tenants/acme/reports").unwrap();
        assert_eq!(m.action, "http.acme.report");
        assert!(matches!(
            routes.find("GET", "/v1/tenants/acme.admin/reports"),
            Err(NoMatch::ActionValue { .. })
        ));
    }

    #[test]
    fn routes_that_cannot_work_are_refused_when_loaded() {
        let bad = [
            route("v1/x", &[], None, "x"),
            route("/v1/{id}/{id}", &[], None, "x/{id}"),
            route("/v1/{rest...}/x", &[], None, "x/{rest}"),
            route("/v1/{id}", &[], None, "x/{other}"),
            route("/v1/{id}", &[], Some("http.{nope}"), "x/{id}"),
            route("/v1/{id}", &[], Some("http..x"), "x/{id}"),
            route("/v1/{id}", &["G ET"], None, "x/{id}"),
            route("/v1/{id}", &[], None, ""),
            route("/v1/{i-d}", &[], None, "x"),
            route("/v1/../x", &[], None, "x"),
            route("/v1/{id", &[], None, "x"),
            route("/v1/{id}", &[], None, "x/{id"),
        ];
        for config in bad {
            assert!(
                Routes::new(std::slice::from_ref(&config), Some("svc")).is_err(),
                "{config:?}"
            );
        }
        // Without a service, a route names its action.
        assert!(Routes::new(&[route("/x", &[], None, "x")], None).is_err());
        assert!(Routes::new(&[route("/x", &[], Some("http.x.{method}"), "x")], None).is_ok());
        assert!(Routes::new(&[], Some("a.b")).is_err());
    }

    #[test]
    fn the_query_is_not_part_of_the_path() {
        assert_eq!(path_of("/a/b?c=d#e"), "/a/b");
        assert_eq!(query_of("/a/b?c=d#e"), "c=d");
        assert_eq!(query_of("/a/b"), "");
        assert_eq!(percent_decode(b"a%41%7e"), Some(b"aA~".to_vec()));
        assert_eq!(percent_decode(b"%4"), None);
    }
}
