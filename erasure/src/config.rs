//! The zstor config file: geometry, key, backends. TOML, documented in `README.md`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::codec::{
    RsCodecId, CHUNK_BYTES_MAX, DATA_SHARDS_MAX, KEY_BYTES, PARITY_SHARDS_MAX, SHARD_BYTES_MAX,
};
use crate::store::StoreUrl;

/// Default data shards (k).
pub const DATA_SHARDS_DEFAULT: usize = 4;
/// Default parity shards (m).
pub const PARITY_SHARDS_DEFAULT: usize = 2;
/// Default plaintext chunk size.
pub const CHUNK_BYTES_DEFAULT: usize = 4 * 1024 * 1024;
/// Default zstd level: fast, and still worth it on text.
pub const COMPRESSION_LEVEL_DEFAULT: i32 = 3;

/// Errors of loading, checking and writing a config.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Reading or writing the file failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for a zstor config.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The values are inconsistent.
    #[error("invalid config: {0}")]
    Invalid(String),
    /// `init` refuses to replace a config (and so lose its key).
    #[error("{0} already exists; refusing to overwrite it (its key may be the only way to read your data)")]
    Exists(String),
}

/// One backend: a zdb namespace (or any store URL, for tests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `zdb://[user:password@]host:port/namespace`.
    pub url: String,
    /// Failure group (rack, host, site): shards of a chunk are spread over groups first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// The daemon's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Unix socket path; default `<state_dir>/zstor.sock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// Optional TCP listen address, e.g. `127.0.0.1:9980`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Bearer token every request must carry.
    #[serde(default)]
    pub token: String,
}

/// A zstor config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Data shards per chunk (k).
    pub data_shards: usize,
    /// Parity shards per chunk (m): how many backends may fail.
    pub parity_shards: usize,
    /// Plaintext bytes per chunk.
    #[serde(default = "default_chunk_bytes")]
    pub chunk_size: usize,
    /// zstd level, 0 to disable compression.
    #[serde(default = "default_compression_level")]
    pub compression_level: i32,
    /// Shards of every chunk that must be stored for a write to succeed (k..=k+m);
    /// default k+1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_threshold: Option<usize>,
    /// Reed-Solomon implementation for new objects.
    #[serde(default = "default_codec")]
    pub reed_solomon: String,
    /// AES-256-GCM key, 64 hex digits. Without it nothing can be read back.
    pub encryption_key: String,
    /// Where the repair queue lives; default under the user's state directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// The backends, at least k+m.
    pub backends: Vec<BackendConfig>,
    /// Daemon settings.
    #[serde(default)]
    pub daemon: DaemonConfig,
}

fn default_chunk_bytes() -> usize {
    CHUNK_BYTES_DEFAULT
}

fn default_compression_level() -> i32 {
    COMPRESSION_LEVEL_DEFAULT
}

fn default_codec() -> String {
    RsCodecId::DEFAULT.name().to_string()
}

impl Config {
    /// A new config with a fresh random key and daemon token.
    pub fn generate(
        data_shards: usize,
        parity_shards: usize,
        backends: Vec<BackendConfig>,
    ) -> Result<Self, ConfigError> {
        let key: [u8; KEY_BYTES] = rand::random();
        let token: [u8; 24] = rand::random();
        let config = Config {
            data_shards,
            parity_shards,
            chunk_size: CHUNK_BYTES_DEFAULT,
            compression_level: COMPRESSION_LEVEL_DEFAULT,
            write_threshold: None,
            reed_solomon: default_codec(),
            encryption_key: hex::encode(key),
            state_dir: None,
            backends,
            daemon: DaemonConfig {
                socket: None,
                listen: None,
                token: hex::encode(token),
            },
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; errors say which and why.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |reason: String| Err(ConfigError::Invalid(reason));
        if !(1..=DATA_SHARDS_MAX).contains(&self.data_shards) {
            return invalid(format!(
                "data_shards = {} (must be 1..={DATA_SHARDS_MAX})",
                self.data_shards
            ));
        }
        if !(1..=PARITY_SHARDS_MAX).contains(&self.parity_shards) {
            return invalid(format!(
                "parity_shards = {} (must be 1..={PARITY_SHARDS_MAX})",
                self.parity_shards
            ));
        }
        let total = self.data_shards + self.parity_shards;
        if self.backends.len() < total {
            return invalid(format!(
                "{} backends for {}+{} shards: every shard of a chunk needs its own backend, so at least {total} are needed",
                self.backends.len(),
                self.data_shards,
                self.parity_shards
            ));
        }
        if self.backends.len() > u16::MAX as usize {
            return invalid("too many backends".into());
        }
        if !(1..=CHUNK_BYTES_MAX).contains(&self.chunk_size) {
            return invalid(format!(
                "chunk_size = {} (must be 1..={CHUNK_BYTES_MAX})",
                self.chunk_size
            ));
        }
        let shard_bytes = (self.chunk_size + 64).div_ceil(self.data_shards) + 128;
        if shard_bytes > SHARD_BYTES_MAX {
            return invalid(format!(
                "chunk_size = {} makes shards of about {shard_bytes} bytes, above zdb's limit of {SHARD_BYTES_MAX}; lower chunk_size or raise data_shards",
                self.chunk_size
            ));
        }
        if !(0..=22).contains(&self.compression_level) {
            return invalid(format!(
                "compression_level = {} (must be 0..=22)",
                self.compression_level
            ));
        }
        let threshold = self.write_threshold();
        if threshold < self.data_shards || threshold > total {
            return invalid(format!(
                "write_threshold = {threshold} (must be between data_shards {} and data_shards + parity_shards {total})",
                self.data_shards
            ));
        }
        RsCodecId::from_name(&self.reed_solomon)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.key()?;
        let mut seen = std::collections::HashSet::new();
        for backend in &self.backends {
            let url =
                StoreUrl::parse(&backend.url).map_err(|e| ConfigError::Invalid(e.to_string()))?;
            if matches!(url, StoreUrl::Zstor(_) | StoreUrl::Http(_)) {
                return invalid(format!(
                    "backend {}: zstor backends must be zdb:// (or dir:// for tests)",
                    backend.url
                ));
            }
            if !seen.insert(backend_address(&backend.url)) {
                return invalid(format!(
                    "backend {} is listed twice",
                    backend_address(&backend.url)
                ));
            }
        }
        Ok(())
    }

    /// Shards per chunk that must be stored for a write to succeed.
    pub fn write_threshold(&self) -> usize {
        self.write_threshold
            .unwrap_or((self.data_shards + 1).min(self.data_shards + self.parity_shards))
    }

    /// The encryption key.
    pub fn key(&self) -> Result<[u8; KEY_BYTES], ConfigError> {
        let bytes = hex::decode(self.encryption_key.trim())
            .map_err(|_| ConfigError::Invalid("encryption_key is not hex".into()))?;
        bytes.try_into().map_err(|_| {
            ConfigError::Invalid(format!(
                "encryption_key must be {} hex digits",
                KEY_BYTES * 2
            ))
        })
    }

    /// The state directory (repair queue): the config's, or the user's default.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|value| !value.is_empty()) {
            return PathBuf::from(state).join("zos").join("stor");
        }
        match std::env::var_os("HOME").filter(|value| !value.is_empty()) {
            Some(home) => PathBuf::from(home).join(".local/state/zos/stor"),
            None => PathBuf::from("/var/lib/zos/stor"),
        }
    }

    /// Loads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            context: format!("reading zstor config {}", path.display()),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Writes a new config file with mode 0600; refuses to replace an existing one.
    pub fn write_new(&self, path: &Path) -> Result<(), ConfigError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        self.validate()?;
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(|source| ConfigError::Io {
                context: format!("creating {}", parent.display()),
                source,
            })?;
        }
        let body = toml::to_string_pretty(self).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    ConfigError::Exists(path.display().to_string())
                } else {
                    ConfigError::Io {
                        context: format!("creating {}", path.display()),
                        source,
                    }
                }
            })?;
        let text = format!("{CONFIG_HEADER}\n{body}");
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|source| ConfigError::Io {
                context: format!("writing {}", path.display()),
                source,
            })
    }
}

/// How a backend is named in metadata and messages: its URL without the password.
pub fn backend_address(url: &str) -> String {
    match StoreUrl::parse(url) {
        Ok(StoreUrl::Zdb(zdb)) => zdb.to_string(),
        Ok(StoreUrl::Dir(path)) => format!("dir://{}", path.display()),
        _ => url.to_string(),
    }
}

const CONFIG_HEADER: &str = "\
# zstor config, written by `zos stor init`. Mode 0600: it holds the encryption key.
#
# BACK UP `encryption_key`: without it no object stored with this config can be read.
#
# data_shards (k) + parity_shards (m): each chunk is cut into k+m shards on k+m different
#   backends; any m backends may be lost. Changing them affects only new objects.
# chunk_size: plaintext bytes per chunk (shards must stay under zdb's 8 MiB values).
# compression_level: zstd level 1..=22, 0 to disable; chunks that do not shrink stay raw.
# write_threshold: shards of each chunk that must be stored for a put to succeed
#   (default k+1; never below k). Missing shards are queued for `zos stor repair`.
# reed_solomon: \"reed-solomon-erasure\" or \"reed-solomon-simd\" for new objects.
# state_dir: where the repair queue lives (default ~/.local/state/zos/stor).
# [[backends]]: url = \"zdb://[user:password@]host:port/namespace\", optional group = \"rack-a\";
#   shards of one chunk are spread over groups first. A dead backend can be replaced by
#   editing its url; `zos stor repair` then rebuilds its shards onto the new one.
# [daemon]: socket (default <state_dir>/zstor.sock), optional listen = \"127.0.0.1:9980\",
#   token: the bearer token every request to the daemon must carry.
";

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(count: usize) -> Vec<BackendConfig> {
        (0..count)
            .map(|index| BackendConfig {
                url: format!("zdb://127.0.0.1:{}/ns", 9900 + index),
                group: None,
            })
            .collect()
    }

    #[test]
    fn generated_config_round_trips_and_is_private() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("stor.toml");
        let config = Config::generate(4, 2, backends(6)).unwrap();
        config.write_new(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(Config::load(&path).unwrap(), config);
        assert!(matches!(
            config.write_new(&path),
            Err(ConfigError::Exists(_))
        ));
        assert_eq!(config.write_threshold(), 5);
    }

    #[test]
    fn bad_values_are_refused_with_reasons() {
        let error = Config::generate(4, 2, backends(5)).unwrap_err().to_string();
        assert!(error.contains("at least 6"), "{error}");
        let mut config = Config::generate(4, 2, backends(6)).unwrap();
        config.write_threshold = Some(3);
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("write_threshold"));
        config.write_threshold = None;
        config.encryption_key = "abc".into();
        assert!(config.validate().is_err());
        let mut config = Config::generate(4, 2, backends(6)).unwrap();
        config.backends[1] = config.backends[0].clone();
        assert!(config.validate().unwrap_err().to_string().contains("twice"));
        config.backends[1].url = "zdb://u:pw@127.0.0.1:9900/ns".into();
        assert!(config.validate().unwrap_err().to_string().contains("twice"));
    }
}
