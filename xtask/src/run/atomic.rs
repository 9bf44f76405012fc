//! Files replaced whole: written beside their final name, then renamed over it, so a reader (or
//! a task killed meanwhile) finds the old content or the new, never half of one. What a writer
//! killed between the two left (`.NAME.partial-PID` of a process that is gone) is removed by
//! the next write of that file.

use anyhow::{Context, Result};
use camino::Utf8Path;

/// Replaces `file` with `contents`, creating its directory if needed.
pub fn write(file: &Utf8Path, contents: &[u8]) -> Result<()> {
    let dir = file.parent().context("a file has a directory")?;
    let name = file.file_name().context("a file has a name")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir}"))?;
    remove_abandoned(dir, name);
    let partial = dir.join(format!(".{name}.partial-{}", std::process::id()));
    std::fs::write(&partial, contents).with_context(|| format!("cannot write {partial}"))?;
    std::fs::rename(&partial, file).with_context(|| format!("cannot write {file}"))
}

/// Removes the partial files of `name` whose writer is no longer running. A process that took
/// a dead writer's id keeps its file until it is gone too; an unreadable directory is left.
fn remove_abandoned(dir: &Utf8Path, name: &str) {
    let prefix = format!(".{name}.partial-");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(entry_name) = entry.file_name().into_string() else { continue };
        let Some(pid) = entry_name.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Utf8Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_file(dir.join(&entry_name));
        }
    }
}

#[cfg(test)]
mod tests {
    use camino::Utf8PathBuf;

    use super::*;

    #[test]
    fn a_write_replaces_the_file_whole_and_removes_what_dead_writers_left() {
        let dir = Utf8PathBuf::try_from(std::env::temp_dir())
            .unwrap()
            .join(format!("xtask-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file = dir.join("green.json");
        write(&file, b"one").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "one");

        // A writer killed between write and rename: an id no process can have (Linux's
        // process ids stay below 2^22).
        let dead = u32::MAX;
        let abandoned = dir.join(format!(".green.json.partial-{dead}"));
        std::fs::write(&abandoned, b"half").unwrap();
        // A writer still running (init never exits), and another file's partial.
        let running = dir.join(".green.json.partial-1");
        std::fs::write(&running, b"busy").unwrap();
        let other = dir.join(format!(".other.json.partial-{dead}"));
        std::fs::write(&other, b"not ours").unwrap();

        write(&file, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "two");
        assert!(!abandoned.exists(), "a dead writer's partial is removed");
        assert!(running.exists(), "a running writer's partial is left");
        assert!(other.exists(), "another file's partial is left to its own writes");
        let left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(&format!("partial-{}", std::process::id())))
            .collect();
        assert!(left.is_empty(), "this write left no partial: {left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
