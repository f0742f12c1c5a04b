//! OCI images as pack sources: an OCI image layout directory (`oci-layout`, `index.json`,
//! `blobs/sha256/...`) or a `docker save` tarball (its `manifest.json` lists the layers;
//! newer Docker versions also put an OCI layout inside).
//!
//! The layers of the first manifest are applied in order with [`Packer::add_layer`], which
//! honours whiteouts and opaque directories. A `docker save` tarball is first unpacked
//! into a private temporary folder (the tar crate refuses entries that would escape it).

use std::path::{Path, PathBuf};

use crate::pack::{PackError, Packer};

/// Largest JSON document (index, manifest) read.
pub const JSON_BYTES_MAX: u64 = 4 * 1024 * 1024;

fn invalid(message: String) -> PackError {
    PackError::Invalid(message)
}

fn read_json(path: &Path) -> Result<serde_json::Value, PackError> {
    let length = std::fs::metadata(path)
        .map_err(|source| PackError::Io {
            context: format!("reading {}", path.display()),
            source,
        })?
        .len();
    if length > JSON_BYTES_MAX {
        return Err(invalid(format!(
            "{} is larger than {JSON_BYTES_MAX} bytes",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(|source| PackError::Io {
        context: format!("reading {}", path.display()),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|error| invalid(format!("{}: {error}", path.display())))
}

/// Whether `directory` is an OCI image layout or an unpacked `docker save` archive.
pub fn is_image_directory(directory: &Path) -> bool {
    directory.join("oci-layout").is_file() || directory.join("manifest.json").is_file()
}

/// Whether the tar file at `path` is a `docker save` archive or an OCI layout in a tar
/// (it holds `manifest.json` or `oci-layout` at its top).
pub fn is_image_tar(path: &Path) -> Result<bool, PackError> {
    let file = std::fs::File::open(path).map_err(|source| PackError::Io {
        context: format!("opening {}", path.display()),
        source,
    })?;
    let mut archive = tar::Archive::new(file);
    let entries = archive.entries().map_err(|source| PackError::Io {
        context: format!("reading {}", path.display()),
        source,
    })?;
    for entry in entries {
        let Ok(entry) = entry else { return Ok(false) };
        let name = entry.path_bytes();
        let name = name.strip_prefix(b"./").unwrap_or(&name);
        if name == b"manifest.json" || name == b"oci-layout" {
            return Ok(true);
        }
    }
    Ok(false)
}

fn blob_path(directory: &Path, digest: &str) -> Result<PathBuf, PackError> {
    let (algorithm, hex) = digest
        .split_once(':')
        .ok_or_else(|| invalid(format!("digest {digest:?} has no algorithm")))?;
    let safe =
        |part: &str| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_alphanumeric());
    if !safe(algorithm) || !safe(hex) {
        return Err(invalid(format!("digest {digest:?} is not algorithm:hex")));
    }
    Ok(directory.join("blobs").join(algorithm).join(hex))
}

/// The layer files of the image in `directory`, lowest first.
fn layers(directory: &Path) -> Result<Vec<PathBuf>, PackError> {
    if directory.join("index.json").is_file() {
        let index = read_json(&directory.join("index.json"))?;
        let digest = index["manifests"][0]["digest"]
            .as_str()
            .ok_or_else(|| invalid("index.json lists no manifest".into()))?;
        let mut manifest = read_json(&blob_path(directory, digest)?)?;
        // An index may point at another index (multi-platform): take its first manifest.
        if manifest["manifests"].is_array() {
            let digest = manifest["manifests"][0]["digest"]
                .as_str()
                .ok_or_else(|| invalid("nested index lists no manifest".into()))?;
            manifest = read_json(&blob_path(directory, digest)?)?;
        }
        let layers = manifest["layers"]
            .as_array()
            .ok_or_else(|| invalid("the manifest has no layers".into()))?;
        return layers
            .iter()
            .map(|layer| {
                let digest = layer["digest"]
                    .as_str()
                    .ok_or_else(|| invalid("a layer has no digest".into()))?;
                blob_path(directory, digest)
            })
            .collect();
    }
    let manifest = read_json(&directory.join("manifest.json"))?;
    let layers = manifest[0]["Layers"]
        .as_array()
        .ok_or_else(|| invalid("manifest.json lists no Layers".into()))?;
    layers
        .iter()
        .map(|layer| {
            let relative = layer
                .as_str()
                .ok_or_else(|| invalid("a layer path is not text".into()))?;
            let relative = Path::new(relative);
            if relative.is_absolute()
                || relative
                    .components()
                    .any(|part| matches!(part, std::path::Component::ParentDir))
            {
                return Err(invalid(format!(
                    "layer path {} escapes the image",
                    relative.display()
                )));
            }
            Ok(directory.join(relative))
        })
        .collect()
}

/// Applies every layer of the image in `directory` on `packer`.
pub fn add_image_directory(packer: &mut Packer, directory: &Path) -> Result<(), PackError> {
    for layer in layers(directory)? {
        let file = std::fs::File::open(&layer).map_err(|source| PackError::Io {
            context: format!("opening layer {}", layer.display()),
            source,
        })?;
        packer.add_layer(file)?;
    }
    Ok(())
}

/// Applies every layer of the `docker save` (or OCI-in-tar) archive at `path`.
pub fn add_image_tar(packer: &mut Packer, path: &Path) -> Result<(), PackError> {
    let scratch = tempfile::Builder::new()
        .prefix("zos-oci-")
        .tempdir()
        .map_err(|source| PackError::Io {
            context: "creating a temporary folder".into(),
            source,
        })?;
    let file = std::fs::File::open(path).map_err(|source| PackError::Io {
        context: format!("opening {}", path.display()),
        source,
    })?;
    tar::Archive::new(file)
        .unpack(scratch.path())
        .map_err(|source| PackError::Io {
            context: format!("unpacking {}", path.display()),
            source,
        })?;
    add_image_directory(packer, scratch.path())
}
