//! The images of ours, as data: `docker/images.toml`, read once per process from the
//! repository root. An [`ImageName`] is a name that file declares; everything else about an
//! image (its Dockerfile, target, inputs, whether it is released) is looked up there, so an
//! image added to the file is built, released and bundled with no change here.

use std::fmt;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use camino::Utf8Path;

/// The catalogue's file, from the repository root.
pub const FILE: &str = "docker/images.toml";

/// One image of ours, by its name in the catalogue. Ordered as the catalogue lists them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageName(&'static str);

/// What the catalogue says about one image.
#[derive(Debug)]
pub struct Entry {
    pub name: &'static str,
    pub about: String,
    pub dockerfile: String,
    pub target: String,
    pub inputs: Vec<String>,
    pub release: bool,
    /// Built for the build machine's platform only, whatever a task asks for.
    pub build_platform_only: bool,
}

/// Every image, in the catalogue's order.
pub struct Catalogue {
    entries: Vec<Entry>,
}

static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();

impl ImageName {
    /// The images xtask runs for a purpose of its own: the catalogue must declare them.
    pub const SERVER: ImageName = ImageName("server");
    pub const DB: ImageName = ImageName("db");
    pub const REGISTRY: ImageName = ImageName("registry");
    pub const TOOLS: ImageName = ImageName("tools");
    pub const SBOM: ImageName = ImageName("sbom");
    pub const NODE: ImageName = ImageName("node");
    /// The names above, which a catalogue without one of them is refused for.
    const ROLES: [ImageName; 6] = [
        ImageName::SERVER,
        ImageName::DB,
        ImageName::REGISTRY,
        ImageName::TOOLS,
        ImageName::SBOM,
        ImageName::NODE,
    ];

    /// The image the catalogue names `name`.
    pub fn parse(name: &str) -> Result<ImageName, String> {
        let catalogue = catalogue();
        match catalogue.entries.iter().find(|e| e.name == name) {
            Some(entry) => Ok(ImageName(entry.name)),
            None => Err(format!(
                "`{name}` is not an image of ours: {} declares {}",
                FILE,
                catalogue.entries.iter().map(|e| e.name).collect::<Vec<_>>().join(", ")
            )),
        }
    }

    /// The image named `name`, which must be declared (for tests and fixed names).
    pub fn named(name: &str) -> ImageName {
        ImageName::parse(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The released images, in order: what `build`, `release` and `images save` take when
    /// none is named.
    pub fn released() -> Vec<ImageName> {
        catalogue().entries.iter().filter(|e| e.release).map(|e| ImageName(e.name)).collect()
    }

    /// Every image, in order.
    pub fn all() -> Vec<ImageName> {
        catalogue().entries.iter().map(|e| ImageName(e.name)).collect()
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }

    pub fn entry(self) -> &'static Entry {
        catalogue()
            .entries
            .iter()
            .find(|e| e.name == self.0)
            .unwrap_or_else(|| panic!("{FILE} declares no image {}", self.0))
    }

    /// The paths of the repository the image copies (see the catalogue's `inputs`).
    pub fn inputs(self) -> &'static [String] {
        &self.entry().inputs
    }

    fn position(self) -> usize {
        catalogue().entries.iter().position(|e| e.name == self.0).unwrap_or(usize::MAX)
    }
}

impl PartialOrd for ImageName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ImageName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.position(), self.0).cmp(&(other.position(), other.0))
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Debug for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// The catalogue of the repository root. `main` loads it with [`load`] before anything else,
/// so a broken file is reported there, in one line, before any task starts; read here on
/// first use only where nothing loaded it (unit tests), where a broken file is a panic (never
/// an exit, which would skip what a task cleans up).
pub fn catalogue() -> &'static Catalogue {
    CATALOGUE.get_or_init(|| {
        let root = crate::project_root();
        Catalogue::read(&root).unwrap_or_else(|e| panic!("{e:#} (main loads the catalogue first)"))
    })
}

/// Reads the catalogue of `root` now; an error names the file and what is wrong.
pub fn load(root: &Utf8Path) -> Result<()> {
    if CATALOGUE.get().is_none() {
        let read = Catalogue::read(root)?;
        let _ = CATALOGUE.set(read);
    }
    Ok(())
}

impl Catalogue {
    fn read(root: &Utf8Path) -> Result<Catalogue> {
        let path = root.join(FILE);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        Catalogue::parse(&text).with_context(|| format!("{FILE} is not a valid catalogue"))
    }

    fn parse(text: &str) -> Result<Catalogue> {
        let table: toml::Table = text.parse().context("not valid TOML")?;
        let Some(images) = table.get("image").and_then(toml::Value::as_array) else {
            bail!("it declares no [[image]]");
        };
        let mut entries: Vec<Entry> = Vec::new();
        for (i, image) in images.iter().enumerate() {
            let entry = entry(image).with_context(|| format!("image {} of the file", i + 1))?;
            if entries.iter().any(|e| e.name == entry.name) {
                bail!("image {} is declared twice", entry.name);
            }
            entries.push(entry);
        }
        for role in ImageName::ROLES {
            if !entries.iter().any(|e| e.name == role.0) {
                bail!("it declares no image {}, which xtask runs itself", role.0);
            }
        }
        Ok(Catalogue { entries })
    }
}

/// One `[[image]]` table, every key checked.
fn entry(value: &toml::Value) -> Result<Entry> {
    let table = value.as_table().context("not a table")?;
    let text = |key: &str| -> Result<String> {
        let value = table.get(key).with_context(|| format!("it has no `{key}`"))?;
        let text = value.as_str().with_context(|| format!("`{key}` is not a string"))?;
        if text.trim().is_empty() {
            bail!("`{key}` is empty");
        }
        Ok(text.to_owned())
    };
    for key in table.keys() {
        if !["name", "about", "dockerfile", "target", "inputs", "release", "platforms"]
            .contains(&key.as_str())
        {
            bail!("unknown key `{key}`");
        }
    }
    let name = text("name")?;
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        bail!("name {name:?} is not a lowercase image name (letters, digits and `-`)");
    }
    let inputs = table.get("inputs").and_then(toml::Value::as_array).with_context(|| {
        format!("image {name}: `inputs` is not a list of the repository paths it copies")
    })?;
    let inputs = inputs
        .iter()
        .map(|i| i.as_str().map(str::to_owned).context("an input is not a string"))
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("image {name}"))?;
    let release = table.get("release").and_then(toml::Value::as_bool);
    let release =
        release.with_context(|| format!("image {name}: `release` is not true or false"))?;
    let build_platform_only = match table.get("platforms").map(toml::Value::as_str) {
        None | Some(Some("requested")) => false,
        Some(Some("build")) => true,
        Some(_) => bail!("image {name}: `platforms` is \"requested\" or \"build\""),
    };
    if build_platform_only && release {
        bail!(
            "image {name}: a release is for every platform, so it cannot be `platforms = \"build\"`"
        );
    }
    let name: &'static str = Box::leak(name.into_boxed_str());
    Ok(Entry {
        name,
        about: text("about").with_context(|| format!("image {name}"))?,
        dockerfile: text("dockerfile").with_context(|| format!("image {name}"))?,
        target: text("target").with_context(|| format!("image {name}"))?,
        inputs,
        release,
        build_platform_only,
    })
}

/// Parses an image name on the command line against the catalogue, listing every image in
/// `--help`.
#[derive(Clone)]
pub struct ImageParser;

impl clap::builder::TypedValueParser for ImageParser {
    type Value = ImageName;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<ImageName, clap::Error> {
        let name = value.to_string_lossy();
        ImageName::parse(&name)
            .map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("{e}\n")))
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        let entries = &catalogue().entries;
        Some(Box::new(
            entries.iter().map(|e| clap::builder::PossibleValue::new(e.name).help(e.about.clone())),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> String {
        format!("{:#}", Catalogue::parse(text).err().expect("refused"))
    }

    #[test]
    fn the_repository_catalogue_declares_every_image_once_in_order() {
        let names: Vec<&str> = ImageName::all().iter().map(|i| i.as_str()).collect();
        assert_eq!(
            names[..7],
            ["server", "standalone", "db", "redis", "proxy", "prometheus", "otlp"]
        );
        let released: Vec<&str> = ImageName::released().iter().map(|i| i.as_str()).collect();
        assert_eq!(
            released,
            ["server", "standalone", "db", "redis", "proxy", "prometheus", "otlp"]
        );
        assert!(ImageName::SERVER < ImageName::DB && ImageName::DB < ImageName::NODE);
        assert_eq!(ImageName::named("proxy").entry().target, "proxy");
        let unknown = ImageName::parse("nginx").unwrap_err();
        assert!(
            unknown.contains("not an image of ours") && unknown.contains("server, "),
            "{unknown}"
        );
    }

    /// Each image's Dockerfile exists and has its target stage, its inputs exist, and every
    /// Dockerfile under docker/ is some image's.
    #[test]
    fn the_catalogue_matches_the_repository() {
        let root = crate::project_root();
        let mut declared = std::collections::BTreeSet::new();
        for image in ImageName::all() {
            let entry = image.entry();
            let text = std::fs::read_to_string(root.join(&entry.dockerfile))
                .unwrap_or_else(|e| panic!("{image}: {}: {e}", entry.dockerfile));
            let stage = format!(" as {}", entry.target).to_ascii_lowercase();
            let has_stage = text.lines().any(|l| {
                let l = l.trim().to_ascii_lowercase();
                l.starts_with("from ") && l.ends_with(&stage)
            });
            assert!(has_stage, "{image}: {} has no stage {}", entry.dockerfile, entry.target);
            for input in &entry.inputs {
                assert!(root.join(input).exists(), "{image}: input {input} does not exist");
            }
            declared.insert(entry.dockerfile.clone());
        }
        for dir in std::fs::read_dir(root.join("docker")).unwrap() {
            let dockerfile = dir.unwrap().path().join("Dockerfile");
            if dockerfile.is_file() {
                let relative = dockerfile.strip_prefix(&root).unwrap().to_str().unwrap().to_owned();
                assert!(
                    declared.contains(&relative),
                    "{relative} is no image's: declare it in {FILE}"
                );
            }
        }
    }

    #[test]
    fn a_bad_catalogue_says_what_is_wrong() {
        let good = std::fs::read_to_string(crate::project_root().join(FILE)).unwrap();
        assert!(Catalogue::parse(&good).is_ok());
        assert!(refused("[x]\n").contains("declares no [[image]]"));
        let twice = format!(
            "{good}\n[[image]]\nname = \"db\"\nabout = \"x\"\ndockerfile = \"d\"\ntarget = \"t\"\ninputs = []\nrelease = false\n"
        );
        assert!(refused(&twice).contains("image db is declared twice"), "{}", refused(&twice));
        let typo = good.replacen("release = true", "relase = true", 1);
        assert!(refused(&typo).contains("unknown key `relase`"), "{}", refused(&typo));
        let no_tools = good.replace("name = \"tools\"", "name = \"toolbox\"");
        assert!(refused(&no_tools).contains("declares no image tools"), "{}", refused(&no_tools));
        let upper = good.replacen("name = \"server\"", "name = \"Server\"", 1);
        assert!(refused(&upper).contains("is not a lowercase image name"), "{}", refused(&upper));
    }
}
