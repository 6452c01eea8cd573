//! Who may reach the API: the `Host` names it answers for, and the web origins allowed to send
//! it requests that change state.
//!
//! A web page cannot read a loopback service's answers across origins, but through DNS
//! rebinding (a name of the attacker's that resolves to 127.0.0.1 a moment later) it becomes,
//! to the browser, the same origin as the service. Its requests then carry the attacker's name
//! in `Host`: so a request whose `Host` is not a name this service answers for is refused (421),
//! as is a state-changing request (any method but GET, HEAD and OPTIONS) whose `Origin` is
//! present and not allowed (403). Requests without `Origin` (every non-browser client) are not
//! affected by the second rule, nor requests without `Host` (HTTP/1.0 clients, never a browser)
//! by the first.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::problem::Problem;

/// The hosts and origins the API answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// Lower-case host names and IP literals (without port or brackets).
    hosts: Vec<String>,
    any_host: bool,
    /// Lower-case `scheme://host[:port]`.
    origins: Vec<String>,
}

impl Reach {
    /// Loopback names and addresses always; the listen address when it is a specific one; the
    /// public URL's host and origin; and the configured `hosts` (`*`: any) and `origins`.
    pub fn new(
        listen: SocketAddr,
        public_url: Option<&str>,
        hosts: &[String],
        origins: &[String],
    ) -> Self {
        let mut reach = Self {
            hosts: vec!["localhost".into()],
            any_host: false,
            origins: Vec::new(),
        };
        if !listen.ip().is_unspecified() {
            reach.hosts.push(listen.ip().to_string());
        }
        if let Some(origin) = public_url.and_then(origin_of) {
            if let Some((_, authority)) = origin.split_once("://") {
                reach.hosts.push(host_of(authority));
            }
            reach.origins.push(origin);
        }
        for host in hosts {
            if host == "*" {
                reach.any_host = true;
            } else {
                reach.hosts.push(host_of(host));
            }
        }
        reach.origins.extend(
            origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase()),
        );
        reach
    }

    fn host_allowed(&self, value: &str) -> bool {
        if self.any_host {
            return true;
        }
        // On every request: compared in place, without allocating.
        let host = host_part(value);
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    fn origin_allowed(&self, value: &str) -> bool {
        self.origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(value.trim_end_matches('/')))
    }
}

/// `scheme://authority` of a URL, lower-cased.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    Some(format!("{scheme}://{authority}").to_ascii_lowercase())
}

/// The host of a `Host` value or authority: no port, no brackets, no trailing dot.
fn host_part(authority: &str) -> &str {
    let authority = authority.trim();
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
            _ => authority,
        }
    };
    host.trim_end_matches('.')
}

/// [`host_part`], lower case.
fn host_of(authority: &str) -> String {
    host_part(authority).to_ascii_lowercase()
}

/// The middleware that applies [`Reach`].
pub async fn check(State(reach): State<Arc<Reach>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if let Some(host) = headers.get(header::HOST) {
        let allowed = host.to_str().is_ok_and(|h| reach.host_allowed(h));
        if !allowed {
            metrics::counter!("ztinfra_requests_refused_total", "reason" => "host").increment(1);
            return Problem::new(
                StatusCode::MISDIRECTED_REQUEST,
                "host-not-allowed",
                "host not allowed",
                "this service does not answer for the `Host` of the request; add the name to `allowed_hosts` (or set `public_url`) if it is one of the service's own",
            )
            .into_response();
        }
    }
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    // A page of the service's own (the console) sends its own origin: the `Host` it was
    // served from, which passed the check above.
    let own = |origin: &str| {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        origin
            .split_once("://")
            .is_some_and(|(_, authority)| host.is_some_and(|h| h.eq_ignore_ascii_case(authority)))
    };
    let origin_refused = !safe
        && headers
            .get(header::ORIGIN)
            .is_some_and(|o| !o.to_str().is_ok_and(|o| reach.origin_allowed(o) || own(o)));
    if origin_refused {
        metrics::counter!("ztinfra_requests_refused_total", "reason" => "origin").increment(1);
        return Problem::new(
            StatusCode::FORBIDDEN,
            "origin-not-allowed",
            "origin not allowed",
            "requests that change state are not accepted from this web origin; add it to `allowed_origins` if it is trusted",
        )
        .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach() -> Reach {
        Reach::new(
            "127.0.0.1:8181".parse().unwrap(),
            Some("https://PDP.example.com/"),
            &["pdp.internal".into()],
            &["https://console.example.com".into()],
        )
    }

    #[test]
    fn hosts() {
        let r = reach();
        for ok in [
            "localhost",
            "localhost:8181",
            "LOCALHOST.:1",
            "127.0.0.1:8181",
            "127.0.0.2",
            "[::1]:8181",
            "pdp.example.com",
            "pdp.example.com:443",
            "pdp.internal:8181",
        ] {
            assert!(r.host_allowed(ok), "{ok}");
        }
        for refused in [
            "attacker.example",
            "attacker.example:8181",
            "localhost.attacker.example",
            "10.0.0.1",
            "",
        ] {
            assert!(!r.host_allowed(refused), "{refused}");
        }
        let any = Reach::new("0.0.0.0:1".parse().unwrap(), None, &["*".into()], &[]);
        assert!(any.host_allowed("anything.example"));
        let open = Reach::new("0.0.0.0:1".parse().unwrap(), None, &[], &[]);
        assert!(!open.host_allowed("0.0.0.0"));
    }

    #[test]
    fn origins() {
        let r = reach();
        assert!(r.origin_allowed("https://pdp.example.com"));
        assert!(r.origin_allowed("https://console.example.com"));
        assert!(!r.origin_allowed("http://attacker.example"));
        assert!(!r.origin_allowed("null"));
        assert!(!r.origin_allowed("http://localhost:8181"));
    }
}
