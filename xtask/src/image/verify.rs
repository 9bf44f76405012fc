//! `cargo xtask verify REF --key PUB`: checks a published ref the way a user of it would, in
//! one report: the index it names, its platforms, its labels, its signature (cosign, by the
//! digest the ref named when it was read), and its provenance and SBOM attestations. Exit
//! status 1 when any check fails.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use camino::Utf8Path;
use serde_json::{Value, json};

use crate::image::ImageName;
use crate::image::platform::Platform;
use crate::image::sign::{Cosign, Key, KeyKind, KeySource, Options};
use crate::image::version::Revision;
use crate::oci;
use crate::oci::Inspected;

/// What to verify, independent of the command line.
#[derive(Debug, Clone)]
pub struct Request {
    pub reference: String,
    pub key: KeySource,
    pub platforms: Vec<Platform>,
    pub options: Options,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, outcome: Result<String, String>) -> Check {
        match outcome {
            Ok(detail) => Check { name, ok: true, detail },
            Err(detail) => Check { name, ok: false, detail },
        }
    }
}

/// The labels every image of ours carries.
const LABELS: [&str; 5] = [
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.created",
    "org.opencontainers.image.source",
    "org.opencontainers.image.title",
];

/// The in-toto predicate types of a BuildKit provenance attestation.
const PROVENANCE: [&str; 2] =
    ["https://slsa.dev/provenance/v0.2", "https://slsa.dev/provenance/v1"];

/// The predicate type of an SPDX SBOM, the only kind BuildKit attaches.
const SBOM: &str = "https://spdx.dev/Document";

/// The in-toto predicate types attached to each platform of an index (platform → types), read
/// from the attestation manifests it lists.
pub fn predicate_types(
    registry: &oci::Registry,
    repository: &str,
    inspected: &Inspected,
    platforms: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Vec<String>>> {
    let attested = inspected.attestations();
    let mut types = BTreeMap::new();
    for (platform, digest) in platforms {
        let mut found = Vec::new();
        for (_, attestation) in attested.iter().filter(|(of, _)| of == digest) {
            let reference = format!("{repository}@{attestation}");
            let manifest = registry
                .document(&reference)?
                .with_context(|| format!("{reference} is listed but not in the registry"))?;
            found.extend(manifest.predicate_types());
        }
        types.insert(platform.clone(), found);
    }
    Ok(types)
}

/// Whether every platform has a provenance attestation, and an SBOM.
pub fn check_attestations(
    types: &BTreeMap<String, Vec<String>>,
) -> (Result<String, String>, Result<String, String>) {
    let check = |what: &str, wanted: &dyn Fn(&str) -> bool| -> Result<String, String> {
        let lacking: Vec<&str> = types
            .iter()
            .filter(|(_, t)| !t.iter().any(|t| wanted(t)))
            .map(|(p, _)| p.as_str())
            .collect();
        let all: Vec<&str> = types.keys().map(String::as_str).collect();
        match (all.is_empty(), lacking.is_empty()) {
            (true, _) => Err("the index lists no platform".to_owned()),
            (false, true) => Ok(format!("{what} for {}", all.join(", "))),
            (false, false) => Err(format!("no {what} attestation for {}", lacking.join(", "))),
        }
    };
    (check("SLSA provenance", &|t| PROVENANCE.contains(&t)), check("SPDX SBOM", &|t| t == SBOM))
}

/// Checks the labels of every platform: each of [`LABELS`] present and the same on every
/// platform, and the title the one of the image the repository is named after.
pub fn check_labels(
    inspected: &Inspected,
    platforms: &[String],
    repository: &str,
) -> Result<String, String> {
    let mut values = Vec::new();
    for key in LABELS {
        let found: Vec<Option<&str>> = platforms.iter().map(|p| inspected.label(p, key)).collect();
        match found.first() {
            Some(Some(first)) if found.iter().all(|v| v == &Some(*first)) => {
                values.push((key, (*first).to_owned()));
            }
            _ => return Err(format!("{key} is missing or differs between platforms")),
        }
    }
    let title = &values.iter().find(|(k, _)| k.ends_with(".title")).expect("a title").1;
    let name = repository.rsplit('/').next().unwrap_or(repository);
    let ours = ImageName::released().into_iter().find(|image| image.as_str() == name);
    if let Some(image) = ours {
        let want = crate::image::source(image).title;
        if *title != want {
            return Err(format!("title is `{title}`, but {repository} holds `{want}`"));
        }
    }
    let version = &values[0].1;
    let revision = &values[1].1;
    Ok(format!("{title} {version} from {revision}"))
}

pub fn run(root: &Utf8Path, request: &Request, json: bool) -> Result<()> {
    crate::run::docker::require_cli()?;
    let key = Key::read(&request.key, KeyKind::Public)?;
    let registry = oci::Registry::new(root);
    let reference = &request.reference;
    let repository = crate::oci::repository_of(reference);
    let inspected = registry.inspect(reference)?.with_context(|| {
        format!("{reference} is not in the registry: check the name and the tag")
    })?;
    let found = inspected.found();
    let pinned = format!("{repository}@{}", found.digest);
    let mut checks = Vec::new();

    let have: Vec<String> = found.platforms.keys().cloned().collect();
    let missing: Vec<String> =
        request.platforms.iter().map(ToString::to_string).filter(|p| !have.contains(p)).collect();
    checks.push(Check::new(
        "platforms",
        if missing.is_empty() {
            Ok(have.join(", "))
        } else {
            Err(format!("missing {} (found: {})", missing.join(", "), have.join(", ")))
        },
    ));

    checks.push(Check::new("labels", check_labels(&inspected, &have, repository)));

    let revision = Revision::read(root)?;
    let tools = Cosign::tools_build(root, &revision);
    crate::image::execute(&tools).context("cannot build the tools image that runs cosign")?;
    let cosign = Cosign::new(root, &tools, request.options);
    checks.push(Check::new(
        "signature",
        match cosign.verify(&key, &pinned)? {
            Ok(()) => Ok(format!("{pinned} verified with {}", key.source())),
            Err(reason) => Err(format!("not verified with {}: {reason}", key.source())),
        },
    ));

    let types = predicate_types(&registry, repository, &inspected, &found.platforms)?;
    let (provenance, sbom) = check_attestations(&types);
    checks.push(Check::new("provenance", provenance));
    checks.push(Check::new("sbom", sbom));

    let failed: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
    if json {
        let report: Vec<Value> = checks
            .iter()
            .map(|c| json!({"check": c.name, "ok": c.ok, "detail": c.detail}))
            .collect();
        out!(
            "{:#}",
            json!({
                "ref": reference,
                "digest": found.digest,
                "ok": failed.is_empty(),
                "checks": report,
            })
        );
    } else {
        out!("{reference} is {}", found.digest);
        for check in &checks {
            out!("{:<4} {:<10} {}", if check.ok { "ok" } else { "FAIL" }, check.name, check.detail);
        }
    }
    if !failed.is_empty() {
        bail!("{reference} failed verification: {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspected(title: &str, arm_version: &str) -> Inspected {
        let labels = |version| {
            [
                ("org.opencontainers.image.version", version),
                ("org.opencontainers.image.revision", "abc"),
                ("org.opencontainers.image.created", "2023-11-14T22:13:20Z"),
                ("org.opencontainers.image.source", "https://example.com/m.git"),
                ("org.opencontainers.image.title", title),
            ]
        };
        let mut both =
            crate::oci::inspected_for_test("sha256:i", &["linux/amd64"], &labels("1.0.0"));
        let arm =
            crate::oci::inspected_for_test("sha256:i", &["linux/arm64"], &labels(arm_version));
        both.images.extend(arm.images);
        both.platforms.extend(arm.platforms);
        both
    }

    #[test]
    fn labels_must_agree_and_name_the_image_of_the_repository() {
        let both = ["linux/amd64".to_owned(), "linux/arm64".to_owned()];
        let good = check_labels(&inspected("memories-server", "1.0.0"), &both, "r/acme/server");
        assert_eq!(good, Ok("memories-server 1.0.0 from abc".to_owned()));
        let retagged = check_labels(&inspected("memories-db", "1.0.0"), &both, "r/acme/server");
        assert!(retagged.unwrap_err().contains("holds `memories-server`"));
        let split = check_labels(&inspected("memories-server", "0.9.0"), &both, "r/acme/server");
        assert!(split.unwrap_err().contains("version is missing or differs"));
        // A repository of another name is not held to one of our titles.
        assert!(check_labels(&inspected("x", "1.0.0"), &both, "r/acme/other").is_ok());
    }

    #[test]
    fn every_platform_needs_provenance_and_an_sbom() {
        let types = |arm: &[&str]| -> BTreeMap<String, Vec<String>> {
            BTreeMap::from([
                ("linux/amd64".to_owned(), vec![PROVENANCE[0].to_owned(), SBOM.to_owned()]),
                ("linux/arm64".to_owned(), arm.iter().map(|t| (*t).to_owned()).collect()),
            ])
        };
        let (provenance, sbom) = check_attestations(&types(&[PROVENANCE[0], SBOM]));
        assert_eq!(provenance.unwrap(), "SLSA provenance for linux/amd64, linux/arm64");
        assert_eq!(sbom.unwrap(), "SPDX SBOM for linux/amd64, linux/arm64");
        let (provenance, sbom) = check_attestations(&types(&[PROVENANCE[0]]));
        assert!(provenance.is_ok());
        assert_eq!(sbom.unwrap_err(), "no SPDX SBOM attestation for linux/arm64");
        assert!(check_attestations(&BTreeMap::new()).0.is_err());
    }
}
