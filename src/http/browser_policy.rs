//! Which browsers the broker trusts (SPEC §8 "Browsers are not trusted callers", CORS): the
//! parsed `SWITCHBOARD_ALLOWED_HOSTS` and `SWITCHBOARD_CORS_ORIGINS`, and how an origin or a
//! `Host` header is compared. Configuration only; the middleware that enforces it is
//! [`crate::http::guard`].

/// An origin as compared: lowercase scheme and host, explicit port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// Parses `scheme://host[:port]` (the form of an `Origin` header). `None` for `null`,
    /// paths, user info or anything else.
    pub fn parse(text: &str) -> Option<Origin> {
        let (scheme, rest) = text.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let (host, port) = split_authority(rest)?;
        Some(Origin {
            scheme,
            host,
            port: port.unwrap_or(default_port),
        })
    }
}

/// `host[:port]` (IPv6 in brackets) → lowercase host (brackets kept) and port. `None` when it
/// is not a bare authority.
fn split_authority(text: &str) -> Option<(String, Option<u16>)> {
    if text.is_empty() || text.contains(['/', '@', '?', '#', ' ']) {
        return None;
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{}]", inside.to_ascii_lowercase()), port)
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
            None => (text.to_ascii_lowercase(), None),
        }
    };
    if host.is_empty() || host.contains(':') && !host.starts_with('[') {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    Some((host, port))
}

/// `SWITCHBOARD_CORS_ORIGINS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CorsOrigins {
    /// None (the default): no CORS headers anywhere.
    #[default]
    None,
    /// `*`: any origin may call the CORS routes.
    Any,
    /// These origins.
    List(Vec<Origin>),
}

impl CorsOrigins {
    /// Parses the variable; the error names the entry that is not an origin.
    pub fn parse(text: &str) -> Result<CorsOrigins, String> {
        let entries: Vec<&str> = text
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        if entries.is_empty() {
            return Ok(CorsOrigins::None);
        }
        if entries == ["*"] {
            return Ok(CorsOrigins::Any);
        }
        entries
            .iter()
            .map(|e| {
                Origin::parse(e.trim_end_matches('/')).ok_or_else(|| {
                    format!(
                        "`{e}` is not an origin: expected `*` or comma-separated \
                         scheme://host[:port] (e.g. https://app.example.com)"
                    )
                })
            })
            .collect::<Result<_, _>>()
            .map(CorsOrigins::List)
    }

    /// Whether `origin` is listed by name (`*` lists none: it opens only the CORS routes).
    pub fn lists(&self, origin: &Origin) -> bool {
        matches!(self, CorsOrigins::List(l) if l.contains(origin))
    }

    /// Whether no cross-origin page is allowed at all (the variable is unset or empty).
    pub fn is_none(&self) -> bool {
        *self == CorsOrigins::None
    }
}

/// What the middleware enforces, from configuration.
#[derive(Debug, Clone, Default)]
pub struct BrowserPolicy {
    /// Local mode: the Host rule applies.
    pub local: bool,
    /// `SWITCHBOARD_ALLOWED_HOSTS`, lowercase (`host` or `host:port`).
    pub allowed_hosts: Vec<String>,
    pub cors: CorsOrigins,
}

impl BrowserPolicy {
    /// Whether a local broker answers this `Host` header value.
    pub fn host_allowed(&self, value: &str) -> bool {
        let Some((host, port)) = split_authority(value) else {
            return false;
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if host == "localhost"
            || bare
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
        {
            return true;
        }
        let with_port = port.map(|p| format!("{host}:{p}"));
        self.allowed_hosts
            .iter()
            .any(|h| *h == host || Some(h) == with_port.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_with_default_ports() {
        let o = Origin::parse("HTTP://Example.COM").unwrap();
        assert_eq!(o, Origin::parse("http://example.com:80").unwrap());
        assert_ne!(o, Origin::parse("https://example.com").unwrap());
        assert_eq!(
            Origin::parse("http://[::1]:8080").unwrap(),
            Origin {
                scheme: "http".into(),
                host: "[::1]".into(),
                port: 8080
            }
        );
        for bad in [
            "null",
            "file://",
            "http://",
            "http://a/b",
            "http://u@a",
            "http://a:x",
            "ftp://a",
            "http://::1",
        ] {
            assert_eq!(Origin::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_cors_list_parses_or_names_the_bad_entry() {
        assert_eq!(CorsOrigins::parse(""), Ok(CorsOrigins::None));
        assert_eq!(CorsOrigins::parse(" * "), Ok(CorsOrigins::Any));
        let list = CorsOrigins::parse("https://a.example, http://localhost:3000/").unwrap();
        assert!(list.lists(&Origin::parse("https://a.example:443").unwrap()));
        assert!(list.lists(&Origin::parse("http://localhost:3000").unwrap()));
        assert!(!list.lists(&Origin::parse("http://localhost:3001").unwrap()));
        assert!(CorsOrigins::parse("https://a.example,evil")
            .unwrap_err()
            .contains("`evil`"));
    }

    #[test]
    fn local_hosts() {
        let p = BrowserPolicy {
            local: true,
            allowed_hosts: vec!["box.lan".into(), "nas:9000".into()],
            cors: CorsOrigins::None,
        };
        for ok in [
            "127.0.0.1:8080",
            "127.9.9.9",
            "localhost",
            "LOCALHOST:1",
            "[::1]:8080",
            "box.lan:8080",
            "nas:9000",
        ] {
            assert!(p.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "0.0.0.0:8080",
            "192.168.1.2",
            "localhost.evil.example",
            "nas:9001",
            "",
            "a b",
        ] {
            assert!(!p.host_allowed(bad), "{bad}");
        }
    }
}
