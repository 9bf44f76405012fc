//! Settings and secrets of a stack: env files read as compose reads them, which settings are
//! secret, and the private files that carry secrets to compose (never the command line).

use crate::stack::Stack;
use anyhow::{Context, Result, bail};
use camino::Utf8Path;
use serde_json::Value;

/// The value of `key` in an env file's text, unquoted.
pub(super) fn env_file_value(text: &str, key: &str) -> Option<String> {
    env_file_entries(text).filter(|(k, _)| *k == key).map(|(_, v)| v).next_back()
}

/// Every `KEY=value` of an env file's text, in order, values unquoted.
pub(super) fn env_file_entries(text: &str) -> impl DoubleEndedIterator<Item = (&str, String)> {
    text.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("export ").unwrap_or(l).split_once('='))
        .map(|(k, v)| (k.trim(), v.trim().trim_matches(|c| c == '"' || c == '\'').to_owned()))
}

/// A setting whose value is a secret, by its name: a password, secret, token or key. One that
/// names the file holding a secret (`POSTGRES_PASSWORD_FILE`) is a path, not a secret.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_uppercase();
    !key.ends_with("_FILE")
        && ["PASSWORD", "SECRET", "TOKEN", "KEY", "REDISCLI_AUTH"].iter().any(|s| key.contains(s))
}

/// Fails naming every required secret that neither the environment nor an env file sets.
pub fn require_secrets(stack: &Stack, secrets: &[&str]) -> Result<()> {
    for file in &stack.env_files {
        std::fs::read_to_string(file).with_context(|| format!("cannot read env file {file}"))?;
    }
    let mut missing = Vec::new();
    for secret in secrets {
        if stack.secret_value(secret)?.is_none() {
            missing.push(*secret);
        }
    }
    if !missing.is_empty() {
        bail!(
            "the {} stack needs {}: export {}, or pass --env-file FILE with {} (it has no default on purpose; a setting X may also come from the file X_FILE names)",
            stack.mode.name(),
            missing.join(", "),
            if missing.len() == 1 { "it" } else { "them" },
            missing.iter().map(|m| format!("{m}=...")).collect::<Vec<_>>().join(" ")
        );
    }
    Ok(())
}

/// The settings behind the definition's file secrets: each top-level secret whose `file` is in
/// [`Stack::secrets_dir`], as (secret, setting), the setting being the file's name.
pub fn file_secrets(stack: &Stack, definition: &Value) -> Vec<(String, String)> {
    let Some(dir) = stack.secrets_dir() else { return Vec::new() };
    let secrets = definition["secrets"].as_object().into_iter().flatten();
    secrets
        .filter_map(|(name, spec)| {
            let file = Utf8Path::new(spec["file"].as_str()?);
            let setting = file.file_name()?;
            (file.parent()? == dir).then(|| (name.clone(), setting.to_owned()))
        })
        .collect()
}

/// The value of the setting behind a secret, which must be set and not empty.
pub fn secret_setting(stack: &Stack, setting: &str) -> Result<String> {
    match stack.secret_value(setting)? {
        Some(value) => Ok(value),
        None => bail!(
            "{setting} is not set: export it (or {setting}_FILE), or pass `--env-file FILE` with \
             {setting}=..."
        ),
    }
}

/// Writes the file of each of the definition's file secrets (see [`file_secrets`]) from its
/// setting, into [`Stack::secrets_dir`]: mode 0700 on the directory, so the files themselves
/// may be 0644, which a container's non-root user needs to read a bind-mounted secret. A new
/// file is written whole under a temporary name and renamed into place; a changed one in place.
pub fn write_secrets(stack: &Stack, definition: &Value) -> Result<()> {
    let Some(dir) = stack.secrets_dir() else { return Ok(()) };
    let secrets = file_secrets(stack, definition);
    if secrets.is_empty() {
        return Ok(());
    }
    private_dir(&dir)?;
    for (_, setting) in secrets {
        let value = secret_setting(stack, &setting)?;
        let file = dir.join(&setting);
        match std::fs::read(&file) {
            Ok(old) if old == value.as_bytes() => {}
            // A running container has the file bind-mounted, by its inode: a changed secret (a
            // new key list, which the servers reload) is written into the same file. A reader
            // that catches it half-written finds it empty or cut and keeps what it had.
            Ok(_) => std::fs::write(&file, value.as_bytes())
                .with_context(|| format!("cannot write {file}"))?,
            Err(_) => {
                let partial = dir.join(format!(".{setting}.partial-{}", std::process::id()));
                write_mode(&partial, value.as_bytes(), 0o644)?;
                std::fs::rename(&partial, &file).with_context(|| format!("cannot write {file}"))?;
            }
        }
    }
    Ok(())
}

/// Removes the stack's secret files, once the stack is gone.
pub fn remove_secrets(stack: &Stack) -> Result<()> {
    let Some(dir) = stack.secrets_dir() else { return Ok(()) };
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove the secrets in {dir}"))
        }
        _ => Ok(()),
    }
}

#[cfg(unix)]
fn private_dir(dir: &Utf8Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {dir}"))?;
    // An existing directory keeps its mode: set it.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {dir} private"))
}

/// Writes `bytes` to a new file created with `mode`.
#[cfg(unix)]
pub fn write_mode(path: &Utf8Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {path}"))?;
    file.write_all(bytes).with_context(|| format!("cannot write {path}"))
}
