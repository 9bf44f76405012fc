//! What the registry client says about an index, read as data: its digest, its platforms'
//! manifests and the labels its images carry. The client answers in the shape `docker buildx
//! imagetools inspect --format '{{json .}}'` prints ([`super::Registry::inspect`]); this is the
//! one reader of that shape, for release, verify and swarm alike.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::Value;

/// An index as read back: its digest, each platform's manifest digest, and the version and
/// revision its images are labelled with.
#[derive(Debug, PartialEq, Eq)]
pub struct FoundIndex {
    pub digest: String,
    pub platforms: BTreeMap<String, String>,
    /// The `org.opencontainers.image.version` label, when every platform has the same one.
    pub version: Option<String>,
    pub revision: Option<String>,
}

/// Reads `docker buildx imagetools inspect --format '{{json .}}'` output.
pub fn read_index(inspected: &Value) -> Result<FoundIndex> {
    let manifest = &inspected["manifest"];
    let digest = manifest["digest"].as_str().context("no digest in the answer")?.to_owned();
    let mut platforms = BTreeMap::new();
    if manifest.get("manifests").is_none() && manifest.get("config").is_some() {
        // One image stored as a manifest, not an index: its platform is its config's.
        let image = &inspected["image"];
        let platform = serde_json::json!({
            "os": image["os"], "architecture": image["architecture"], "variant": image["variant"],
        });
        if let Some(name) = crate::oci::platform_name(&platform) {
            platforms.insert(name, digest.clone());
        }
    }
    for entry in manifest["manifests"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let p = &entry["platform"];
        // An attestation manifest (`unknown/unknown`) is not an image.
        let Some(name) = crate::oci::platform_name(p) else { continue };
        platforms.insert(name, entry["digest"].as_str().unwrap_or_default().to_owned());
    }
    let label = |key: &str| -> Option<String> {
        let mut values = platforms.keys().map(|platform| {
            platform_image(inspected, platform, platforms.len())["config"]["Labels"][key]
                .as_str()
                .map(str::to_owned)
        });
        let first = values.next()??;
        values.all(|v| v.as_deref() == Some(first.as_str())).then_some(first)
    };
    let version = label("org.opencontainers.image.version");
    let revision = label("org.opencontainers.image.revision");
    Ok(FoundIndex { digest, platforms, version, revision })
}

/// One platform's image in `imagetools inspect --format '{{json .}}'` output, of an index of
/// `count` platforms: with one image in the index, `.Image` is that image's config rather than
/// a map by platform.
pub fn platform_image<'a>(inspected: &'a Value, platform: &str, count: usize) -> &'a Value {
    match inspected["image"].get(platform) {
        Some(image) => image,
        None if count == 1 => &inspected["image"],
        None => &Value::Null,
    }
}
