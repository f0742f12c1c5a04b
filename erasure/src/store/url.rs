//! Parsing of store URLs.

use std::fmt;
use std::path::PathBuf;

use super::StoreError;

/// Port zdb listens on when a URL names none.
pub const ZDB_PORT_DEFAULT: u16 = 9900;

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `dir:///absolute/path`.
    Dir(PathBuf),
    /// `http://...` or `https://...`, the base under which chunks live.
    Http(url::Url),
    /// `zdb://[user:password@]host:port/namespace`.
    Zdb(ZdbUrl),
    /// `zstor://CONFIG-OR-SOCKET`: a zstor config file or a daemon's unix socket.
    Zstor(PathBuf),
}

/// One zdb namespace, as named by a `zdb://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ZdbUrl {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Namespace; `default` when the URL has no path.
    pub namespace: String,
    /// User part of the URL; zdb has no users, it is kept only to print the URL back.
    pub user: Option<String>,
    /// Namespace password, when the namespace has one.
    pub password: Option<String>,
}

impl ZdbUrl {
    /// `host:port/namespace`: how a backend is named in messages and metadata (never with
    /// the password).
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}/{}", self.host, self.port, self.namespace)
        } else {
            format!("{}:{}/{}", self.host, self.port, self.namespace)
        }
    }

    /// `host:port` for connecting.
    pub fn socket_address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for ZdbUrl {
    /// The URL without its password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "zdb://{}", self.address())
    }
}

impl fmt::Debug for ZdbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZdbUrl")
            .field("address", &self.address())
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

fn invalid(url: &str, reason: impl Into<String>) -> StoreError {
    StoreError::InvalidUrl {
        url: redact(url),
        reason: reason.into(),
    }
}

/// Hides a password in a URL so it can go into an error message.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Cannot fail: the URL has a password, so it has a host that can carry one.
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

fn percent_decode(url: &str, text: &str) -> Result<String, StoreError> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut input = text.bytes();
    while let Some(byte) = input.next() {
        if byte == b'%' {
            let high = input.next();
            let low = input.next();
            let pair = [high.unwrap_or(b'?'), low.unwrap_or(b'?')];
            let decoded = std::str::from_utf8(&pair)
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| invalid(url, "bad percent escape"))?;
            bytes.push(decoded);
        } else {
            bytes.push(byte);
        }
    }
    String::from_utf8(bytes).map_err(|_| invalid(url, "credentials are not UTF-8"))
}

impl StoreUrl {
    /// Parses a store URL; errors say what is wrong, without showing passwords.
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        let (scheme, rest) = text.split_once("://").ok_or_else(|| {
            invalid(
                text,
                "expected SCHEME://..., with dir, http, https, zdb or zstor",
            )
        })?;
        match scheme {
            "dir" => {
                if !rest.starts_with('/') {
                    return Err(invalid(text, "dir URLs need an absolute path: dir:///path"));
                }
                Ok(StoreUrl::Dir(PathBuf::from(rest)))
            }
            "zstor" => {
                if rest.is_empty() {
                    return Err(invalid(
                        text,
                        "zstor URLs name a config file or socket: zstor:///path",
                    ));
                }
                Ok(StoreUrl::Zstor(PathBuf::from(rest)))
            }
            "http" | "https" => {
                let mut parsed = url::Url::parse(text).map_err(|e| invalid(text, e.to_string()))?;
                if parsed.host_str().is_none() {
                    return Err(invalid(text, "no host"));
                }
                if !parsed.path().ends_with('/') {
                    let path = format!("{}/", parsed.path());
                    parsed.set_path(&path);
                }
                Ok(StoreUrl::Http(parsed))
            }
            "zdb" => {
                let parsed = url::Url::parse(text).map_err(|e| invalid(text, e.to_string()))?;
                let host = match parsed.host() {
                    Some(url::Host::Domain(domain)) if !domain.is_empty() => domain.to_string(),
                    Some(url::Host::Ipv4(address)) => address.to_string(),
                    Some(url::Host::Ipv6(address)) => address.to_string(),
                    _ => return Err(invalid(text, "no host: zdb://host:port/namespace")),
                };
                let port = parsed.port().unwrap_or(ZDB_PORT_DEFAULT);
                let path = parsed.path().trim_start_matches('/');
                if path.contains('/') {
                    return Err(invalid(text, "namespace must not contain '/'"));
                }
                let namespace = if path.is_empty() {
                    "default".to_string()
                } else {
                    percent_decode(text, path)?
                };
                if namespace.len() > 128 {
                    return Err(invalid(text, "namespace longer than 128 bytes"));
                }
                let user = match parsed.username() {
                    "" => None,
                    user => Some(percent_decode(text, user)?),
                };
                let password = parsed
                    .password()
                    .map(|password| percent_decode(text, password))
                    .transpose()?;
                Ok(StoreUrl::Zdb(ZdbUrl {
                    host,
                    port,
                    namespace,
                    user,
                    password,
                }))
            }
            other => Err(invalid(
                text,
                format!("unknown scheme {other:?}: use dir, http, https, zdb or zstor"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_zdb_urls() {
        let url = StoreUrl::parse("zdb://alice:s%40cret@127.0.0.1:9901/ns1").unwrap();
        let StoreUrl::Zdb(zdb) = url else {
            panic!("not zdb")
        };
        assert_eq!(zdb.host, "127.0.0.1");
        assert_eq!(zdb.port, 9901);
        assert_eq!(zdb.namespace, "ns1");
        assert_eq!(zdb.user.as_deref(), Some("alice"));
        assert_eq!(zdb.password.as_deref(), Some("s@cret"));
        assert_eq!(zdb.to_string(), "zdb://127.0.0.1:9901/ns1");
        assert!(!format!("{zdb:?}").contains("cret"));

        let StoreUrl::Zdb(zdb) = StoreUrl::parse("zdb://[::1]/").unwrap() else {
            panic!()
        };
        assert_eq!(zdb.host, "::1");
        assert_eq!(zdb.port, ZDB_PORT_DEFAULT);
        assert_eq!(zdb.namespace, "default");
        assert_eq!(zdb.socket_address(), "[::1]:9900");
    }

    #[test]
    fn parses_other_schemes() {
        assert_eq!(
            StoreUrl::parse("dir:///var/chunks").unwrap(),
            StoreUrl::Dir(PathBuf::from("/var/chunks"))
        );
        let StoreUrl::Http(base) = StoreUrl::parse("https://hub.example/chunks").unwrap() else {
            panic!()
        };
        assert_eq!(base.as_str(), "https://hub.example/chunks/");
        assert_eq!(
            StoreUrl::parse("zstor:///etc/zstor.toml").unwrap(),
            StoreUrl::Zstor(PathBuf::from("/etc/zstor.toml"))
        );
    }

    #[test]
    fn rejects_bad_urls_without_leaking_passwords() {
        for bad in [
            "",
            "dir://relative",
            "ftp://x/y",
            "zdb://",
            "zdb://h:1/a/b",
            "zdb://h:99999/n",
        ] {
            assert!(StoreUrl::parse(bad).is_err(), "{bad} accepted");
        }
        let error = StoreUrl::parse("zdb://u:topsecret@h:1/a/b")
            .unwrap_err()
            .to_string();
        assert!(!error.contains("topsecret"), "{error}");
    }
}
