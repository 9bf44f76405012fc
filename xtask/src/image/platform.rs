//! Target platforms (`os/arch[/variant]`): parsing, alias folding and de-duplication.

use std::fmt;

/// One target platform, normalised: `x86_64` is stored as `amd64`, `aarch64` as `arm64`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

const ARCHES: &[&str] = &["amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64"];

impl Platform {
    pub fn parse(raw: &str) -> Result<Platform, String> {
        let accepted = "use os/arch[/variant], e.g. linux/amd64 or linux/arm64";
        let parts: Vec<&str> = raw.trim().split('/').collect();
        let (os, arch, variant) = match parts.as_slice() {
            [os, arch] => (*os, *arch, None),
            [os, arch, variant] => (*os, *arch, Some(*variant)),
            _ => return Err(format!("`{raw}` is not a platform: {accepted}")),
        };
        if os != "linux" {
            return Err(format!("`{raw}`: only linux images are built here: {accepted}"));
        }
        let (arch, folded_variant) = match arch {
            "x86_64" | "x86-64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "armhf" => ("arm", Some("v7")),
            other => (other, None),
        };
        if !ARCHES.contains(&arch) {
            return Err(format!(
                "`{raw}`: unknown architecture `{arch}`: use one of {}",
                ARCHES.join(", ")
            ));
        }
        let variant = variant.map(str::to_owned).or(folded_variant.map(str::to_owned));
        if let Some(v) = &variant {
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(format!("`{raw}`: `{v}` is not a platform variant: {accepted}"));
            }
        }
        // arm64 images are v8 whatever the spelling; keep one name for one platform.
        let variant =
            if arch == "arm64" && variant.as_deref() == Some("v8") { None } else { variant };
        Ok(Platform { os: os.to_owned(), arch: arch.to_owned(), variant })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// A `--platform` value: platforms in the order given, each once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformList(pub Vec<Platform>);

impl fmt::Display for PlatformList {
    /// Comma-separated, as `--platform` takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, platform) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{platform}")?;
        }
        Ok(())
    }
}

/// Parses a comma-separated list, keeping the first occurrence of each platform in order.
pub fn parse_list(raw: &str) -> Result<PlatformList, String> {
    let mut platforms: Vec<Platform> = Vec::new();
    for item in raw.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!("`{raw}` has an empty entry: use e.g. linux/amd64,linux/arm64"));
        }
        let platform = Platform::parse(item)?;
        if !platforms.contains(&platform) {
            platforms.push(platform);
        }
    }
    Ok(PlatformList(platforms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(raw: &str) -> Vec<String> {
        parse_list(raw).unwrap().0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn aliases_fold_and_duplicates_go() {
        assert_eq!(list("linux/amd64,linux/arm64,linux/x86_64"), ["linux/amd64", "linux/arm64"]);
        assert_eq!(list("linux/aarch64, linux/arm64/v8"), ["linux/arm64"]);
        assert_eq!(list("linux/arm/v7,linux/armhf"), ["linux/arm/v7"]);
    }

    #[test]
    fn malformed_platforms_say_what_is_accepted() {
        for bad in ["amd64", "linux/", "windows/amd64", "linux/sparc", "linux/arm/v-7", "a/b/c/d"] {
            let err = parse_list(bad).unwrap_err();
            assert!(err.contains(bad.trim_end_matches('/')) || err.contains("arch"), "{err}");
        }
        assert!(parse_list("linux/amd64,,linux/arm64").unwrap_err().contains("empty entry"));
    }
}
