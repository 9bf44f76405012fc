//! Image refs: `REGISTRY/NAME:TAG` or `REGISTRY/NAME@DIGEST` split into a repository of one
//! registry and a tag or digest, as the docker CLI reads them; the one parser of refs.

use anyhow::{Result, anyhow};

/// A repository of one registry, as named in an image ref (`127.0.0.1:5000/acme/server`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Repository {
    /// The registry as written (`ghcr.io`, `127.0.0.1:5000`, `docker.io`).
    pub registry: String,
    /// The path inside it (`acme/server`; `library/debian` for Docker Hub's short names).
    pub name: String,
}

/// An image ref split into its repository and its tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub repository: Repository,
    /// A tag (`1.4.2`) or a digest (`sha256:...`).
    pub reference: String,
}

impl Reference {
    /// Splits `REGISTRY/PATH:TAG` or `REGISTRY/PATH@DIGEST`; a first component without a dot
    /// or a port that is not `localhost` names Docker Hub, as the docker CLI reads it.
    pub fn parse(raw: &str) -> Result<Reference> {
        let invalid = || {
            anyhow!(
                "`{raw}` is not an image ref: use REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:DIGEST"
            )
        };
        let (path, reference) = match raw.split_once('@') {
            Some((path, digest)) => {
                let path = path
                    .rsplit_once(':')
                    .filter(|(_, t)| !t.contains('/'))
                    .map_or(path, |(p, _)| p);
                (path, digest.to_owned())
            }
            None => match raw.rsplit_once(':') {
                Some((path, tag)) if !tag.contains('/') => (path, tag.to_owned()),
                _ => (raw, "latest".to_owned()),
            },
        };
        if path.is_empty() || reference.is_empty() || path.contains("//") {
            return Err(invalid());
        }
        let (first, rest) = path.split_once('/').unwrap_or(("", path));
        let explicit = first.contains('.') || first.contains(':') || first == "localhost";
        let repository = if explicit {
            if rest.is_empty() {
                return Err(invalid());
            }
            Repository { registry: first.to_owned(), name: rest.to_owned() }
        } else if path.contains('/') {
            Repository { registry: "docker.io".to_owned(), name: path.to_owned() }
        } else {
            Repository { registry: "docker.io".to_owned(), name: format!("library/{path}") }
        };
        Ok(Reference { repository, reference })
    }
}

impl Repository {
    /// The host that serves the registry's API.
    pub(crate) fn api_host(&self) -> &str {
        match self.registry.as_str() {
            "docker.io" | "index.docker.io" => "registry-1.docker.io",
            other => other,
        }
    }

    /// The repository's API base under `scheme` (the transport's choice for its host).
    pub(crate) fn base(&self, scheme: &str) -> String {
        format!("{scheme}://{}/v2/{}", self.api_host(), self.name)
    }

    /// The key `docker login` files the registry's credentials under.
    pub(crate) fn credentials_key(&self) -> &str {
        match self.registry.as_str() {
            "docker.io" | "index.docker.io" => "https://index.docker.io/v1/",
            other => other,
        }
    }
}

/// Whether `host[:port]` is this machine's loopback.
pub(crate) fn is_loopback(address: &str) -> bool {
    let host = match address.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => address.rsplit_once(':').map_or(address, |(h, _)| h),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A ref written in full, as containerd names images: `memories/server:1` is
/// `docker.io/memories/server:1`.
pub fn full_name(raw: &str) -> Result<String> {
    let reference = Reference::parse(raw)?;
    Ok(display(&reference))
}

/// The repository of an image name as written (what precedes `:tag` or `@digest`):
/// `127.0.0.1:5000/ns/server:1@sha256:ab` is `127.0.0.1:5000/ns/server`. Nothing is added (no
/// registry, no `library/`): [`Reference::parse`] reads a name in full.
pub fn repository_of(name: &str) -> &str {
    let name = name.split_once('@').map_or(name, |(name, _)| name);
    // A `:` after the last `/` starts the tag; one before it is a registry's port.
    match name.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => repository,
        _ => name,
    }
}

/// The `host[:port]` of a URL.
pub(crate) fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    authority.rsplit_once('@').map_or(authority, |(_, host)| host)
}

/// The origin of a URL (`scheme://host[:port]`), lowercase: credentials go only to their own.
pub(crate) fn origin_of(url: &str) -> String {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    format!("{scheme}://{}", host_of(url)).to_ascii_lowercase()
}

pub(crate) fn display(reference: &Reference) -> String {
    let separator = if reference.reference.starts_with("sha256:") { '@' } else { ':' };
    format!("{}{separator}{}", display_repo(&reference.repository), reference.reference)
}

pub(crate) fn display_repo(repo: &Repository) -> String {
    format!("{}/{}", repo.registry, repo.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_names_repository_is_found_behind_a_port_a_tag_and_a_digest() {
        assert_eq!(
            repository_of("127.0.0.1:5000/ns/server:0.1.0@sha256:ab"),
            "127.0.0.1:5000/ns/server"
        );
        assert_eq!(repository_of("127.0.0.1:5000/ns/server:0.1.0"), "127.0.0.1:5000/ns/server");
        assert_eq!(repository_of("127.0.0.1:5000/ns/server"), "127.0.0.1:5000/ns/server");
        assert_eq!(repository_of("memories/db:sha-1234567"), "memories/db");
        assert_eq!(repository_of("ghcr.io/acme/db:1@sha256:ab"), "ghcr.io/acme/db");
    }

    fn parse(raw: &str) -> (String, String, String) {
        let r = Reference::parse(raw).unwrap();
        (r.repository.registry, r.repository.name, r.reference)
    }

    #[test]
    fn refs_split_into_registry_repository_and_tag_or_digest() {
        let own = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
        assert_eq!(
            parse("127.0.0.1:5000/acme/server:1.4.2"),
            own("127.0.0.1:5000", "acme/server", "1.4.2")
        );
        assert_eq!(
            parse("ghcr.io/acme/server@sha256:ab"),
            own("ghcr.io", "acme/server", "sha256:ab")
        );
        assert_eq!(
            parse("ghcr.io/acme/server:1.4@sha256:ab"),
            own("ghcr.io", "acme/server", "sha256:ab")
        );
        assert_eq!(parse("localhost/x"), own("localhost", "x", "latest"));
        assert_eq!(parse("debian:trixie-slim"), own("docker.io", "library/debian", "trixie-slim"));
        assert_eq!(parse("acme/server:1"), own("docker.io", "acme/server", "1"));
        assert!(Reference::parse("ghcr.io/").is_err());
        assert_eq!(full_name("memories/server:1").unwrap(), "docker.io/memories/server:1");
        assert_eq!(full_name("debian:trixie").unwrap(), "docker.io/library/debian:trixie");
        assert_eq!(full_name("127.0.0.1:5000/a/b:2").unwrap(), "127.0.0.1:5000/a/b:2");
        assert!(Reference::parse("").unwrap_err().to_string().contains("REGISTRY/NAME:TAG"));

        let hub = Reference::parse("docker.io/acme/server:1").unwrap().repository;
        assert_eq!(hub.base("https"), "https://registry-1.docker.io/v2/acme/server");
        assert_eq!(hub.credentials_key(), "https://index.docker.io/v1/");
        assert!(
            is_loopback("[::1]:5000") && is_loopback("127.0.0.2") && is_loopback("localhost:5000")
        );
        assert!(!is_loopback("ghcr.io") && !is_loopback("127.example"));
        assert_eq!(host_of("https://u:p@Storage.example:9000/u1?x=1"), "Storage.example:9000");
        assert_eq!(origin_of("https://Storage.example:9000/u1"), "https://storage.example:9000");
        assert_ne!(origin_of("http://127.0.0.1:5000/v2/"), origin_of("http://localhost:5000/v2/"));
    }
}
