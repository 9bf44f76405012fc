//! Signatures with cosign, Debian's, run from the `tools` image so users need nothing beyond
//! Docker: `release --sign` signs each released index by digest and reads every signature back,
//! and `cargo xtask verify` checks any published ref with a public key.
//!
//! Keys never reach a command line, a log or the container's environment (which `docker
//! inspect` shows). The private key is written to a directory of this run that only we may
//! enter (`$TMPDIR/xtask-cosign-<run id>`, removed when the step ends, swept after a `kill -9`),
//! mounted read-only, and cosign runs as us to read it; its password goes on cosign's stdin,
//! which cosign reads when `COSIGN_PASSWORD` is unset and stdin is not a terminal. The public
//! key, which is no secret, goes as a variable named without a value (`--env
//! COSIGN_PUBLIC_KEY`). The password and the key are secrets of every step: a plan or an error
//! shows `***`.
//!
//! No transparency log is reachable here, so by default nothing is uploaded to one
//! (`--tlog-upload=false`) and verification looks for no entry in one
//! (`--insecure-ignore-tlog=true`). `--transparency-log` gives cosign's own defaults (Rekor)
//! back where the log is reachable.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};

use crate::image::version::Revision;
use crate::image::{self, BuildRequest, ImageName, Output};
use crate::oci::{self, Failure};
use crate::run::label::RunDir;
use crate::run::plan::Step;

/// The variable the public key reaches cosign through.
const PUBLIC_KEY_VAR: &str = "COSIGN_PUBLIC_KEY";
/// The private directory that holds the private key (and a blob to sign) on the host, and
/// where cosign finds it.
const KEY_DIR_PREFIX: &str = "xtask-cosign-";
const KEY_MOUNT: &str = "/run/cosign";
/// cosign's own variable for the private key's password (empty for a key without one).
pub const PASSWORD_VAR: &str = "COSIGN_PASSWORD";

/// Where a key comes from: a PEM file, or `env://NAME` for a variable that holds the PEM text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File(Utf8PathBuf),
    Env(String),
}

impl FromStr for KeySource {
    type Err = String;

    fn from_str(raw: &str) -> Result<KeySource, String> {
        match raw.strip_prefix("env://") {
            Some("") => Err("`env://` names no variable: write `env://NAME`".to_owned()),
            Some(name) => Ok(KeySource::Env(name.to_owned())),
            None if raw.is_empty() => Err("no key given: a PEM file, or `env://NAME`".to_owned()),
            None => Ok(KeySource::File(raw.into())),
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(path) => write!(f, "{path}"),
            KeySource::Env(name) => write!(f, "env://{name}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Private,
    Public,
}

/// A key's PEM text, read once, and where it came from (for messages; never the text).
#[derive(Clone)]
pub struct Key {
    pem: String,
    source: KeySource,
    kind: KeyKind,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?} from {})", self.kind, self.source)
    }
}

impl Key {
    pub fn read(source: &KeySource, kind: KeyKind) -> Result<Key> {
        let pem = match source {
            KeySource::File(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the key {path}"))?,
            KeySource::Env(name) => std::env::var(name).with_context(|| {
                format!("the key variable {name} is not set: set it to the key's PEM text")
            })?,
        };
        Key::parse(pem, source.clone(), kind)
    }

    fn parse(pem: String, source: KeySource, kind: KeyKind) -> Result<Key> {
        let header = pem.lines().map(str::trim).find(|l| l.starts_with("-----BEGIN "));
        let Some(header) = header else {
            bail!("{source} is not a PEM key: it has no `-----BEGIN` line");
        };
        let private = header.contains("PRIVATE KEY");
        match (kind, private) {
            (KeyKind::Private, false) => bail!(
                "{source} is not a private key ({header}): sign with the key `cosign \
                 generate-key-pair` wrote to cosign.key"
            ),
            (KeyKind::Public, true) => bail!(
                "{source} is a private key: verify with the public key (cosign.pub), and keep \
                 the private one to yourself"
            ),
            _ => Ok(Key { pem, source, kind }),
        }
    }

    pub fn source(&self) -> &KeySource {
        &self.source
    }
}

/// What signs: the private key (read before anything runs), its password, and the cosign
/// that uses them. Its `Debug` shows neither the key nor the password.
pub struct Signer {
    pub key: Key,
    /// `COSIGN_PASSWORD`, empty when unset (a key without a password).
    pub password: String,
    /// The `tools` build cosign runs from.
    pub tools: image::BuildPlan,
    pub cosign: Cosign,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("key", &self.key)
            .field("password", &"***")
            .field("cosign", &self.cosign)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Reads the key; runs nothing.
    pub fn new(
        root: &Utf8Path,
        revision: &Revision,
        source: &KeySource,
        options: Options,
    ) -> Result<Signer> {
        let key = Key::read(source, KeyKind::Private)?;
        let password = std::env::var(PASSWORD_VAR).unwrap_or_default();
        let tools = Cosign::tools_build(root, revision);
        let cosign = Cosign::new(root, &tools, options);
        Ok(Signer { key, password, tools, cosign })
    }

    /// Builds the tools image and opens the key with its password: the public key that
    /// verifies what it signs. A wrong password fails here, before anything is signed.
    pub fn prepare(&self) -> Result<Key> {
        image::execute(&self.tools).context("cannot build the tools image that runs cosign")?;
        self.cosign.public_key(&self.key, &self.password)
    }

    /// Signs `blob`, then checks the signature with `public`: the signature, base64.
    pub fn sign_blob(&self, public: &Key, blob: &[u8]) -> Result<String> {
        let step = self.cosign.sign_blob_step(&self.key, &self.password);
        let files = KeyFiles::write(&self.key, Some(blob))?;
        let captured = step.capture();
        drop(files);
        let captured = captured?;
        if !captured.success() {
            bail!("cannot sign: {}", step.redact(last_line(&captured.stderr)));
        }
        let signature = captured.stdout.trim().to_owned();
        if let Err(reason) = self.cosign.verify_blob(public, &signature, blob)? {
            bail!("the signature just made does not verify: {reason}");
        }
        Ok(signature)
    }
}

/// cosign in the `tools` image, as the steps of a release or a verification use it.
#[derive(Debug, Clone)]
pub struct Cosign {
    root: Utf8PathBuf,
    /// The `tools` image ref.
    image: String,
    transparency_log: bool,
    /// The docker client's config (registry credentials), mounted for cosign to log in with.
    docker_config: Option<DockerConfig>,
}

#[derive(Debug, Clone)]
struct DockerConfig {
    file: Utf8PathBuf,
    /// The file's owner: cosign runs as them, so it can read a file only they may read.
    owner: (u32, u32),
}

/// How cosign runs: with or without a transparency log.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub transparency_log: bool,
}

impl Cosign {
    /// The build of the `tools` image that cosign runs from: this revision's, for this
    /// machine's platform, cached after the first time.
    pub fn tools_build(root: &Utf8Path, revision: &Revision) -> image::BuildPlan {
        let request = BuildRequest {
            images: vec![ImageName::TOOLS],
            output: Output::Load,
            ..BuildRequest::default()
        };
        image::plan(root, revision, &request)
    }

    /// cosign from the image `tools_build` makes; nothing runs.
    pub fn new(root: &Utf8Path, tools: &image::BuildPlan, options: Options) -> Cosign {
        let image = tools.images[0].refs[1].clone();
        Cosign {
            root: root.to_owned(),
            image,
            transparency_log: options.transparency_log,
            docker_config: DockerConfig::find(),
        }
    }

    /// `docker run` of cosign with the variables in `env` passed by name (and stdin, for the
    /// commands that read a blob or a password there); with `keys`, the private key directory
    /// is mounted read-only and cosign runs as us, who alone may read it.
    fn run(&self, env: &[&str], keys: Option<&Utf8Path>) -> Step {
        let mut step = crate::run::docker::cli(&self.root).args([
            "run",
            "--rm",
            "--interactive",
            "--network",
            "host",
        ]);
        let us = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
        if let Some(dir) = keys {
            step = step.args(["--volume", &format!("{dir}:{KEY_MOUNT}:ro")]);
        }
        match &self.docker_config {
            Some(config) => {
                let (uid, gid) = if keys.is_some() { us } else { config.owner };
                step = step
                    .args(["--user", &format!("{uid}:{gid}")])
                    .args(["--volume", &format!("{}:/docker/config.json:ro", config.file)])
                    .args(["--env", "DOCKER_CONFIG=/docker"]);
            }
            None if keys.is_some() => {
                step = step
                    .args(["--user", &format!("{}:{}", us.0, us.1)])
                    .args(["--env", "HOME=/tmp"]);
            }
            None => step = step.args(["--env", "HOME=/tmp"]),
        }
        for name in env {
            step = step.args(["--env", name]);
        }
        step.arg(&self.image).arg("cosign").timeout(std::time::Duration::from_secs(300))
    }

    /// cosign `command` with the private key from the key directory ([`KeyFiles`] writes it
    /// before the step runs) and its password on stdin (secrets of the step).
    fn with_private_key(&self, command: &str, key: &Key, password: &str) -> Step {
        let key_file = format!("{KEY_MOUNT}/cosign.key");
        self.run(&[], Some(&KeyFiles::planned()))
            .args([command, "--key", &key_file])
            .stdin(password.to_owned())
            .secret(&key.pem)
            .secret(password)
    }

    /// cosign `command` with a public key.
    fn with_public_key(&self, command: &str, key: &Key) -> Step {
        let key_ref = format!("env://{PUBLIC_KEY_VAR}");
        self.run(&[PUBLIC_KEY_VAR], None)
            .args([command, "--key", &key_ref])
            .env(PUBLIC_KEY_VAR, &key.pem)
    }

    /// The flag that leaves the transparency log out, when it is left out: `flag` is the
    /// command's own spelling of it.
    fn offline(&self, step: Step, flag: &str) -> Step {
        if self.transparency_log { step } else { step.arg(flag) }
    }

    /// `cosign sign` of `target` (`REPO@sha256:...`): one signature, stored beside the image.
    pub fn sign_step(&self, key: &Key, password: &str, target: &str) -> Step {
        let step = self.with_private_key("sign", key, password).arg("--yes");
        self.offline(step, "--tlog-upload=false").arg(target)
    }

    /// `cosign verify` of `target` with a public key: its exit status is the answer.
    pub fn verify_step(&self, key: &Key, target: &str) -> Step {
        let step = self.with_public_key("verify", key).args(["--output", "json"]);
        self.offline(step, "--insecure-ignore-tlog=true").arg(target)
    }

    /// `cosign sign-blob` of the blob [`KeyFiles`] writes beside the key (stdin carries the
    /// password): the signature, base64, on stdout.
    pub fn sign_blob_step(&self, key: &Key, password: &str) -> Step {
        let step = self.with_private_key("sign-blob", key, password).arg("--yes");
        self.offline(step, "--tlog-upload=false").arg(format!("{KEY_MOUNT}/blob"))
    }

    /// `cosign verify-blob` of `blob` (on stdin) against `signature` with a public key.
    pub fn verify_blob_step(&self, key: &Key, signature: &str, blob: &[u8]) -> Step {
        let step = self.with_public_key("verify-blob", key).args(["--signature", signature]);
        self.offline(step, "--insecure-ignore-tlog=true")
            .arg("-")
            .stdin_bytes(blob.to_vec())
            .quiet()
    }

    /// Whether `signature` is `key`'s over `blob`: `Err` with cosign's reason when not.
    pub fn verify_blob(
        &self,
        key: &Key,
        signature: &str,
        blob: &[u8],
    ) -> Result<Result<(), String>> {
        let step = self.verify_blob_step(key, signature, blob);
        let captured = step.capture()?;
        if captured.success() {
            return Ok(Ok(()));
        }
        Ok(Err(last_line(&captured.stderr).to_owned()))
    }

    /// Runs `step` with the registry's retries: `Ok(Err(reason))` when it failed for good.
    fn attempt(&self, what: &str, step: &Step) -> Result<Result<(), String>> {
        let outcome = oci::Registry::new(&self.root).run(what, step)?;
        Ok(outcome.map(drop).map_err(|failure| match failure {
            Failure::Absent { reason }
            | Failure::Transient { reason, .. }
            | Failure::Definite { reason, .. } => reason,
        }))
    }

    /// `cosign public-key` of a private key: what verifies its signatures.
    pub fn public_key_step(&self, key: &Key, password: &str) -> Step {
        self.with_private_key("public-key", key, password).quiet()
    }

    pub fn public_key(&self, key: &Key, password: &str) -> Result<Key> {
        let step = self.public_key_step(key, password);
        let files = KeyFiles::write(key, None)?;
        let captured = step.capture();
        drop(files);
        let captured = captured?;
        if !captured.success() {
            bail!(
                "cannot read the signing key {}: {}: set {PASSWORD_VAR} to its password (empty \
                 for a key without one)",
                key.source,
                step.redact(last_line(&captured.stderr))
            );
        }
        Key::parse(captured.stdout, key.source.clone(), KeyKind::Public)
    }

    /// Signs `target`, retrying what fails transiently.
    pub fn sign(&self, key: &Key, password: &str, target: &str) -> Result<()> {
        let step = self.sign_step(key, password, target);
        let files = KeyFiles::write(key, None)?;
        let attempted = self.attempt(&format!("signing {target}"), &step);
        drop(files);
        match attempted? {
            Ok(()) => Ok(()),
            Err(reason) => bail!("cannot sign {target}: {reason}"),
        }
    }

    /// Whether `target` carries a signature that `key` verifies: `Err` with cosign's reason
    /// when it does not (a transient failure is retried first).
    pub fn verify(&self, key: &Key, target: &str) -> Result<Result<(), String>> {
        let step = self.verify_step(key, target).quiet();
        self.attempt(&format!("verifying {target}"), &step)
    }
}

/// The private key (and a blob to sign) written for one cosign step, in a directory of this
/// run only we may enter; removed, with everything in it, when dropped.
struct KeyFiles {
    _dir: RunDir,
}

impl KeyFiles {
    fn parent() -> Utf8PathBuf {
        Utf8PathBuf::try_from(std::env::temp_dir()).unwrap_or_else(|_| Utf8PathBuf::from("/tmp"))
    }

    /// Where [`KeyFiles::write`] puts them, for plans.
    fn planned() -> Utf8PathBuf {
        RunDir::planned(&KeyFiles::parent(), KEY_DIR_PREFIX)
    }

    fn write(key: &Key, blob: Option<&[u8]>) -> Result<KeyFiles> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = RunDir::new(&KeyFiles::parent(), KEY_DIR_PREFIX)?;
        let write = |name: &str, bytes: &[u8]| -> Result<()> {
            let path = dir.path().join(name);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("cannot create {path}"))?;
            file.write_all(bytes).with_context(|| format!("cannot write {path}"))
        };
        write("cosign.key", key.pem.as_bytes())?;
        if let Some(blob) = blob {
            write("blob", blob)?;
        }
        Ok(KeyFiles { _dir: dir })
    }
}

fn last_line(text: &str) -> &str {
    text.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no output")
}

impl DockerConfig {
    /// The docker client's config file ([`crate::oci::docker_config_file`]), when it exists.
    fn find() -> Option<DockerConfig> {
        use std::os::unix::fs::MetadataExt;
        let file = crate::oci::docker_config_file()?;
        let metadata = std::fs::metadata(&file).ok()?;
        Some(DockerConfig { file, owner: (metadata.uid(), metadata.gid()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIVATE: &str = "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nAAAA\n-----END \
                           ENCRYPTED SIGSTORE PRIVATE KEY-----\n";
    const PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nBBBB\n-----END PUBLIC KEY-----\n";

    fn cosign(transparency_log: bool) -> Cosign {
        Cosign {
            root: "/repo".into(),
            image: "memories/tools:0.4.2-abcdef0".into(),
            transparency_log,
            docker_config: None,
        }
    }

    #[test]
    fn key_sources_are_files_or_variables() {
        assert_eq!("cosign.key".parse(), Ok(KeySource::File("cosign.key".into())));
        assert_eq!("env://SIGNING_KEY".parse(), Ok(KeySource::Env("SIGNING_KEY".into())));
        assert!("env://".parse::<KeySource>().unwrap_err().contains("env://NAME"));
        assert!("".parse::<KeySource>().is_err());
    }

    #[test]
    fn a_key_of_the_wrong_kind_is_refused_in_one_line() {
        let source = KeySource::File("k".into());
        let parse = |pem: &str, kind| Key::parse(pem.to_owned(), source.clone(), kind);
        assert!(parse(PRIVATE, KeyKind::Private).is_ok());
        assert!(parse(PUBLIC, KeyKind::Public).is_ok());
        let err = parse(PUBLIC, KeyKind::Private).unwrap_err().to_string();
        assert!(err.contains("is not a private key"), "{err}");
        let err = parse(PRIVATE, KeyKind::Public).unwrap_err().to_string();
        assert!(err.contains("is a private key: verify with the public key"), "{err}");
        let err = parse("hello", KeyKind::Public).unwrap_err().to_string();
        assert!(err.contains("is not a PEM key"), "{err}");
    }

    #[test]
    fn keys_and_passwords_never_reach_the_command_line() {
        let key = Key::parse(PRIVATE.into(), KeySource::Env("K".into()), KeyKind::Private).unwrap();
        let step = cosign(false).sign_step(&key, "hunter2", "r/server@sha256:abc");
        let argv = step.args.join(" ");
        assert!(!argv.contains("AAAA") && !argv.contains("hunter2"), "{argv}");
        assert!(step.env.is_empty(), "nothing secret in the container's environment");
        assert!(
            argv.contains(&format!("--volume {}:/run/cosign:ro", KeyFiles::planned())),
            "{argv}"
        );
        assert!(
            argv.ends_with(
                "cosign sign --key /run/cosign/cosign.key --yes --tlog-upload=false r/server@sha256:abc"
            ),
            "{argv}"
        );
        assert_eq!(step.stdin.as_deref(), Some("hunter2"), "the password goes on stdin");
        let shown = step.to_json().to_string();
        assert!(!shown.contains("AAAA") && !shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
    }

    #[test]
    fn a_signer_never_shows_its_key_or_password() {
        let key = Key::parse(PRIVATE.into(), KeySource::Env("K".into()), KeyKind::Private).unwrap();
        let signer = Signer {
            key,
            password: "hunter2".into(),
            tools: Cosign::tools_build(Utf8Path::new("/repo"), &Revision::example()),
            cosign: cosign(false),
        };
        let shown = format!("{signer:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("AAAA"), "{shown}");
    }

    #[test]
    fn the_transparency_log_is_off_unless_asked_for() {
        let key = Key::parse(PUBLIC.into(), KeySource::File("p".into()), KeyKind::Public).unwrap();
        let offline = cosign(false).verify_step(&key, "r/server:1").args.join(" ");
        assert!(offline.contains("--insecure-ignore-tlog=true"), "{offline}");
        let online = cosign(true).verify_step(&key, "r/server:1").args.join(" ");
        assert!(!online.contains("tlog"), "{online}");
        let private =
            Key::parse(PRIVATE.into(), KeySource::File("k".into()), KeyKind::Private).unwrap();
        let sign = cosign(true).sign_step(&private, "", "r/server@sha256:abc").args.join(" ");
        assert!(!sign.contains("tlog"), "{sign}");
    }
}
