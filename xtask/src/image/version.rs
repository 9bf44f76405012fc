//! The release identity: the app version from `app/pyproject.toml`, the git revision, and the
//! image tags and labels derived from them.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Context, Result, bail};
use camino::Utf8Path;

use crate::image::catalogue::ImageName;
use crate::run::plan::Step;

pub const PYPROJECT: &str = "app/pyproject.toml";

/// A PEP 440 release `X.Y.Z` with an optional pre-, post- or dev-release suffix
/// (`1.2.0rc1`, `1.2.0.post1`); only forms that are also valid image tags are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppVersion {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    pub suffix: String,
    /// The same version as PEP 440 reads it: for ordering and for what counts as a
    /// pre-release.
    pub pep440: pep440_rs::Version,
}

impl AppVersion {
    pub fn parse(raw: &str) -> Result<AppVersion> {
        let form = "use X.Y.Z with an optional suffix such as rc1, .post1 or .dev1";
        if let Some((_, local)) = raw.split_once('+') {
            bail!(
                "version `{raw}` has a local part `+{local}`, which cannot be an image tag: {form}"
            );
        }
        let mut rest = raw;
        let mut numbers = [0u64; 3];
        for (i, number) in numbers.iter_mut().enumerate() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                bail!("version `{raw}` is not X.Y.Z: {form}");
            }
            let (head, tail) = rest.split_at(digits);
            if head.len() > 1 && head.starts_with('0') {
                bail!("version `{raw}` has a leading zero in `{head}`: {form}");
            }
            *number =
                head.parse().with_context(|| format!("version `{raw}`: `{head}` is too large"))?;
            rest = tail;
            if i < 2 {
                rest = rest
                    .strip_prefix('.')
                    .with_context(|| format!("version `{raw}` is not X.Y.Z: {form}"))?;
            }
        }
        let suffix_ok = rest.is_empty()
            || (rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '.' || c == '-')
                && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
                && rest.len() <= 64);
        if !suffix_ok {
            bail!("version `{raw}` has a suffix `{rest}` that cannot be an image tag: {form}");
        }
        let pep440: pep440_rs::Version = raw.parse().map_err(|e| {
            anyhow::anyhow!("version `{raw}` is not a PEP 440 version ({e}): {form}")
        })?;
        Ok(AppVersion {
            major: numbers[0],
            minor: numbers[1],
            patch: numbers[2],
            suffix: rest.to_owned(),
            pep440,
        })
    }

    /// A pre-release as PEP 440 has it: an alpha, beta or release candidate, or a development
    /// release (`rc1`, `a2`, `.dev3`, `-beta.1`, `.post1.dev1`); a post-release (`.post1`) is
    /// not one.
    pub fn is_prerelease(&self) -> bool {
        self.pep440.any_prerelease()
    }
}

impl fmt::Display for AppVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}{}", self.major, self.minor, self.patch, self.suffix)
    }
}

/// Reads `project.version` from a pyproject.toml text.
pub fn version_from_pyproject(text: &str) -> Result<AppVersion> {
    let table: toml::Table = text.parse().context("not valid TOML")?;
    let version = table
        .get("project")
        .and_then(|p| p.get("version"))
        .context("no `version` in its [project] table: add e.g. version = \"0.1.0\"")?;
    let version = version.as_str().context("`project.version` is not a string")?;
    AppVersion::parse(version)
}

/// What a build is made from: the app version and the git revision of the work tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    pub version: AppVersion,
    /// The full commit hash.
    pub commit: String,
    /// Uncommitted changes (tracked or untracked) in the work tree.
    pub dirty: bool,
    /// The commit time (or `SOURCE_DATE_EPOCH` when set) as a unix time: BuildKit's
    /// `SOURCE_DATE_EPOCH`, which every timestamp in a released image is clamped to.
    pub epoch: i64,
    /// The same time, RFC 3339 in UTC: the images' `created` label.
    pub created: String,
    /// Each image's own epoch: the time of the newest commit that touched its inputs
    /// ([`ImageName::inputs`]), so an image whose inputs did not change keeps its timestamps,
    /// and so its layers, across commits. Empty when `SOURCE_DATE_EPOCH` is set (it dates
    /// every image) and in tests; an image missing here has [`Revision::epoch`].
    pub epochs: BTreeMap<ImageName, i64>,
    /// Where the source lives (the `origin` remote without credentials), if known.
    pub source: Option<String>,
}

impl Revision {
    pub fn read(root: &Utf8Path) -> Result<Revision> {
        let path = root.join(PYPROJECT);
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {PYPROJECT}"))?;
        let version = version_from_pyproject(&text).with_context(|| format!("in {PYPROJECT}"))?;
        let git_error =
            || "cannot read the git revision: run inside a git checkout with at least one commit";
        let git = |args: &[&str]| -> Result<String> {
            let step = Step::new("git", root).args(args.iter().copied()).quiet();
            Ok(step.capture()?.stdout_of(&step)?.trim().to_owned())
        };
        let commit = git(&["rev-parse", "--verify", "HEAD"]).with_context(git_error)?;
        let status = git(&["status", "--porcelain"]).with_context(git_error)?;
        let (epoch, epochs) = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(epoch) if !epoch.is_empty() => (epoch, BTreeMap::new()),
            _ => {
                let epoch = git(&["log", "-1", "--format=%ct"]).with_context(git_error)?;
                // One walk of the history that touched any image's inputs, newest first.
                let mut args = vec!["log", "--format=%x00%ct", "--name-only", "HEAD", "--"];
                args.extend(
                    ImageName::all()
                        .into_iter()
                        .flat_map(|i| i.inputs().iter().map(String::as_str)),
                );
                let log = git(&args).with_context(git_error)?;
                (epoch, image_epochs(&log))
            }
        };
        let epoch: i64 =
            epoch.trim().parse().with_context(|| format!("`{epoch}` is not a unix time"))?;
        let source = git(&["remote", "get-url", "origin"]).ok().map(|url| strip_credentials(&url));
        Ok(Revision {
            version,
            commit,
            dirty: !status.is_empty(),
            epoch,
            created: rfc3339_utc(epoch),
            epochs,
            source,
        })
    }

    /// The epoch `image` is built with: see [`Revision::epochs`].
    pub fn epoch_of(&self, image: ImageName) -> i64 {
        self.epochs.get(&image).copied().unwrap_or(self.epoch)
    }

    /// The short hash used in tags, with `-dirty` when the tree has uncommitted changes.
    pub fn short(&self) -> String {
        let short = &self.commit[..self.commit.len().min(7)];
        if self.dirty { format!("{short}-dirty") } else { short.to_owned() }
    }

    /// The tags every build gets: `<version>`, `<version>-<sha>` and `sha-<sha>`.
    pub fn build_tags(&self) -> Vec<String> {
        let short = self.short();
        vec![self.version.to_string(), format!("{}-{short}", self.version), format!("sha-{short}")]
    }

    /// The OCI labels of every image, `title` aside.
    pub fn labels(&self) -> Vec<(&'static str, String)> {
        let revision =
            if self.dirty { format!("{}-dirty", self.commit) } else { self.commit.clone() };
        vec![
            ("org.opencontainers.image.version", self.version.to_string()),
            ("org.opencontainers.image.revision", revision),
            ("org.opencontainers.image.created", self.created.clone()),
            (
                "org.opencontainers.image.source",
                self.source.clone().unwrap_or_else(|| "unknown".into()),
            ),
        ]
    }
}

/// Each image's epoch from `git log --format=%x00%ct --name-only` (newest first): the time of
/// the first commit that names a file under one of its inputs.
fn image_epochs(log: &str) -> BTreeMap<ImageName, i64> {
    let mut epochs = BTreeMap::new();
    for commit in log.split('\0').filter(|c| !c.trim().is_empty()) {
        let mut lines = commit.lines();
        let Some(Ok(time)) = lines.next().map(|t| t.trim().parse::<i64>()) else { continue };
        for file in lines.filter(|l| !l.is_empty()) {
            for image in ImageName::all() {
                let touched = image.inputs().iter().any(|input| {
                    file == *input
                        || file.strip_prefix(input).is_some_and(|rest| rest.starts_with('/'))
                });
                if touched {
                    epochs.entry(image).or_insert(time);
                }
            }
        }
    }
    epochs
}

fn strip_credentials(url: &str) -> String {
    let url = url.trim();
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
impl Revision {
    /// A clean revision of version 1.0.0, committed at 2020-01-01T00:00:00Z, for tests.
    pub fn example() -> Revision {
        Revision {
            version: AppVersion::parse("1.0.0").unwrap(),
            commit: "1234567890123456789012345678901234567890".into(),
            dirty: false,
            epoch: 1_577_836_800,
            created: "2020-01-01T00:00:00Z".into(),
            epochs: BTreeMap::new(),
            source: None,
        }
    }
}

/// Formats a unix time as `YYYY-MM-DDTHH:MM:SSZ` (days to civil date after H. Hinnant).
pub fn rfc3339_utc(epoch: i64) -> String {
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// `cargo xtask version`.
pub fn run(root: &Utf8Path, json: bool) -> Result<()> {
    let revision = Revision::read(root)?;
    if json {
        let value = serde_json::json!({
            "version": revision.version.to_string(),
            "prerelease": revision.version.is_prerelease(),
            "commit": revision.commit,
            "short": revision.short(),
            "dirty": revision.dirty,
            "created": revision.created,
            "tags": revision.build_tags(),
        });
        out!("{value:#}");
    } else {
        out!("version   {}", revision.version);
        out!("revision  {}", revision.short());
        out!("created   {}", revision.created);
        out!("tags      {}", revision.build_tags().join(" "));
    }
    Ok(())
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (as `docker logs --timestamps` prints) into
/// seconds since the unix epoch.
pub fn parse_rfc3339_utc(raw: &str) -> Option<f64> {
    let raw = raw.strip_suffix('Z')?;
    let (date, time) = raw.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (hour, minute) = (t.next()?.parse::<i64>().ok()?, t.next()?.parse::<i64>().ok()?);
    let second: f64 = t.next()?.parse().ok()?;
    // Days from civil (H. Hinnant), the inverse of `rfc3339_utc`.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hour * 3600 + minute * 60) as f64 + second)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(version: &str, dirty: bool) -> Revision {
        Revision {
            version: AppVersion::parse(version).unwrap(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            dirty,
            epoch: 0,
            epochs: BTreeMap::new(),
            created: rfc3339_utc(0),
            source: None,
        }
    }

    #[test]
    fn each_image_dates_from_the_newest_commit_that_touched_its_inputs() {
        let log = "\u{0}300\n\napp/src/memories/api.py\nREADME.md\n\
                   \u{0}200\n\ndocker/common/debs.sh\n\
                   \u{0}100\n\ndocker/db/init.sql\ndocker/dbx/other\n";
        let epochs = image_epochs(log);
        assert_eq!(epochs[&ImageName::SERVER], 300);
        assert_eq!(epochs[&ImageName::named("standalone")], 300);
        // docker/common is an input of the db, but docker/dbx is not.
        assert_eq!(epochs[&ImageName::DB], 200);
        assert_eq!(epochs[&ImageName::named("proxy")], 200);
        assert!(!epochs.contains_key(&ImageName::NODE), "no commit named docker/node");
        let revision = Revision { epochs, ..Revision::example() };
        assert_eq!(revision.epoch_of(ImageName::DB), 200);
        assert_eq!(revision.epoch_of(ImageName::NODE), revision.epoch);
    }

    #[test]
    fn versions_parse() {
        let v = AppVersion::parse("1.20.3").unwrap();
        assert_eq!((v.major, v.minor, v.patch, v.suffix.as_str()), (1, 20, 3, ""));
        assert!(!v.is_prerelease());
        assert!(AppVersion::parse("1.2.0rc1").unwrap().is_prerelease());
        assert!(AppVersion::parse("1.2.0.dev4").unwrap().is_prerelease());
        assert!(AppVersion::parse("1.2.0-beta.1").unwrap().is_prerelease());
        assert!(!AppVersion::parse("1.2.0.post1").unwrap().is_prerelease());
        assert!(AppVersion::parse("0.1.0.post1.dev1").unwrap().is_prerelease());
        let order = ["0.1.0.dev1", "0.1.0rc1", "0.1.0", "0.1.0.post1", "0.1.1", "0.2.0", "0.10.0"];
        let parsed: Vec<AppVersion> = order.iter().map(|v| AppVersion::parse(v).unwrap()).collect();
        assert!(parsed.windows(2).all(|w| w[0].pep440 < w[1].pep440), "PEP 440 order");
        assert_eq!(AppVersion::parse("1.2.0rc1").unwrap().to_string(), "1.2.0rc1");
    }

    #[test]
    fn malformed_versions_are_refused_with_the_reason() {
        let cases = [
            ("", "not X.Y.Z"),
            ("1.2", "not X.Y.Z"),
            ("v1.2.3", "not X.Y.Z"),
            ("1.02.3", "leading zero"),
            ("1.2.3+local", "local part"),
            ("1.2.3 rc1", "suffix"),
            ("1.2.3/x", "suffix"),
            ("1.2.3.foo", "not a PEP 440 version"),
            ("99999999999999999999.0.0", "too large"),
        ];
        for (raw, why) in cases {
            let err = format!("{:#}", AppVersion::parse(raw).unwrap_err());
            assert!(err.contains(why), "{raw:?}: {err}");
        }
    }

    #[test]
    fn pyproject_version() {
        let text = "[project]\nname = \"memories\"\nversion = \"0.3.1\"\n";
        assert_eq!(version_from_pyproject(text).unwrap().to_string(), "0.3.1");
        let missing =
            format!("{:#}", version_from_pyproject("[project]\nname = \"x\"\n").unwrap_err());
        assert!(missing.contains("no `version`"), "{missing}");
        let typed =
            format!("{:#}", version_from_pyproject("[project]\nversion = 1\n").unwrap_err());
        assert!(typed.contains("not a string"), "{typed}");
        let broken = format!("{:#}", version_from_pyproject("[project\n").unwrap_err());
        assert!(broken.contains("not valid TOML"), "{broken}");
    }

    #[test]
    fn tags_and_labels() {
        assert_eq!(
            revision("0.1.0", false).build_tags(),
            ["0.1.0", "0.1.0-0123456", "sha-0123456"]
        );
        assert_eq!(
            revision("0.1.0", true).build_tags(),
            ["0.1.0", "0.1.0-0123456-dirty", "sha-0123456-dirty"]
        );
        let labels = revision("2.0.0", true).labels();
        assert!(labels.contains(&("org.opencontainers.image.version", "2.0.0".into())));
        assert!(labels.contains(&(
            "org.opencontainers.image.revision",
            "0123456789abcdef0123456789abcdef01234567-dirty".into()
        )));
    }

    #[test]
    fn times_and_urls() {
        for epoch in [0, 951_782_400, 1_795_434_122, 4_102_444_800] {
            assert_eq!(parse_rfc3339_utc(&rfc3339_utc(epoch)), Some(epoch as f64));
        }
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:01.250000000Z"), Some(1.25));
        assert_eq!(parse_rfc3339_utc("yesterday"), None);
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_795_434_122), "2026-11-23T11:42:02Z");
        assert_eq!(
            strip_credentials("https://user:tok@example.com/a.git"),
            "https://example.com/a.git"
        );
        assert_eq!(strip_credentials("git@example.com:a.git"), "git@example.com:a.git");
    }
}
