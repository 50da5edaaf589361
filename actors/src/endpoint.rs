//! The one place upstream URLs are built (SPEC §3.1): which OpenAI routes exist, the broker's
//! own path of each, and how a registration's `endpoint_url` becomes the base they hang from.
//!
//! `endpoint_url` is an OpenAI base URL, as the OpenAI SDKs take `base_url`. When its path ends
//! in a version segment (a last segment `v` + digits, optionally followed by `/openai`:
//! `/v1`, `/v1beta/openai`, `/api/v1`, `/openai/v1`) the routes hang from it as it is;
//! any other path, or none, gets `/v1` first (`http://h:11434` → `http://h:11434/v1`). So local
//! servers and cloud providers register the same way.

/// The OpenAI routes the broker sends upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST …/chat/completions` (gateway and session turns).
    Chat,
    /// `POST …/completions`.
    Completions,
    /// `POST …/embeddings`.
    Embeddings,
    /// `GET …/models` (the active health check).
    Models,
}

impl Endpoint {
    /// The endpoints the gateway proxies (`/v1/models` is answered by the broker itself).
    pub const PROXIED: [Endpoint; 3] = [Self::Chat, Self::Completions, Self::Embeddings];
    /// Every endpoint a backend handle prepares a URL for.
    pub const ALL: [Endpoint; 4] = [
        Self::Chat,
        Self::Completions,
        Self::Embeddings,
        Self::Models,
    ];

    /// The route below the base URL (`/chat/completions`).
    pub const fn suffix(self) -> &'static str {
        match self {
            Self::Chat => "/chat/completions",
            Self::Completions => "/completions",
            Self::Embeddings => "/embeddings",
            Self::Models => "/models",
        }
    }

    /// The broker's own route for this endpoint (`/v1/chat/completions`), also its metrics
    /// label. Upstream URLs are *not* built from this: see [`upstream_url`].
    pub const fn path(self) -> &'static str {
        match self {
            Self::Chat => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
            Self::Embeddings => "/v1/embeddings",
            Self::Models => "/v1/models",
        }
    }
}

/// Whether a path segment is a version: `v` followed by one or more digits, then optionally a
/// word of lowercase letters (`v1`, `v2`, `v1beta`, `v1alpha`).
fn is_version(segment: &str) -> bool {
    let Some(rest) = segment.strip_prefix('v') else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && rest[digits..].bytes().all(|b| b.is_ascii_lowercase())
}

/// The OpenAI base URL of a registration: `endpoint_url` without a trailing `/`, with `/v1`
/// appended unless its path already ends in a version segment (optionally + `/openai`).
pub fn openai_base(endpoint_url: &str) -> String {
    let trimmed = endpoint_url.trim_end_matches('/');
    // The path starts after `scheme://authority`.
    let path_start = trimmed
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| trimmed[start..].find('/').map(|p| start + p))
        .unwrap_or(trimmed.len());
    let path = &trimmed[path_start..];
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let versioned = match segments.as_slice() {
        [.., last] if is_version(last) => true,
        [.., version, "openai"] => is_version(version),
        _ => false,
    };
    if versioned {
        trimmed.to_string()
    } else {
        format!("{trimmed}/v1")
    }
}

/// The upstream URL of `endpoint` on a backend whose OpenAI base is `base`
/// (from [`openai_base`]).
pub fn upstream_url(base: &str, endpoint: Endpoint) -> String {
    format!("{base}{}", endpoint.suffix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_segments_keep_the_base_and_other_paths_get_v1() {
        let cases = [
            ("http://h:9", "http://h:9/v1"),
            ("http://h:9/", "http://h:9/v1"),
            ("http://h:9/v1", "http://h:9/v1"),
            ("http://h:9/v1/", "http://h:9/v1"),
            ("http://h:9/x", "http://h:9/x/v1"),
            ("http://h:9/api", "http://h:9/api/v1"),
            ("http://h:9/openai", "http://h:9/openai/v1"),
            ("http://h:9/v", "http://h:9/v/v1"),
            ("http://h:9/version", "http://h:9/version/v1"),
            ("http://h:9/v1x2", "http://h:9/v1x2/v1"),
            (
                "https://generativelanguage.googleapis.com/v1beta/openai",
                "https://generativelanguage.googleapis.com/v1beta/openai",
            ),
            (
                "https://api.anthropic.com/v1",
                "https://api.anthropic.com/v1",
            ),
            ("https://api.openai.com/v1", "https://api.openai.com/v1"),
            (
                "https://openrouter.ai/api/v1",
                "https://openrouter.ai/api/v1",
            ),
            ("https://x.example/openai/v1", "https://x.example/openai/v1"),
            ("http://h:9/v2", "http://h:9/v2"),
        ];
        for (url, base) in cases {
            assert_eq!(openai_base(url), base, "{url}");
        }
    }

    #[test]
    fn upstream_urls_hang_the_route_from_the_base() {
        let base = openai_base("http://h:9/v1beta/openai/");
        assert_eq!(
            upstream_url(&base, Endpoint::Chat),
            "http://h:9/v1beta/openai/chat/completions"
        );
        assert_eq!(
            upstream_url(&base, Endpoint::Models),
            "http://h:9/v1beta/openai/models"
        );
        assert_eq!(
            upstream_url(&openai_base("http://h:9"), Endpoint::Embeddings),
            "http://h:9/v1/embeddings"
        );
        for e in Endpoint::ALL {
            assert_eq!(e.path(), format!("/v1{}", e.suffix()));
        }
    }
}
