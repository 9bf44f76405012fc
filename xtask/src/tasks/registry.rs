//! A throwaway registry (the repository's `registry` image) on a free loopback port: where
//! `cargo xtask ci` and `bench release` push, so that neither touches a real registry. It is
//! removed, with everything pushed to it, when dropped.

use std::time::Duration;

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use crate::image::ImageName;
use crate::image::version::Revision;
use crate::image::{self, BuildRequest};
use crate::run::docker;
use crate::wait::{self, Probe, WaitOptions};

pub struct Throwaway {
    root: Utf8PathBuf,
    container: String,
    /// `127.0.0.1:PORT`, for `--registry 127.0.0.1:PORT/NAMESPACE`.
    pub address: String,
}

impl Throwaway {
    /// Builds the image (a no-op when cached), starts it and waits until `/v2/` answers.
    pub fn start(root: &Utf8Path) -> Result<Throwaway> {
        let revision = Revision::read(root)?;
        let request = BuildRequest { images: vec![ImageName::REGISTRY], ..BuildRequest::default() };
        let plan = image::plan(root, &revision, &request);
        image::execute(&plan).context("cannot build the throwaway registry")?;
        let container = format!("memories-registry-{}", std::process::id());
        docker::cli(root)
            .args(["run", "--detach", "--rm", "--name", &container])
            .args(crate::run::label::label_args())
            .args(["--publish", "127.0.0.1::5000"])
            .arg(plan.images[0].refs[1].as_str())
            .run()
            .context("cannot start the throwaway registry")?;
        // From here on, dropping `registry` removes the container, whatever fails next.
        let mut registry = Throwaway { root: root.to_owned(), container, address: String::new() };
        let mapping = docker::cli(root)
            .args(["port", &registry.container, "5000/tcp"])
            .read()
            .context("cannot read the throwaway registry's port")?;
        let port: u16 = mapping
            .lines()
            .next()
            .and_then(|l| l.rsplit(':').next())
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("unexpected `docker port` answer: {mapping}"))?;
        let ready = Probe::loopback_200(port, "/v2/");
        let options = WaitOptions { timeout: Duration::from_secs(30), ..WaitOptions::default() };
        wait::until_ready(wait::checks(&[ready]), options)
            .context("the throwaway registry did not start")?;
        registry.address = format!("127.0.0.1:{port}");
        Ok(registry)
    }
}

impl Throwaway {
    /// Removes the local tags of images pushed under `namespace` of this registry: once the
    /// registry is gone they would name nothing.
    pub fn untag_local(&self, namespace: &str) {
        let listing = docker::cli(&self.root)
            .args(["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"])
            .arg(format!("{namespace}/*"))
            .quiet();
        let listed = docker::image_listing(&listing, |step| step.capture_regardless());
        let refs: Vec<String> = listed.unwrap_or_default().lines().map(str::to_owned).collect();
        if !refs.is_empty() {
            let _ = docker::cli(&self.root).args(["image", "rm"]).args(refs).run_regardless();
        }
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let _ = docker::cli(&self.root).args(["rm", "--force", &self.container]).run_regardless();
    }
}
