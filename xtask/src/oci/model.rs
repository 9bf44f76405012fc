//! The OCI documents we read, as serde structs: a platform, a descriptor, a manifest or index
//! (one [`Document`] type, told apart by its media type), and an image's config. Fields we do
//! not use are kept in `rest` where a document is written back (an archive's `index.json`), so
//! that reading and writing loses nothing.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The platform of an index entry or an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// `os/arch[/variant]`, or `None` for an attestation (`unknown/unknown`) or a config that
    /// names no platform.
    pub fn name(&self) -> Option<String> {
        if self.os.is_empty() || self.os == "unknown" || self.architecture.is_empty() {
            return None;
        }
        Some(match &self.variant {
            Some(variant) => format!("{}/{}/{variant}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        })
    }
}

/// A reference from one document to another, or to a blob.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    pub rest: BTreeMap<String, Value>,
}

impl Descriptor {
    /// The entry's platform name; `None` for an attestation or an entry without a platform.
    pub fn platform_name(&self) -> Option<String> {
        self.platform.as_ref().and_then(Platform::name)
    }

    /// Whether the entry is an attestation manifest (BuildKit's provenance and SBOM).
    pub fn is_attestation(&self) -> bool {
        self.annotations.get("vnd.docker.reference.type").map(String::as_str)
            == Some("attestation-manifest")
    }
}

/// A manifest (`config` and `layers`) or an index (`manifests`); what it is, its media type
/// says. The fields of the other kind are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    pub rest: BTreeMap<String, Value>,
}

impl Document {
    /// Reads a document; `what` names it in the error (`the manifest of REF`, `index.json of
    /// FILE`).
    pub fn parse(bytes: &[u8], what: &str) -> Result<Document> {
        serde_json::from_slice(bytes)
            .with_context(|| format!("{what} is not an OCI manifest or index"))
    }

    /// The in-toto predicate types of an attestation manifest's layers.
    pub fn predicate_types(&self) -> Vec<String> {
        self.layers
            .iter()
            .filter_map(|l| l.annotations.get("in-toto.io/predicate-type").cloned())
            .collect()
    }
}

/// An image's config blob: its platform, run settings and layers' content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ImageConfig {
    #[serde(flatten)]
    pub platform: Platform,
    #[serde(default)]
    pub config: RunConfig,
    #[serde(default)]
    pub rootfs: RootFs,
}

/// What an image runs with: its labels, and every other setting (`Env`, `Cmd`, `User`, ...)
/// as the config holds it, compared whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RunConfig {
    /// `null` in a config without labels.
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    pub settings: BTreeMap<String, Value>,
}

impl RunConfig {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.as_ref()?.get(key).map(String::as_str)
    }
}

/// The uncompressed digests of an image's layers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_reads_and_writes_back_what_it_does_not_use() {
        let text = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
            "manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "digest":"sha256:a","size":12,"platform":{"os":"linux","architecture":"arm64",
            "variant":"v8"},"urls":["x"]},{"digest":"sha256:b","platform":{"os":"unknown",
            "architecture":"unknown"},"annotations":{"vnd.docker.reference.type":
            "attestation-manifest"}}],"subject":{"digest":"sha256:c"}}"#;
        let document = Document::parse(text.as_bytes(), "test").unwrap();
        let names: Vec<Option<String>> =
            document.manifests.iter().map(Descriptor::platform_name).collect();
        assert_eq!(names, [Some("linux/arm64/v8".to_owned()), None]);
        assert!(document.manifests[1].is_attestation());
        let again: Value = serde_json::to_value(&document).unwrap();
        let original: Value = serde_json::from_str(text).unwrap();
        assert_eq!(again, original, "nothing is lost on the way back");
    }

    #[test]
    fn a_document_of_the_wrong_shape_is_refused_with_its_name() {
        let err =
            Document::parse(br#"{"manifests": [{"size": 1}]}"#, "index.json of x.tar").unwrap_err();
        assert_eq!(err.to_string(), "index.json of x.tar is not an OCI manifest or index");
        assert!(Document::parse(br#"{"layers": [{"digest": 7}]}"#, "m").is_err());
    }

    #[test]
    fn a_config_without_labels_has_none() {
        let config: ImageConfig = serde_json::from_str(
            r#"{"os":"linux","architecture":"amd64","config":{"Labels":null,"Cmd":["sh"]},
               "rootfs":{"type":"layers","diff_ids":["sha256:l"]}}"#,
        )
        .unwrap();
        assert_eq!(config.platform.name().as_deref(), Some("linux/amd64"));
        assert_eq!(config.config.label("x"), None);
        assert_eq!(config.config.settings["Cmd"], serde_json::json!(["sh"]));
        assert_eq!(config.rootfs.diff_ids, ["sha256:l"]);
    }
}
