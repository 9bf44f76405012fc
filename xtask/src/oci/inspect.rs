//! An index (or a single manifest) as read back from a registry, with the config of each of
//! its platforms' images, and the questions release, verify and swarm ask of it: its digest,
//! its platforms, their labels, its attestations, and what of its images decides what runs.

use std::collections::BTreeMap;

use crate::oci::model::{Descriptor, ImageConfig, RootFs};

/// What the registry holds under a reference: the digest of the index (or manifest) there,
/// its entries (empty for a single manifest), and each platform's image config, by platform
/// name (`linux/amd64`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspected {
    pub digest: String,
    pub entries: Vec<Descriptor>,
    pub images: BTreeMap<String, ImageConfig>,
    /// Platform name → the digest of its manifest.
    pub platforms: BTreeMap<String, String>,
}

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

/// What of one platform's image decides what runs: its run settings without labels, and its
/// layers. A rebuild of the same content that only relabels compares equal.
#[derive(Debug, PartialEq, Eq)]
pub struct Content<'a> {
    settings: &'a BTreeMap<String, serde_json::Value>,
    rootfs: &'a RootFs,
}

impl Inspected {
    /// An index under `digest` with its `entries` and the image config of each platform
    /// entry (by platform name).
    pub(crate) fn index(
        digest: String,
        entries: Vec<Descriptor>,
        images: BTreeMap<String, ImageConfig>,
    ) -> Inspected {
        let platforms = entries
            .iter()
            .filter_map(|e| Some((e.platform_name()?, e.digest.clone())))
            .filter(|(platform, _)| images.contains_key(platform))
            .collect();
        Inspected { digest, entries, images, platforms }
    }

    /// One image stored as a manifest under `digest`, not in an index: its platform is its
    /// config's.
    pub(crate) fn manifest(digest: String, image: ImageConfig) -> Inspected {
        let mut inspected = Inspected { digest: digest.clone(), ..Inspected::default() };
        if let Some(platform) = image.platform.name() {
            inspected.platforms.insert(platform.clone(), digest);
            inspected.images.insert(platform, image);
        }
        inspected
    }

    /// The index's digest and platforms, with the release labels every platform agrees on.
    pub fn found(&self) -> FoundIndex {
        FoundIndex {
            digest: self.digest.clone(),
            platforms: self.platforms.clone(),
            version: self.common_label("org.opencontainers.image.version"),
            revision: self.common_label("org.opencontainers.image.revision"),
        }
    }

    /// A label of the image of `platform`.
    pub fn label(&self, platform: &str, key: &str) -> Option<&str> {
        self.images.get(platform)?.config.label(key)
    }

    /// The value of label `key` when every platform has it and the same.
    pub fn common_label(&self, key: &str) -> Option<String> {
        let mut values = self.platforms.keys().map(|p| self.label(p, key));
        let first = values.next()??;
        values.all(|v| v == Some(first)).then(|| first.to_owned())
    }

    /// The digests of the attestation manifests in the index, each with the digest of the
    /// platform manifest it describes.
    pub fn attestations(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .filter(|e| e.is_attestation())
            .filter_map(|e| {
                let of = e.annotations.get("vnd.docker.reference.digest")?;
                Some((of.clone(), e.digest.clone()))
            })
            .collect()
    }

    /// What decides what runs, by platform; `None` when the answer holds no image.
    pub fn content(&self) -> Option<BTreeMap<&str, Content<'_>>> {
        let mut content = BTreeMap::new();
        for platform in self.platforms.keys() {
            let image = self.images.get(platform)?;
            content.insert(
                platform.as_str(),
                Content { settings: &image.config.settings, rootfs: &image.rootfs },
            );
        }
        (!content.is_empty()).then_some(content)
    }
}

/// An image config of `platform` (`os/arch`) with `labels`, for tests.
#[cfg(test)]
pub fn image_for_test(platform: &str, labels: &[(&str, &str)]) -> ImageConfig {
    use crate::oci::model::{Platform, RunConfig};
    let (os, arch) = platform.split_once('/').expect("os/arch");
    let platform = Platform { os: os.to_owned(), architecture: arch.to_owned(), variant: None };
    let labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let config = RunConfig { labels: Some(labels), settings: BTreeMap::new() };
    ImageConfig { platform, config, rootfs: RootFs::default() }
}

/// An index under `digest` of `platforms` (`os/arch`, manifests `sha256:ARCH`), each image
/// with `labels`, plus one attestation entry, for tests.
#[cfg(test)]
pub fn inspected_for_test(digest: &str, platforms: &[&str], labels: &[(&str, &str)]) -> Inspected {
    use crate::oci::model::Platform;
    let mut entries = Vec::new();
    let mut images = BTreeMap::new();
    for name in platforms {
        let image = image_for_test(name, labels);
        entries.push(Descriptor {
            digest: format!("sha256:{}", image.platform.architecture),
            platform: Some(image.platform.clone()),
            ..Descriptor::default()
        });
        images.insert((*name).to_owned(), image);
    }
    let unknown = Platform { os: "unknown".into(), architecture: "unknown".into(), variant: None };
    let mut attestation = Descriptor {
        digest: "sha256:att".into(),
        platform: Some(unknown),
        ..Descriptor::default()
    };
    attestation
        .annotations
        .insert("vnd.docker.reference.type".into(), "attestation-manifest".into());
    if let Some(first) = entries.first() {
        attestation.annotations.insert("vnd.docker.reference.digest".into(), first.digest.clone());
    }
    entries.push(attestation);
    Inspected::index(digest.to_owned(), entries, images)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERSION: &str = "org.opencontainers.image.version";

    #[test]
    fn an_index_has_the_platforms_of_its_images_and_their_common_labels() {
        let both =
            inspected_for_test("sha256:i", &["linux/amd64", "linux/arm64"], &[(VERSION, "1.0")]);
        let found = both.found();
        assert_eq!(found.platforms.keys().collect::<Vec<_>>(), ["linux/amd64", "linux/arm64"]);
        assert_eq!(found.version.as_deref(), Some("1.0"));
        assert_eq!(both.attestations(), [("sha256:amd64".to_owned(), "sha256:att".to_owned())]);

        let mut differing = both.clone();
        let arm = differing.images.get_mut("linux/arm64").unwrap();
        arm.config.labels.as_mut().unwrap().insert(VERSION.into(), "1.1".into());
        assert_eq!(differing.found().version, None, "platforms that disagree have no version");
    }

    #[test]
    fn a_single_manifest_is_an_index_of_its_config_platform() {
        let single = Inspected::manifest(
            "sha256:one".into(),
            image_for_test("linux/amd64", &[(VERSION, "0.9.0")]),
        );
        let found = single.found();
        assert_eq!(found.version.as_deref(), Some("0.9.0"));
        assert_eq!(
            found.platforms.into_iter().collect::<Vec<_>>(),
            [("linux/amd64".to_owned(), "sha256:one".to_owned())]
        );
        let nameless = Inspected::manifest("sha256:x".into(), ImageConfig::default());
        assert!(nameless.platforms.is_empty() && nameless.content().is_none());
    }

    #[test]
    fn content_ignores_labels_but_not_settings_or_layers() {
        let a = inspected_for_test("sha256:a", &["linux/amd64"], &[(VERSION, "1")]);
        let relabelled = inspected_for_test("sha256:b", &["linux/amd64"], &[(VERSION, "2")]);
        assert_eq!(a.content(), relabelled.content());
        let mut other_cmd = relabelled.clone();
        let image = other_cmd.images.get_mut("linux/amd64").unwrap();
        image.config.settings.insert("Cmd".into(), serde_json::json!(["sh"]));
        assert_ne!(a.content(), other_cmd.content());
        let mut other_layers = relabelled;
        let image = other_layers.images.get_mut("linux/amd64").unwrap();
        image.rootfs.diff_ids.push("sha256:l".into());
        assert_ne!(a.content(), other_layers.content());

        let config = |created: &str| -> ImageConfig {
            serde_json::from_value(serde_json::json!({
                "os": "linux", "architecture": "arm64", "created": created,
                "history": [{"created": created}],
                "config": {"Cmd": ["postgres"], "Labels": {"version": created}},
                "rootfs": {"type": "layers", "diff_ids": ["sha256:l1"]}}))
            .unwrap()
        };
        let early = Inspected::manifest("sha256:1".into(), config("2024-01-01"));
        let late = Inspected::manifest("sha256:2".into(), config("2025-01-01"));
        assert_eq!(early.content(), late.content(), "times and history do not count");
    }
}
