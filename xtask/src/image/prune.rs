//! `cargo xtask images prune`: removes the images earlier revisions' builds left in the local
//! image store. Every build of a commit adds a set of images (`memories/NAME:<version>-<sha>`,
//! one per image), and with the containerd image store every listing of images, ours and the
//! engine's, slows with their number. The build cache keeps their layers, so a build of an
//! older commit is fast again.
//!
//! What goes: the tags of our images (those with the OCI title label every build of ours sets)
//! under one set of names (`memories/NAME` by default, `REG/NAME` with `--registry`) whose
//! revision label is not this checkout's commit, unless a container (running or not) uses the
//! image. Other tags of the same image stay, and the image with them. Images a run of ours
//! named (`memories/run-*/...`) are the reaper's (`cargo xtask reap`).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};
use camino::Utf8Path;
use serde_json::{Value, json};

use crate::image::version::Revision;
use crate::run::docker;
use crate::run::plan::{Captured, Plan, Step, Task};
use crate::run::term::count;

const TITLE: &str = "org.opencontainers.image.title";
const REVISION: &str = "org.opencontainers.image.revision";

/// What `images prune` is asked to do.
#[derive(Debug, Clone)]
pub struct PruneRequest {
    /// The names to prune under: `memories` (local names) or a `--registry`.
    pub registry: Option<String>,
    /// Also this checkout's commit's images.
    pub all: bool,
}

/// One image of ours in the store, with the tags it has under the names being pruned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub id: String,
    pub tags: Vec<String>,
    /// Its revision label (the commit it was built from), when it has one.
    pub revision: Option<String>,
}

/// Why an image stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// A container was made from it.
    InUse,
    /// It was built from this checkout's commit.
    ThisRevision,
}

impl Kept {
    fn as_str(self) -> &'static str {
        match self {
            Kept::InUse => "a container uses it",
            Kept::ThisRevision => "this checkout's commit",
        }
    }

    /// Its name in `--json`.
    fn key(self) -> &'static str {
        match self {
            Kept::InUse => "in_use",
            Kept::ThisRevision => "this_revision",
        }
    }
}

/// What a prune removes and keeps.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub remove: Vec<Stored>,
    pub keep: Vec<(Stored, Kept)>,
}

/// Whether `tag` (`repository:tag`) is named under `prefix` (`memories`, or a registry and
/// namespace): its repository is `PREFIX/NAME`, one path segment below it.
pub fn under(prefix: &str, tag: &str) -> bool {
    let repository = crate::oci::repository_of(tag);
    repository
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

/// Splits `stored` into what goes and what stays: an image a container uses stays, as does one
/// of `keep_revision` (this checkout's commit, unless `--all`).
pub fn select(
    stored: Vec<Stored>,
    keep_revision: Option<&str>,
    in_use: &BTreeSet<String>,
) -> Selection {
    let mut selection = Selection::default();
    for image in stored {
        if in_use.contains(&image.id) {
            selection.keep.push((image, Kept::InUse));
        } else if keep_revision.is_some() && image.revision.as_deref() == keep_revision {
            selection.keep.push((image, Kept::ThisRevision));
        } else {
            selection.remove.push(image);
        }
    }
    selection
}

/// Our images in the store with their tags under `prefix`, by id (those with no such tag are
/// left out).
fn stored(root: &Utf8Path, prefix: &str) -> Result<Vec<Stored>> {
    let listing = docker::cli(root)
        .args(["image", "ls", "--no-trunc", "--filter"])
        .arg(format!("label={TITLE}"))
        .args(["--format", "{{.ID}}\t{{.Repository}}:{{.Tag}}"])
        .quiet();
    let listed = docker::image_listing(&listing, Step::capture).context("cannot list images")?;
    let mut tags: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in listed.lines() {
        let Some((id, tag)) = line.split_once('\t') else { continue };
        if under(prefix, tag) {
            tags.entry(id.to_owned()).or_default().push(tag.to_owned());
        }
    }
    if tags.is_empty() {
        return Ok(Vec::new());
    }
    let format = format!("{{{{.Id}}}}\t{{{{index .Config.Labels \"{REVISION}\"}}}}");
    let inspect =
        docker::cli(root).args(["image", "inspect", "--format", &format]).args(tags.keys()).quiet();
    // An image removed since the listing makes inspect fail for it alone: the others are still
    // on its stdout, and the one gone needs no pruning.
    let inspected = inspect.capture().context("cannot inspect images")?;
    let revisions: BTreeMap<&str, &str> =
        inspected.stdout.lines().filter_map(|line| line.split_once('\t')).collect();
    Ok(tags
        .into_iter()
        .filter_map(|(id, mut tags)| {
            let revision = *revisions.get(id.as_str())?;
            tags.sort();
            let revision =
                (!revision.is_empty() && revision != "<no value>").then(|| revision.to_owned());
            Some(Stored { id, tags, revision })
        })
        .collect())
}

/// The ids of the images containers (running or not) were made from.
fn in_use(root: &Utf8Path) -> Result<BTreeSet<String>> {
    let containers = docker::cli(root)
        .args(["container", "ls", "--all", "--quiet", "--no-trunc"])
        .quiet()
        .read()
        .context("cannot list containers")?;
    let ids: Vec<&str> = containers.lines().filter(|l| !l.is_empty()).collect();
    if ids.is_empty() {
        return Ok(BTreeSet::new());
    }
    // A container removed since the listing fails inspect for it alone.
    let inspected = docker::cli(root)
        .args(["container", "inspect", "--format", "{{.Image}}"])
        .args(ids)
        .quiet()
        .capture()
        .context("cannot inspect containers")?;
    Ok(inspected.stdout.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect())
}

/// `cargo xtask images prune`.
pub struct PruneTask<'a> {
    root: &'a Utf8Path,
    request: PruneRequest,
}

pub fn task(root: &Utf8Path, request: PruneRequest) -> PruneTask<'_> {
    PruneTask { root, request }
}

impl PruneTask<'_> {
    fn prefix(&self) -> &str {
        self.request.registry.as_deref().unwrap_or("memories")
    }

    fn selection(&self) -> Result<Selection> {
        let keep = if self.request.all {
            None
        } else {
            let revision = Revision::read(self.root)
                .context("cannot tell this checkout's commit, whose images stay (or pass --all)")?;
            Some(revision.commit)
        };
        let stored = stored(self.root, self.prefix())?;
        let in_use = if stored.is_empty() { BTreeSet::new() } else { in_use(self.root)? };
        Ok(select(stored, keep.as_deref(), &in_use))
    }

    fn removal(&self, image: &Stored) -> Step {
        docker::cli(self.root).args(["image", "rm"]).args(&image.tags)
    }
}

/// What one `docker image rm` of an image's tags did, from its answer.
#[derive(Debug, PartialEq, Eq)]
enum Removal {
    Removed,
    /// A container was made from it since the listing: the engine refused to remove it, after
    /// untagging these of its tags (it takes them one by one, and only the last tag of an image
    /// in use is refused).
    InUse {
        untagged: Vec<String>,
    },
    /// Anything else, in the engine's words.
    Failed(String),
}

/// Reads `answer`, the engine's to `docker image rm` of `image`'s tags. An `Untagged:` line
/// counts only for a tag of `image`: the engine's other lines are not taken as ours.
fn outcome(image: &Stored, answer: &Captured) -> Removal {
    if answer.success() {
        return Removal::Removed;
    }
    if answer.timed_out {
        return Removal::Failed("the engine did not answer in time".into());
    }
    if !answer.stderr.contains("conflict") {
        let said = answer.stderr.trim();
        let why = if said.is_empty() { format!("{}", answer.status) } else { said.to_owned() };
        return Removal::Failed(why);
    }
    let said: BTreeSet<&str> =
        answer.stdout.lines().filter_map(|l| l.trim().strip_prefix("Untagged: ")).collect();
    let untagged = image.tags.iter().filter(|t| said.contains(t.as_str())).cloned().collect();
    Removal::InUse { untagged }
}

/// The `--json` report: `untagged` holds the tags removed from images the prune then had to
/// keep.
fn report(removed: &[Stored], kept: &[(Stored, Kept)], untagged: &[String]) -> Value {
    let image = |s: &Stored| json!({"id": s.id, "tags": s.tags, "revision": s.revision});
    json!({
        "removed": removed.iter().map(image).collect::<Vec<_>>(),
        "untagged": untagged,
        "kept": kept
            .iter()
            .map(|(s, why)| {
                let mut kept = image(s);
                kept["why"] = why.key().into();
                kept
            })
            .collect::<Vec<_>>(),
    })
}

impl Task for PruneTask<'_> {
    /// What would go and what would stay, read from the engine (its removals as steps).
    fn plan(&self) -> Result<Plan> {
        let selection = match self.selection() {
            Ok(selection) => selection,
            Err(err) => {
                let note = format!("cannot read the image store, and pruning would fail: {err:#}");
                return Ok(Plan::new("images prune").note(note));
            }
        };
        let mut plan = Plan::new("images prune")
            .steps(selection.remove.iter().map(|image| self.removal(image)))
            .fact("registry", self.prefix().into())
            .fact("images", report(&selection.remove, &selection.keep, &[]));
        for (image, why) in &selection.keep {
            plan = plan.note(format!("would keep {} ({})", image.tags.join(" "), why.as_str()));
        }
        if selection.remove.is_empty() {
            plan = plan.note(format!("no image under {}/ to remove", self.prefix()));
        }
        Ok(plan)
    }

    fn execute(self: Box<Self>, json: bool) -> Result<()> {
        let Selection { remove, mut keep } = self.selection()?;
        let (mut removed, mut untagged) = (Vec::new(), Vec::new());
        for image in remove {
            let answer = self.removal(&image).capture()?;
            match outcome(&image, &answer) {
                Removal::Removed => removed.push(image),
                Removal::InUse { untagged: gone } => {
                    let left = image.tags.iter().filter(|t| !gone.contains(t)).cloned().collect();
                    let image = Stored { tags: left, ..image };
                    let first = if gone.is_empty() {
                        String::new()
                    } else {
                        format!(" (the engine untagged {} first)", gone.join(" "))
                    };
                    say!("kept {}: {}{first}", image.tags.join(" "), Kept::InUse.as_str());
                    untagged.extend(gone);
                    keep.push((image, Kept::InUse));
                }
                Removal::Failed(why) => bail!(
                    "cannot remove {}: {why} (removed {} before it)",
                    image.tags.join(" "),
                    count(removed.len(), "image")
                ),
            }
        }
        let tags = removed.iter().map(|i| i.tags.len()).sum::<usize>() + untagged.len();
        say!(
            "removed {} ({}) under {}/; kept {} (this checkout's commit, or in use); the build \
             cache keeps their layers",
            count(removed.len(), "image"),
            count(tags, "tag"),
            self.prefix(),
            count(keep.len(), "image"),
        );
        if json {
            out!("{:#}", report(&removed, &keep, &untagged));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, revision: Option<&str>) -> Stored {
        Stored {
            id: id.into(),
            tags: vec![format!("memories/server:{id}")],
            revision: revision.map(str::to_owned),
        }
    }

    #[test]
    fn only_tags_one_segment_below_the_prefix_are_pruned() {
        assert!(under("memories", "memories/server:0.1.0-abc1234"));
        assert!(under("127.0.0.1:5000/acme", "127.0.0.1:5000/acme/db:sha-abc1234"));
        assert!(!under("memories", "memories/run-abc-1-2/sbom:0.1.0"), "a run's: the reaper's");
        assert!(!under("memories", "memoriesx/server:1"));
        assert!(!under("memories", "localhost/memories/server:1"));
        assert!(!under("127.0.0.1:5000/acme", "127.0.0.1:5000/acme:1"), "no name below it");
    }

    #[test]
    fn older_revisions_go_unless_a_container_uses_them() {
        let head = "1976e35ad3afd16e1fc60c564f2b688729341b3e";
        let stored = vec![
            image("a", Some(head)),
            image("b", Some("0000000000000000000000000000000000000000")),
            image("c", Some("0000000000000000000000000000000000000000")),
            image("d", None),
        ];
        let in_use = BTreeSet::from(["c".to_owned()]);
        let selection = select(stored.clone(), Some(head), &in_use);
        assert_eq!(selection.remove, [stored[1].clone(), stored[3].clone()]);
        assert_eq!(
            selection.keep,
            [(stored[0].clone(), Kept::ThisRevision), (stored[2].clone(), Kept::InUse)]
        );
        let all = select(stored.clone(), None, &in_use);
        assert_eq!(all.remove.len(), 3, "--all keeps only what is in use");
        assert_eq!(all.keep, [(stored[2].clone(), Kept::InUse)]);
    }

    fn answer(code: i32, stdout: &str, stderr: &str) -> Captured {
        use std::os::unix::process::ExitStatusExt as _;
        Captured {
            status: std::process::ExitStatus::from_raw(code << 8),
            stdout: stdout.into(),
            stderr: stderr.into(),
            timed_out: false,
        }
    }

    #[test]
    fn a_removal_refused_for_a_container_made_since_the_listing_keeps_what_it_did_not_untag() {
        let image = Stored {
            id: "sha256:1".into(),
            tags: vec!["memories/server:a".into(), "memories/server:b".into()],
            revision: Some("old".into()),
        };
        let done = "Untagged: memories/server:a\nUntagged: memories/server:b\nDeleted: sha256:1\n";
        assert_eq!(outcome(&image, &answer(0, done, "")), Removal::Removed);
        // The engine's own words, when a container uses the image its last tag names.
        let refused = "Error response from daemon: conflict: unable to delete memories/server:b \
                       (must be forced) - container 39c9 is using its referenced image 1";
        assert_eq!(
            outcome(&image, &answer(1, "Untagged: memories/server:a\n", refused)),
            Removal::InUse { untagged: vec!["memories/server:a".into()] }
        );
        // A line naming a tag that is not the image's is not taken as untagging it.
        assert_eq!(
            outcome(&image, &answer(1, "Untagged: memories/db:a\nUntagged: junk\n", refused)),
            Removal::InUse { untagged: Vec::new() }
        );
        let gone = "Error response from daemon: No such image: memories/server:a";
        assert_eq!(outcome(&image, &answer(1, "", gone)), Removal::Failed(gone.into()));
        let killed = Captured { timed_out: true, ..answer(0, done, "") };
        let late = Removal::Failed("the engine did not answer in time".into());
        assert_eq!(outcome(&image, &killed), late);
        assert_eq!(outcome(&image, &answer(1, "", "")), Removal::Failed("exit status: 1".into()));
    }
}
