//! Backend URL policy (SSRF guard): which endpoint URLs may be registered, and which resolved
//! addresses the upstream connector may dial.
//!
//! The same address check runs twice: at registration (on the literal host or its DNS answers)
//! and at connect time inside the upstream resolver, so a name that later re-resolves to a
//! private address (DNS rebinding) is still refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use awc::http::Uri;

/// Why a URL or address is refused. Messages are shown to the admin as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlPolicyError {
    #[error("endpoint_url is not a valid absolute URL")]
    Malformed,
    #[error("endpoint_url must use http or https, not {0}")]
    Scheme(String),
    #[error("endpoint_url must not contain credentials; use api_key")]
    Credentials,
    #[error("endpoint_url must not contain a query or fragment")]
    Query,
    #[error("endpoint_url has no host")]
    NoHost,
    #[error("endpoint_url host {host} resolves to {addr}, a {kind} address; private backends are not allowed on this deployment (SWITCHBOARD_ALLOW_PRIVATE_BACKENDS)")]
    Private {
        host: String,
        addr: IpAddr,
        kind: &'static str,
    },
    #[error("endpoint_url host {0} does not resolve")]
    Unresolvable(String),
}

/// A URL that passed the syntactic checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidUrl {
    /// The URL as it will be stored: trimmed, without a trailing `/`.
    pub normalized: String,
    /// Host part (without brackets for IPv6).
    pub host: String,
    /// Port, explicit or the scheme's default.
    pub port: u16,
}

/// Checks scheme, credentials, host and query. Does not touch the network.
pub fn parse(raw: &str) -> Result<ValidUrl, UrlPolicyError> {
    let trimmed = raw.trim();
    if trimmed.contains('#') || trimmed.contains('?') {
        return Err(UrlPolicyError::Query);
    }
    let uri: Uri = trimmed.parse().map_err(|_| UrlPolicyError::Malformed)?;
    let scheme = uri.scheme_str().ok_or(UrlPolicyError::Malformed)?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        other => return Err(UrlPolicyError::Scheme(other.to_string())),
    };
    let authority = uri.authority().ok_or(UrlPolicyError::NoHost)?;
    if authority.as_str().contains('@') {
        return Err(UrlPolicyError::Credentials);
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(UrlPolicyError::NoHost);
    }
    Ok(ValidUrl {
        normalized: trimmed.trim_end_matches('/').to_string(),
        host: host.to_string(),
        port: authority.port_u16().unwrap_or(default_port),
    })
}

/// Why an address is not public, or `None` when it is. IPv6 forms that carry an IPv4 address
/// (IPv4-mapped, -translated and -compatible, NAT64, 6to4) are judged by that address, so
/// `[::127.0.0.1]` or `[64:ff9b::10.0.0.1]` cannot reach what `127.0.0.1` cannot.
pub fn non_public_kind(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => v4_kind(v4),
            None => v6_kind(v6),
        },
    }
}

/// The IPv4 address an IPv6 address embeds, for the forms that route to it.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let o = ip.octets();
    let last32 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    match s {
        // IPv4-mapped ::ffff:0:0/96 and IPv4-translated ::ffff:0:0:0/96 (SIIT).
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] => Some(last32),
        // IPv4-compatible ::/96 (deprecated), except :: and ::1 themselves.
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 || lo > 1 => Some(last32),
        // NAT64 well-known prefix 64:ff9b::/96.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(last32),
        // 6to4 2002::/16: the IPv4 address is bits 16..48.
        [0x2002, ..] => Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])),
        _ => None,
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared (carrier-grade NAT)")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("reserved (benchmarking)")
    } else if o[0] >= 240 {
        Some("reserved")
    } else {
        None
    }
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let first = s[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if (first & 0xfe00) == 0xfc00 {
        Some("private (unique local)")
    } else if (first & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if (first & 0xffc0) == 0xfec0 {
        Some("site-local")
    } else if first == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        Some("NAT64 (local use)")
    } else {
        None
    }
}

/// Refuses the first non-public address among `addrs` (all must be public: a resolver may
/// hand any of them to the connector).
pub fn check_addrs(host: &str, addrs: &[IpAddr]) -> Result<(), UrlPolicyError> {
    for &addr in addrs {
        if let Some(kind) = non_public_kind(addr) {
            return Err(UrlPolicyError::Private {
                host: host.to_string(),
                addr,
                kind,
            });
        }
    }
    Ok(())
}

/// The checks that need no DNS: syntax, then (unless private backends are allowed) a
/// `localhost` name or an IP literal host. Used on records loaded at startup, where a URL
/// stored under another mode must not be contacted.
pub fn check_offline(raw: &str, allow_private: bool) -> Result<ValidUrl, UrlPolicyError> {
    let url = parse(raw)?;
    if allow_private {
        return Ok(url);
    }
    if url.host.eq_ignore_ascii_case("localhost") || url.host.ends_with(".localhost") {
        return Err(UrlPolicyError::Private {
            host: url.host.clone(),
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            kind: "loopback",
        });
    }
    if let Ok(ip) = url.host.parse::<IpAddr>() {
        check_addrs(&url.host, &[ip])?;
    }
    Ok(url)
}

/// Full registration-time check: syntax, then (unless private backends are allowed) the host's
/// addresses.
pub async fn validate(raw: &str, allow_private: bool) -> Result<ValidUrl, UrlPolicyError> {
    let url = check_offline(raw, allow_private)?;
    if allow_private {
        return Ok(url);
    }
    let addrs: Vec<IpAddr> = match url.host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((url.host.as_str(), url.port))
            .await
            .map_err(|_| UrlPolicyError::Unresolvable(url.host.clone()))?
            .map(|sa| sa.ip())
            .collect(),
    };
    if addrs.is_empty() {
        return Err(UrlPolicyError::Unresolvable(url.host.clone()));
    }
    check_addrs(&url.host, &addrs)?;
    Ok(url)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_http_and_https_and_normalises() {
        let u = parse(" http://example.com:8000/ ").unwrap();
        assert_eq!(u.normalized, "http://example.com:8000");
        assert_eq!(u.port, 8000);
        assert_eq!(parse("https://api.example.com/v1").unwrap().port, 443);
    }

    #[test]
    fn refuses_bad_urls() {
        assert_eq!(parse("ftp://x"), Err(UrlPolicyError::Scheme("ftp".into())));
        assert_eq!(parse("http://u:p@x.com"), Err(UrlPolicyError::Credentials));
        assert_eq!(parse("not a url"), Err(UrlPolicyError::Malformed));
        assert_eq!(parse("/relative"), Err(UrlPolicyError::Malformed));
        assert_eq!(parse("http://x.com/?a=1"), Err(UrlPolicyError::Query));
    }

    #[test]
    fn classifies_non_public_addresses() {
        for (ip, kind) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("224.0.0.1", "multicast"),
            ("0.0.0.0", "unspecified"),
            ("::1", "loopback"),
            ("fd00::1", "private (unique local)"),
            ("fe80::1", "link-local"),
            ("::ffff:127.0.0.1", "loopback"),
        ] {
            assert_eq!(non_public_kind(ip.parse().unwrap()), Some(kind), "{ip}");
        }
        assert_eq!(non_public_kind("8.8.8.8".parse().unwrap()), None);
        assert_eq!(non_public_kind("2606:4700::1111".parse().unwrap()), None);
    }

    #[test]
    fn ipv6_forms_embedding_ipv4_are_judged_by_the_ipv4_address() {
        for (ip, kind) in [
            ("::127.0.0.1", "loopback"),
            ("::ffff:0:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("64:ff9b::169.254.169.254", "link-local"),
            ("64:ff9b::7f00:1", "loopback"),
            ("2002:7f00:1::1", "loopback"),
            ("2002:c0a8:101::", "private"),
            ("fec0::1", "site-local"),
            ("64:ff9b:1::1", "NAT64 (local use)"),
            ("198.18.0.1", "reserved (benchmarking)"),
            ("198.19.255.255", "reserved (benchmarking)"),
            ("240.0.0.1", "reserved"),
            ("::ffff:240.0.0.1", "reserved"),
        ] {
            assert_eq!(non_public_kind(ip.parse().unwrap()), Some(kind), "{ip}");
        }
        // The same forms around a public address stay public; neighbours of the ranges too.
        for ip in [
            "64:ff9b::808:808",
            "2002:808:808::1",
            "::ffff:8.8.8.8",
            "198.20.0.1",
            "223.255.255.1",
        ] {
            let kind = non_public_kind(ip.parse().unwrap());
            assert!(kind.is_none(), "{ip}: {kind:?}");
        }
    }

    #[test]
    fn the_offline_check_refuses_literals_and_localhost_without_dns() {
        for url in [
            "http://[::127.0.0.1]:9",
            "http://127.0.0.1:9",
            "http://api.localhost",
            "http://[2002:a00:1::]",
        ] {
            assert!(
                matches!(
                    check_offline(url, false),
                    Err(UrlPolicyError::Private { .. })
                ),
                "{url}"
            );
            assert!(check_offline(url, true).is_ok(), "{url}");
        }
        assert!(check_offline("http://example.com", false).is_ok());
    }

    #[actix_rt::test]
    async fn private_literals_are_refused_unless_allowed() {
        assert!(matches!(
            validate("http://127.0.0.1:9000", false).await,
            Err(UrlPolicyError::Private { .. })
        ));
        assert!(matches!(
            validate("http://localhost:9000", false).await,
            Err(UrlPolicyError::Private { .. })
        ));
        assert!(validate("http://127.0.0.1:9000", true).await.is_ok());
    }
}
