//! The target URL: parses `http://host[:port]/path?query` (host is IPv4,
//! `[IPv6]` or a DNS name) into [`Target`], which also carries the `Host`
//! header value to send. Only plain `http` is supported.

use std::net::{Ipv4Addr, Ipv6Addr};

/// A parsed target URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host without brackets: `127.0.0.1`, `::1` or `example.com` (lowercased
    /// for names), ready for `(host, port)` resolution.
    pub host: String,
    /// TCP port (80 when not given).
    pub port: u16,
    /// Request target: path plus `?query`, always starting with `/`.
    pub path_and_query: String,
    /// `Host` header value: host (bracketed for IPv6) plus `:port` unless 80.
    pub host_header: String,
}

impl Target {
    /// True when the host is an IPv6 literal.
    pub fn is_ipv6(&self) -> bool {
        self.host.contains(':')
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.host_header, self.path_and_query)
    }
}

fn valid_dns_name(name: &str) -> bool {
    // one trailing dot ("example.com.") is a fully qualified name
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Parse `http://host[:port][/path][?query][#fragment]`. The fragment is
/// dropped (it is never sent); user info, other schemes and malformed hosts
/// or ports are errors.
pub fn parse_url(s: &str) -> Result<Target, String> {
    let bad = |why: &str| format!("invalid URL '{s}': {why}");
    let Some(scheme_end) = s.find("://") else {
        return Err(bad("expected http://host[:port]/path"));
    };
    let scheme = &s[..scheme_end];
    if scheme.eq_ignore_ascii_case("https") {
        return Err(bad("https is not supported, use http://"));
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(bad("only http:// URLs are supported"));
    }
    let rest = &s[scheme_end + 3..];
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    if authority.contains('@') {
        return Err(bad("user info (user@host) is not supported"));
    }
    if authority.is_empty() {
        return Err(bad("missing host"));
    }
    if tail.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(bad("path contains spaces or control characters"));
    }
    let (host, port_str, bracketed) = if let Some(after) = authority.strip_prefix('[') {
        let Some((v6, after)) = after.split_once(']') else {
            return Err(bad("missing ']' after IPv6 address"));
        };
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| bad("unexpected text after ']'"))?,
            ),
        };
        if v6.parse::<Ipv6Addr>().is_err() {
            return Err(bad(&format!("'{v6}' is not an IPv6 address")));
        }
        (v6.to_ascii_lowercase(), port, true)
    } else {
        let (h, p) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if h.contains(':') {
            return Err(bad(
                "IPv6 addresses must be written in brackets, e.g. [::1]",
            ));
        }
        let looks_numeric = h.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        if looks_numeric {
            if h.parse::<Ipv4Addr>().is_err() {
                return Err(bad(&format!("'{h}' is not an IPv4 address")));
            }
        } else if !valid_dns_name(h) {
            return Err(bad(&format!("'{h}' is not a valid host name")));
        }
        (h.to_ascii_lowercase(), p, false)
    };
    let port = match port_str {
        None => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(bad(&format!("'{p}' is not a port number (1-65535)"))),
        },
    };
    let path_and_query = if tail.is_empty() {
        "/".to_string()
    } else if tail.starts_with('?') {
        format!("/{tail}")
    } else {
        tail.to_string()
    };
    let host_part = if bracketed {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let host_header = if port == 80 {
        host_part
    } else {
        format!("{host_part}:{port}")
    };
    Ok(Target {
        host,
        port,
        path_and_query,
        host_header,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, port: u16, pq: &str, hh: &str) -> Target {
        Target {
            host: host.into(),
            port,
            path_and_query: pq.into(),
            host_header: hh.into(),
        }
    }

    #[test]
    fn good_urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080/index.html?a=1&b=2"),
            Ok(t(
                "127.0.0.1",
                8080,
                "/index.html?a=1&b=2",
                "127.0.0.1:8080"
            ))
        );
        assert_eq!(
            parse_url("http://localhost"),
            Ok(t("localhost", 80, "/", "localhost"))
        );
        assert_eq!(
            parse_url("HTTP://Example.COM:80/x"),
            Ok(t("example.com", 80, "/x", "example.com"))
        );
        assert_eq!(
            parse_url("http://[::1]:9000/p"),
            Ok(t("::1", 9000, "/p", "[::1]:9000"))
        );
        assert_eq!(parse_url("http://[::1]"), Ok(t("::1", 80, "/", "[::1]")));
        assert_eq!(
            parse_url("http://h:81?q=1#frag"),
            Ok(t("h", 81, "/?q=1", "h:81"))
        );
        let v = parse_url("http://[fe80::1]:81/").unwrap();
        assert!(v.is_ipv6());
        assert_eq!(v.to_string(), "http://[fe80::1]:81/");
    }

    #[test]
    fn bad_urls() {
        for bad in [
            "",
            "localhost:8080",
            "https://x/",
            "ftp://x/",
            "http://",
            "http:///path",
            "http://user@host/",
            "http://host:0/",
            "http://host:65536/",
            "http://host:/",
            "http://host:+80/",
            "http://host:8a/",
            "http://::1/",
            "http://[::1/",
            "http://[::g]/",
            "http://[::1]x/",
            "http://999.1.1.1/",
            "http://1.2.3/",
            "http://bad_host!/",
            "http://-x.com/",
            "http://a..b/",
            "http://h/a b",
        ] {
            assert!(parse_url(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_url("https://x/").unwrap_err().contains("https"));
    }
}
