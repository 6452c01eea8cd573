//! The gateway's configuration: its upstream MCP servers, how each tool's arguments name the
//! resource a call acts on, who its clients are, and where decisions are made.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// Everything `ztinfra mcp-gateway` reads from its config file (TOML). Command-line flags
/// override or add to it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The actor of every decision for a client that presents no session token (stdio), until
    /// verified agent sessions exist.
    pub actor: Option<String>,
    /// What `tools/list` does with a tool the caller could never be allowed to call.
    #[serde(default)]
    pub tools_list: ToolsList,
    /// Decide on `resources/read` too (action `mcp.<server>.resources.read`, resource the URI).
    #[serde(default)]
    pub decide_resource_reads: bool,
    /// Ask this ZT-Infra service (`http://host:port`) for decisions instead of deciding in
    /// process.
    pub decide_url: Option<String>,
    /// With `decide_url`: a file holding the gateway's own credential (a `pep` credential of
    /// that service, `ztinfra credentials add NAME --role pep`), sent as `Authorization: Bearer`.
    pub decide_token_file: Option<PathBuf>,
    /// The same credential given directly (`ZTINFRA_PEP_TOKEN`), never read from the file.
    #[serde(skip)]
    pub decide_token: Option<String>,
    /// With an `https://` `decide_url`: the CA certificate(s) that signed the service's TLS
    /// certificate (PEM).
    pub decide_tls_ca: Option<PathBuf>,
    /// With `decide_tls_ca`: the gateway's own X.509-SVID and key (PEM), presented over mutual
    /// TLS; a service that maps its SPIFFE ID to a `pep` caller needs no credential then.
    pub decide_tls_cert: Option<PathBuf>,
    pub decide_tls_key: Option<PathBuf>,
    /// In-process decisions: the policy directory, data directory and store, as for `serve`.
    pub policies: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub store: Option<String>,
    /// Streamable HTTP mode: the address to listen on.
    pub listen: Option<std::net::SocketAddr>,
    /// Streamable HTTP mode: the public base URL clients reach the gateway at (for the OAuth
    /// protected resource metadata and the `Host` check); default `http://<listen>`.
    pub public_url: Option<String>,
    /// Streamable HTTP mode: the OAuth authorization servers that issue session tokens, listed
    /// in the protected resource metadata (RFC 9728).
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    /// The upstream MCP servers, each under its own name.
    #[serde(default, rename = "server")]
    pub servers: Vec<ServerConfig>,
    /// The session tokens clients may present, and the actor each stands for.
    #[serde(default, rename = "client")]
    pub clients: Vec<ClientToken>,
}

/// What `tools/list` does with a tool that no policy could ever allow the caller to call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolsList {
    /// Leave it out, so the agent does not discover it (the default).
    #[default]
    Hide,
    /// List it, marked as never allowed in its description and `_meta`.
    Annotate,
}

/// One upstream MCP server: a command to start (stdio) or a URL (streamable HTTP).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The name in actions (`mcp.<name>.<tool>`) and, in HTTP mode, in the path
    /// (`/mcp/<name>`).
    pub name: String,
    /// The command and its arguments, for a server spoken to over stdio.
    #[serde(default)]
    pub command: Vec<String>,
    /// Extra environment variables for the command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The streamable HTTP endpoint of a remote server.
    pub url: Option<String>,
    /// Per tool: which arguments name the resource a call acts on.
    #[serde(default)]
    pub tools: BTreeMap<String, ToolMapping>,
}

/// Which arguments of a tool name the resource a call acts on.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolMapping {
    /// JSON pointers into the arguments (`"/path"`, or `["/owner", "/repo"]`); their values,
    /// joined by `/`, are the resource. Each is also put in the context under `fields`. A tool
    /// without a mapping acts on the server itself: the resource is the server's name.
    #[serde(default, deserialize_with = "one_or_many")]
    pub resource: Vec<String>,
}

/// A client's session token, by its SHA-256 digest (hex), so the file holds no secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientToken {
    pub token_sha256: String,
    pub actor: String,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid gateway config `{path}`: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl GatewayConfig {
    /// Reads a config file.
    pub fn read(path: &std::path::Path) -> Result<Self, ConfigError> {
        let file = |message: String| ConfigError::File {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
        toml::from_str(&text).map_err(|e| file(e.to_string()))
    }

    /// Checks what serde cannot: names, pointers, digests, and that each server has exactly one
    /// way to reach it.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.servers.is_empty() {
            return invalid("no upstream MCP server is configured: give `--server-name NAME -- COMMAND...` or `[[server]]` entries in the config file".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for server in &self.servers {
            if server.name.is_empty()
                || !server
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return invalid(format!(
                    "server name `{}` must be letters, digits, `_` and `-` only (it becomes part of the action `mcp.<server>.<tool>`)",
                    server.name
                ));
            }
            if !names.insert(server.name.as_str()) {
                return invalid(format!("server name `{}` is used twice", server.name));
            }
            match (server.command.is_empty(), &server.url) {
                (false, None) | (true, Some(_)) => {}
                (true, None) => {
                    return invalid(format!(
                        "server `{}` needs a `command` (stdio) or a `url` (streamable HTTP)",
                        server.name
                    ));
                }
                (false, Some(_)) => {
                    return invalid(format!(
                        "server `{}` has both a `command` and a `url`; give one",
                        server.name
                    ));
                }
            }
            for (tool, mapping) in &server.tools {
                for pointer in &mapping.resource {
                    if !pointer.starts_with('/') {
                        return invalid(format!(
                            "server `{}` tool `{tool}`: resource pointer `{pointer}` must be a JSON pointer such as `/path`",
                            server.name
                        ));
                    }
                }
            }
        }
        for client in &self.clients {
            if client.token_sha256.len() != 64
                || !client.token_sha256.chars().all(|c| c.is_ascii_hexdigit())
            {
                return invalid(format!(
                    "client `{}`: `token_sha256` must be the SHA-256 of the token, 64 hex digits",
                    client.actor
                ));
            }
        }
        if self.decide_tls_cert.is_some() != self.decide_tls_key.is_some() {
            return invalid("`decide_tls_cert` and `decide_tls_key` go together".into());
        }
        if self.decide_tls_ca.is_none() && self.decide_tls_cert.is_some() {
            return invalid("`decide_tls_cert` needs `decide_tls_ca`".into());
        }
        if let Some(url) = &self.decide_url
            && url.starts_with("https://")
            && self.decide_tls_ca.is_none()
        {
            return invalid(format!(
                "`decide_url` `{url}` is https: give the CA that signed its certificate with `decide_tls_ca`"
            ));
        }
        if self.decide_url.is_none() && self.decide_tls_ca.is_some() {
            return invalid(
                "`decide_tls_ca` is for a remote service: it needs `decide_url`".into(),
            );
        }
        if self.decide_url.is_none() && self.decide_token_file.is_some() {
            return invalid(
                "`decide_token_file` is the credential for a remote service: it needs `decide_url`"
                    .into(),
            );
        }
        if self.decide_url.is_some()
            && (self.policies.is_some() || self.data_dir.is_some() || self.store.is_some())
        {
            return invalid(
                "`decide_url` asks a remote service; `policies`, `data_dir` and `store` are for deciding in process: give one or the other"
                    .into(),
            );
        }
        Ok(())
    }

    /// The actor a presented session token stands for.
    pub fn actor_for_token(&self, token: &str) -> Option<&str> {
        let digest = crate::sha256_hex(token.as_bytes());
        self.clients
            .iter()
            .find(|c| {
                constant_time_eq(
                    c.token_sha256.to_ascii_lowercase().as_bytes(),
                    digest.as_bytes(),
                )
            })
            .map(|c| c.actor.as_str())
    }
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_config_parses_and_checks() {
        let config: GatewayConfig = toml::from_str(
            r#"
            actor = "agent-1"
            tools_list = "annotate"
            [[server]]
            name = "fs"
            command = ["npx", "server-filesystem", "/tmp"]
            tools.write_file.resource = "/path"
            tools.copy.resource = ["/from", "/to"]
            [[client]]
            token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
            actor = "agent-2"
            "#,
        )
        .unwrap();
        config.check().unwrap();
        assert_eq!(config.tools_list, ToolsList::Annotate);
        let fs = &config.servers[0];
        assert_eq!(fs.tools["write_file"].resource, ["/path"]);
        assert_eq!(fs.tools["copy"].resource, ["/from", "/to"]);
        // sha256("test"): a test token.
        assert_eq!(config.actor_for_token("test"), Some("agent-2"));
        assert_eq!(config.actor_for_token("tesT"), None);
    }

    #[test]
    fn bad_configs_are_explained() {
        let check = |text: &str| {
            toml::from_str::<GatewayConfig>(text)
                .map_err(|e| e.to_string())
                .and_then(|c| c.check().map_err(|e| e.to_string()))
                .unwrap_err()
        };
        assert!(check("").contains("no upstream MCP server"));
        assert!(check("[[server]]\nname = \"a.b\"\ncommand = [\"x\"]").contains("letters, digits"));
        assert!(check("[[server]]\nname = \"a\"").contains("needs a `command`"));
        assert!(
            check("[[server]]\nname = \"a\"\ncommand = [\"x\"]\ntools.t.resource = \"path\"")
                .contains("JSON pointer")
        );
        assert!(
            check("[[server]]\nname = \"a\"\ncommand = [\"x\"]\n[[client]]\ntoken_sha256 = \"abc\"\nactor = \"x\"")
                .contains("64 hex digits")
        );
        assert!(check("colour = 1").contains("unknown field"));
    }
}
