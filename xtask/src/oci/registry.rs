//! The registry operations a release needs (read an index, push an image, copy a manifest to
//! another tag), each request of them retried on its own, and what a plan shows for each.

use std::sync::Arc;

use anyhow::Result;
use camino::Utf8Path;
use serde_json::json;

use crate::oci::client::Client;
use crate::oci::inspect::Inspected;
use crate::oci::model::Document;
use crate::oci::reference::Reference;
use crate::oci::retry::{Failure, RetryPolicy, classify, interruptible_sleep, with_retries};
use crate::run::plan::{Captured, Request, Step};

/// One registry and the operations a release needs, each request of them retried on its own
/// ([`Client`]).
#[derive(Clone)]
pub struct Registry {
    policy: RetryPolicy,
    client: Arc<Client>,
}

impl Registry {
    pub fn new(root: &Utf8Path) -> Registry {
        let policy = RetryPolicy::REGISTRY;
        Registry { policy, client: Arc::new(Client::new(root, policy)) }
    }

    /// The index (or manifest) under `reference` and the image config of each platform, or
    /// `None` when the registry holds nothing there.
    pub fn inspect(&self, reference: &str) -> Result<Option<Inspected>> {
        self.client.inspect(&Reference::parse(reference)?)
    }

    /// The manifest or index under `reference`, or `None` when the registry holds nothing
    /// there.
    pub fn document(&self, reference: &str) -> Result<Option<Document>> {
        Ok(self.client.manifest(&Reference::parse(reference)?)?.map(|m| m.document))
    }

    /// Pushes the image in the OCI archive under every ref of `refs` (one repository), each
    /// refused if it names another image by then unless `overwrite`; returns the digest of its
    /// index.
    pub fn push_archive(
        &self,
        archive: &Utf8Path,
        refs: &[String],
        overwrite: bool,
    ) -> Result<String> {
        let targets: Vec<Reference> =
            refs.iter().map(|r| Reference::parse(r)).collect::<Result<_>>()?;
        self.client.push_archive(archive, &targets, overwrite)
    }

    /// A manifest copy inside the registry: `target` then names the digest `source` names, and
    /// no layer moves.
    pub fn copy(&self, source: &str, target: &str) -> Result<()> {
        self.client.copy(&Reference::parse(source)?, &Reference::parse(target)?)
    }

    /// Runs `step`, a command of another registry client (cosign), with this registry's retry
    /// policy; what it said is classified with its secrets redacted.
    pub fn run(&self, what: &str, step: &Step) -> Result<Result<Captured, Failure>> {
        with_retries(
            what,
            &self.policy,
            || {
                let captured = step.capture()?;
                if captured.success() {
                    return Ok(Ok(captured));
                }
                let timed_out = captured.timed_out.then_some(step.timeout).flatten();
                Ok(Err(classify(&step.redact(&captured.stderr), timed_out)))
            },
            interruptible_sleep,
        )
    }
}

/// What a release's plan shows for reading `reference`.
pub fn read_request(reference: &str) -> Request {
    Request::new(format!("read {reference}"), json!({"action": "read", "ref": reference}))
}

/// What a plan shows for pushing the OCI archive `archive` under `refs`.
pub fn push_request(archive: &Utf8Path, refs: &[String]) -> Request {
    Request::new(
        format!(
            "push {archive} as {} (each blob the registry lacks, then the manifests)",
            refs.join(", ")
        ),
        json!({"action": "push", "archive": archive.as_str(), "refs": refs}),
    )
}

/// What a plan shows for a manifest copy of `source` to `target`.
pub fn copy_request(source: &str, target: &str) -> Request {
    Request::new(
        format!("copy {source} to {target} (the manifest only)"),
        json!({"action": "copy", "from": source, "to": target}),
    )
}
