//! Pushing an OCI archive: each blob the repository lacks is mounted from another repository
//! of the registry or uploaded (the upload's `Location` may send it elsewhere, with no login),
//! then the manifests, children before their index.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use camino::Utf8Path;

use super::{Body, Call, Client, MANIFEST_LIMIT, UPLOADERS, absolute, blob_key, encode, explain};
use crate::oci::archive::{Archive, ImageLayout};
use crate::oci::auth::Access;
use crate::oci::reference::{Reference, Repository, display, display_repo};
use crate::oci::retry::Failure;
use crate::run::interrupt::Interrupted;
use crate::run::progress::Progress;

impl Client {
    /// Whether the repository holds the blob.
    pub(super) fn has_blob(&self, repo: &Repository, digest: &str) -> Result<bool> {
        let url = format!("{}/blobs/{digest}", self.base(repo)?);
        let what = format!("looking for blob {digest} in {}", display_repo(repo));
        match self.retried(&what, || self.send(repo, Access::Push, &Call::new("HEAD", &url, 0)))? {
            Ok(_) => Ok(true),
            Err(Failure::Absent { .. }) => Ok(false),
            Err(failure) => Err(explain(
                &format!("cannot look for blob {digest} in {}", display_repo(repo)),
                failure,
            )),
        }
    }

    /// Uploads one blob of an archive unless the repository has it: a session (`POST`), then
    /// the whole blob in one `PUT`. A session the registry forgot is started again.
    pub(super) fn upload(
        &self,
        repo: &Repository,
        layout: &Archive,
        digest: &str,
        progress: &Arc<Progress>,
    ) -> Result<()> {
        let (offset, size) = layout.blob_position(digest)?;
        let doing = format!("upload blob {digest} to {}", display_repo(repo));
        for _ in 0..3 {
            if self.has_blob(repo, digest)? {
                self.holds(repo, digest);
                progress.add(size);
                return Ok(());
            }
            // A blob this run saw in another repository of the registry is mounted from there
            // (no bytes move); a registry that declines opens an ordinary session instead.
            let from =
                self.blobs.lock().expect("not poisoned").get(&blob_key(repo, digest)).cloned();
            let mut start = format!("{}/blobs/uploads/", self.base(repo)?);
            if let Some(from) = &from {
                start.push_str(&format!("?mount={}&from={}", encode(digest), encode(from)));
            }
            let what = format!("starting the upload of blob {digest} to {}", display_repo(repo));
            let started = self.retried(&what, || {
                self.send(repo, Access::Push, &Call::new("POST", &start, MANIFEST_LIMIT))
            })?;
            let started = started.map_err(|f| explain(&format!("cannot {doing}"), f))?;
            if from.is_some() && started.status == 201 {
                self.holds(repo, digest);
                progress.add(size);
                return Ok(());
            }
            let location = started.header("location").with_context(|| {
                format!("cannot {doing}: the registry named no upload location")
            })?;
            let base = self.base(repo)?;
            let location = absolute(&base, location);
            let separator = if location.contains('?') { '&' } else { '?' };
            let url = format!("{location}{separator}digest={}", encode(digest));
            let body = Body::File { path: &layout.path, offset, size, progress: Some(progress) };
            let what = format!(
                "uploading blob {digest} ({}) to {}",
                crate::run::progress::size(size),
                display_repo(repo)
            );
            match self.retried(&what, || {
                self.send(
                    repo,
                    Access::Push,
                    &Call::new("PUT", &url, MANIFEST_LIMIT).with_body(body),
                )
            })? {
                Ok(_) => {
                    self.holds(repo, digest);
                    return Ok(());
                }
                // The session is gone (expired, or consumed by an attempt whose answer was
                // lost): the blob may be there now, else a new session.
                Err(Failure::Absent { .. }) => continue,
                Err(failure) => return Err(explain(&format!("cannot {doing}"), failure)),
            }
        }
        bail!("cannot {doing}: the registry forgot three upload sessions in a row")
    }

    /// Notes that `repo` holds the blob, so that other repositories of the registry mount it.
    pub(super) fn holds(&self, repo: &Repository, digest: &str) {
        self.blobs.lock().expect("not poisoned").insert(blob_key(repo, digest), repo.name.clone());
    }

    /// Pushes the one index of an OCI archive under every tag of `targets` (refs of one
    /// repository): each blob it reaches is uploaded once (skipped when the registry has it,
    /// mounted when another repository of it does), then each manifest by digest, then the
    /// index under each tag. Unless `overwrite`, each tag is read again just before it is
    /// written, and a tag that names another digest is refused: another build pushed it
    /// meanwhile, and released tags are immutable. Returns the index's digest.
    pub fn push_archive(
        &self,
        archive: &Utf8Path,
        targets: &[Reference],
        overwrite: bool,
    ) -> Result<String> {
        let Some(first) = targets.first() else { bail!("no ref to push {archive} to") };
        let repo = &first.repository;
        if let Some(other) = targets.iter().find(|t| &t.repository != repo) {
            bail!(
                "cannot push {archive} to {} and {}: one push goes to one repository",
                display(first),
                display(other)
            );
        }
        let layout = Archive::open(archive)?;
        let top = layout.top()?;
        let mut manifests = Vec::new();
        let mut blobs = BTreeSet::new();
        layout.walk(&top, &mut manifests, &mut blobs)?;
        let blobs: Vec<String> = blobs.into_iter().collect();
        let mut total = 0;
        for digest in &blobs {
            total += layout.blob_position(digest)?.1;
        }
        let progress = Arc::new(Progress::bytes(&format!("pushing {}", display(first)), total));
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let errors = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..UPLOADERS.min(blobs.len()) {
                scope.spawn(|| {
                    loop {
                        let n = next.fetch_add(1, Ordering::SeqCst);
                        if n >= blobs.len() || failed.load(Ordering::SeqCst) {
                            return;
                        }
                        if let Err(err) = self.upload(repo, &layout, &blobs[n], &progress) {
                            failed.store(true, Ordering::SeqCst);
                            errors.lock().expect("no uploader panics holding it").push(err);
                            return;
                        }
                    }
                });
            }
        });
        let mut errors = errors.into_inner().expect("no uploader panicked");
        if let Some(pos) = errors.iter().position(|e| !e.is::<Interrupted>()) {
            return Err(errors.swap_remove(pos));
        }
        if let Some(err) = errors.pop() {
            return Err(err);
        }
        for manifest in &manifests {
            let by_digest =
                Reference { repository: repo.clone(), reference: manifest.digest.clone() };
            self.put_manifest(&by_digest, manifest)?;
        }
        for target in targets {
            if !overwrite {
                match self.manifest(target)? {
                    Some(current) if current.digest == top.digest => continue,
                    Some(current) => bail!(
                        "{} appeared in the registry as {} while this image was built (another \
                         build pushed it), and released tags are immutable: nothing was \
                         overwritten; bump the version, or pass --force to overwrite",
                        display(target),
                        current.digest
                    ),
                    None => {}
                }
            }
            self.put_manifest(target, &top)?;
        }
        Ok(top.digest)
    }
}
