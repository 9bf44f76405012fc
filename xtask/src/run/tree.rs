//! Content fingerprints of parts of the working tree: every file under some paths (names,
//! executable bits, link targets and contents, in order), without what never matters to a
//! build or a test (build output, VCS metadata, Python's caches). What decides whether a build
//! can be skipped (`crate::image`) and whether a test tier must run again
//! (`crate::tasks::changed`).

use anyhow::{Context, Result};
use camino::Utf8Path;
use sha2::{Digest as _, Sha256};

/// Names whose contents never count: no build context holds them (`.dockerignore`) and no
/// test reads them.
const NEVER_COUNTED: [&str; 7] =
    ["target", ".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"];

/// Adds every file under each of `paths` (relative to `root`; a missing one adds nothing) to
/// `hasher`.
pub fn hash_paths<'a>(
    hasher: &mut Sha256,
    root: &Utf8Path,
    paths: impl IntoIterator<Item = &'a str>,
) -> Result<()> {
    for path in paths {
        hash_tree(hasher, root, &root.join(path))?;
    }
    Ok(())
}

/// The fingerprint of every file under `paths`, as hex.
pub fn fingerprint<'a>(
    root: &Utf8Path,
    paths: impl IntoIterator<Item = &'a str>,
) -> Result<String> {
    let mut hasher = Sha256::new();
    hash_paths(&mut hasher, root, paths)?;
    Ok(hex(hasher))
}

/// A finished hash as lowercase hex.
pub fn hex(hasher: Sha256) -> String {
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_tree(hasher: &mut Sha256, root: &Utf8Path, path: &Utf8Path) -> Result<()> {
    let metadata = match path.symlink_metadata() {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("cannot read {path}")),
    };
    let name = path.file_name().unwrap_or_default();
    if NEVER_COUNTED.contains(&name) || name.ends_with(".pyc") {
        return Ok(());
    }
    hasher.update(path.strip_prefix(root).unwrap_or(path).as_str().as_bytes());
    hasher.update(b"\0");
    if metadata.is_dir() {
        let mut children: Vec<_> = path
            .read_dir_utf8()
            .with_context(|| format!("cannot read {path}"))?
            .map(|entry| entry.map(|e| e.path().to_owned()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("cannot read {path}"))?;
        children.sort();
        for child in children {
            hash_tree(hasher, root, &child)?;
        }
    } else if metadata.is_symlink() {
        let target = path.read_link_utf8().with_context(|| format!("cannot read {path}"))?;
        hasher.update(target.as_str().as_bytes());
    } else {
        use std::os::unix::fs::PermissionsExt;
        hasher.update([u8::from(metadata.permissions().mode() & 0o111 != 0)]);
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_follows_contents_names_and_modes_but_not_caches() {
        let root = camino::Utf8PathBuf::try_from(std::env::temp_dir())
            .unwrap()
            .join(format!("tree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f.py"), "x = 1").unwrap();
        let first = fingerprint(&root, ["a"]).unwrap();
        assert_eq!(
            fingerprint(&root, ["a", "missing"]).unwrap(),
            first,
            "a missing path adds nothing"
        );
        std::fs::create_dir_all(root.join("a/__pycache__")).unwrap();
        std::fs::write(root.join("a/__pycache__/f.pyc"), "code").unwrap();
        std::fs::write(root.join("a/b/g.pyc"), "code").unwrap();
        assert_eq!(fingerprint(&root, ["a"]).unwrap(), first, "caches do not count");
        std::fs::write(root.join("a/b/f.py"), "x = 2").unwrap();
        let edited = fingerprint(&root, ["a"]).unwrap();
        assert_ne!(edited, first, "contents count");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("a/b/f.py"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        assert_ne!(fingerprint(&root, ["a"]).unwrap(), edited, "the executable bit counts");
        std::fs::rename(root.join("a/b/f.py"), root.join("a/b/h.py")).unwrap();
        assert_ne!(fingerprint(&root, ["a"]).unwrap(), edited, "names count");
        let _ = std::fs::remove_dir_all(&root);
    }
}
