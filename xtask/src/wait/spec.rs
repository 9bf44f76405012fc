//! Probe specs: URL-like strings parsed into [`Probe`] values, and shown without secrets.
//!
//! A password never reaches an error message or a status line: errors show the spec through
//! [`redacted`], and [`Probe`]'s `Display` writes `***`. The password may come from the URL
//! (percent-encoded or, for postgres and redis, as written up to the last `@`), from a file
//! (`?password_file=PATH`) or from `PGPASSWORD` / `REDISCLI_AUTH`.

use std::fmt;

/// The accepted spec forms, listed in every parse error and in `wait-for --help`.
pub const FORMS: &str = "\
accepted probe forms:
  tcp://HOST:PORT                          the port accepts a connection
  http://HOST:PORT/PATH[#status=N&contains=TEXT]
                                           GET answers 2xx (or status N), body contains TEXT
  https://HOST[:PORT]/PATH[#status=N&contains=TEXT]
                                           the same over TLS, the certificate valid for
                                           HOST (Mozilla's roots, or --ca FILE's)
  postgres://USER[:PASS]@HOST[:PORT]/DB[?require_auth=password]
                                           a session starts and answers SELECT 1
                                           (password also from PGPASSWORD or
                                           ?password_file=PATH; cleartext only when
                                           require_auth allows it)
  redis://[:PASS@]HOST[:PORT]              PING answers PONG (password also from
                                           REDISCLI_AUTH or ?password_file=PATH)
  docker://CONTAINER                       the container's healthcheck reports healthy
  compose://PROJECT/SERVICE                the same, for every container (replica)
                                           of a compose service
  log://CONTAINER?contains=TEXT[&times=N]  the container's log holds TEXT (N times)
  exec://CONTAINER?arg=PROGRAM&arg=ARG...  the command exits 0 inside the container
  file:///PATH                             the file exists";

/// One readiness condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Tcp {
        host: String,
        port: u16,
    },
    Http {
        host: String,
        port: u16,
        path: String,
        status: Option<u16>,
        contains: Option<String>,
    },
    /// The same over TLS, the server's certificate checked against Mozilla's roots, or the
    /// CA certificates of file `ca` (`wait-for --ca FILE`).
    Https {
        host: String,
        port: u16,
        path: String,
        status: Option<u16>,
        contains: Option<String>,
        ca: Option<String>,
    },
    Postgres {
        host: String,
        port: u16,
        user: String,
        password: Option<String>,
        database: String,
        /// The server may ask for the password in cleartext (`?require_auth=password`).
        allow_cleartext: bool,
    },
    Redis {
        host: String,
        port: u16,
        password: Option<String>,
    },
    Healthy {
        container: String,
    },
    ComposeHealthy {
        project: String,
        service: String,
    },
    Log {
        container: String,
        text: String,
        times: u32,
    },
    Exec {
        container: String,
        argv: Vec<String>,
    },
    File {
        path: String,
    },
}

impl Probe {
    /// `GET http://127.0.0.1:PORT/PATH` answering exactly 200: a service published on loopback.
    pub fn loopback_200(port: u16, path: &str) -> Probe {
        Probe::Http {
            host: "127.0.0.1".into(),
            port,
            path: path.into(),
            status: Some(200),
            contains: None,
        }
    }
}

/// A spec split into its URL parts, percent-decoding done.
struct Url<'a> {
    scheme: &'a str,
    user: Option<String>,
    password: Option<String>,
    host: String,
    port: Option<u16>,
    path: String,
    query: Vec<(String, String)>,
    fragment: Vec<(String, String)>,
}

impl Probe {
    pub fn parse(spec: &str) -> Result<Probe, String> {
        // Every message names the spec without its password.
        let shown = redacted(spec);
        let raw = shown.as_str();
        let url = split(spec).map_err(|e| e.replace(spec, raw))?;
        let probe = match url.scheme {
            "tcp" => Probe::Tcp { port: url.required_port(raw)?, host: url.host(raw)? },
            "http" | "https" => {
                let host = url.host(raw)?;
                let path = if url.path.is_empty() { "/".into() } else { url.path.clone() };
                let (status, contains) = (url.status(raw)?, url.fragment_value("contains"));
                match url.scheme {
                    "http" => {
                        Probe::Http { host, port: url.port.unwrap_or(80), path, status, contains }
                    }
                    _ => {
                        let port = url.port.unwrap_or(443);
                        Probe::Https { host, port, path, status, contains, ca: None }
                    }
                }
            }
            "postgres" | "postgresql" => {
                let database = url.path.trim_start_matches('/').to_owned();
                let user = url.user.clone().filter(|u| !u.is_empty()).ok_or_else(|| {
                    format!("`{raw}`: name the user: postgres://USER[:PASS]@HOST/DB")
                })?;
                let mut allow_cleartext = false;
                if let Some(methods) = url.query_value("require_auth") {
                    for method in methods.split(',') {
                        match method {
                            "password" => allow_cleartext = true,
                            "scram-sha-256" | "none" => {}
                            "md5" => {
                                return Err(format!(
                                    "`{raw}`: md5 authentication is not supported: use scram-sha-256"
                                ));
                            }
                            other => {
                                return Err(format!(
                                    "`{raw}`: require_auth={other} is not one of password, scram-sha-256, none"
                                ));
                            }
                        }
                    }
                }
                Probe::Postgres {
                    host: url.host(raw)?,
                    port: url.port.unwrap_or(5432),
                    database: if database.is_empty() { user.clone() } else { database },
                    user,
                    password: url.password(raw, "PGPASSWORD")?,
                    allow_cleartext,
                }
            }
            "redis" => Probe::Redis {
                host: url.host(raw)?,
                port: url.port.unwrap_or(6379),
                password: url.password(raw, "REDISCLI_AUTH")?,
            },
            "docker" => Probe::Healthy { container: url.host(raw)? },
            "compose" => {
                let service = url.path.trim_matches('/');
                if service.is_empty() || service.contains('/') {
                    return Err(format!("`{raw}`: use compose://PROJECT/SERVICE"));
                }
                Probe::ComposeHealthy { project: url.host(raw)?, service: service.to_owned() }
            }
            "log" => {
                let text = url
                    .query_value("contains")
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| format!("`{raw}`: say what to look for: ?contains=TEXT"))?;
                let times =
                    match url.query_value("times") {
                        Some(n) => n.parse::<u32>().ok().filter(|&n| n >= 1).ok_or_else(|| {
                            format!("`{raw}`: times={n} is not a count of 1 or more")
                        })?,
                        None => 1,
                    };
                Probe::Log { container: url.host(raw)?, text, times }
            }
            "exec" => {
                let argv: Vec<String> =
                    url.query.iter().filter(|(k, _)| k == "arg").map(|(_, v)| v.clone()).collect();
                if argv.is_empty() {
                    return Err(format!("`{raw}`: give the command as ?arg=PROGRAM&arg=ARG..."));
                }
                Probe::Exec { container: url.host(raw)?, argv }
            }
            "file" => {
                if !url.host.is_empty() || !url.path.starts_with('/') {
                    return Err(format!("`{raw}`: use an absolute path: file:///PATH"));
                }
                Probe::File { path: url.path.clone() }
            }
            other => return Err(format!("`{raw}`: unknown probe scheme `{other}`")),
        };
        Ok(probe)
    }
}

/// The spec as a user would write it, with any password replaced by `***`.
impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = |p: &Option<String>| if p.is_some() { ":***" } else { "" };
        match self {
            Probe::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Probe::Http { host, port, path, status, contains }
            | Probe::Https { host, port, path, status, contains, .. } => {
                let scheme = if matches!(self, Probe::Https { .. }) { "https" } else { "http" };
                write!(f, "{scheme}://{host}:{port}{path}")?;
                let mut options = Vec::new();
                if let Some(s) = status {
                    options.push(format!("status={s}"));
                }
                if let Some(c) = contains {
                    options.push(format!("contains={c}"));
                }
                if !options.is_empty() {
                    write!(f, "#{}", options.join("&"))?;
                }
                Ok(())
            }
            Probe::Postgres { host, port, user, password, database, allow_cleartext } => {
                write!(f, "postgres://{user}{}@{host}:{port}/{database}", secret(password))?;
                if *allow_cleartext {
                    f.write_str("?require_auth=password")?;
                }
                Ok(())
            }
            Probe::Redis { host, port, password } => {
                let auth = if password.is_some() { ":***@" } else { "" };
                write!(f, "redis://{auth}{host}:{port}")
            }
            Probe::Healthy { container } => write!(f, "docker://{container}"),
            Probe::ComposeHealthy { project, service } => {
                write!(f, "compose://{project}/{service}")
            }
            Probe::Log { container, text, times } => {
                write!(f, "log://{container}?contains={text}")?;
                if *times != 1 {
                    write!(f, "&times={times}")?;
                }
                Ok(())
            }
            Probe::Exec { container, argv } => {
                write!(f, "exec://{container}?arg={}", argv.join("&arg="))
            }
            Probe::File { path } => write!(f, "file://{path}"),
        }
    }
}

/// Whether the scheme has credentials before the last `@`: there a password may hold `/`, `#`,
/// `?` or `@` as written, and the query never holds an `@`.
fn has_credentials(scheme: &str) -> bool {
    matches!(scheme, "postgres" | "postgresql" | "redis")
}

/// The spec with the password of its user part replaced by `***`: the form every message
/// shows.
pub fn redacted(raw: &str) -> String {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return raw.to_owned();
    };
    let authority_end = if has_credentials(scheme) {
        rest.rfind('@').map_or(0, |at| at + 1)
    } else {
        rest.find(['/', '?', '#']).unwrap_or(rest.len())
    };
    let Some(at) = rest[..authority_end].rfind('@') else {
        return raw.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => raw.to_owned(),
    }
}

fn split(raw: &str) -> Result<Url<'_>, String> {
    let (scheme, rest) = raw
        .split_once("://")
        .ok_or_else(|| format!("`{raw}` is not a probe spec: it has no SCHEME://"))?;
    // Credentials first, where the scheme has them: everything up to the last `@`.
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) if has_credentials(scheme) => (Some(&rest[..at]), &rest[at + 1..]),
        _ => (None, rest),
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, pairs(f)?),
        None => (rest, Vec::new()),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, pairs(q)?),
        None => (rest, Vec::new()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match (userinfo, authority.rsplit_once('@')) {
        (Some(u), _) => (Some(u), authority),
        (None, Some((u, h))) => (Some(u), h),
        (None, None) => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((name, pass)) => {
                let pass = decode(pass).map_err(|_| {
                    "the password in the spec has a `%` that is not a percent escape: \
                     write `%` as %25, or give the password in the environment instead"
                        .to_owned()
                })?;
                (Some(decode(name)?), Some(pass))
            }
            None => (Some(decode(u)?), None),
        },
        None => (None, None),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) =
            v6.split_once(']').ok_or_else(|| format!("`{raw}`: unclosed `[` in the host"))?;
        (h.to_owned(), after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (hostport.to_owned(), None),
        }
    };
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("`{raw}`: `{p}` is not a port (1 to 65535)"))?,
        ),
        None => None,
    };
    Ok(Url {
        scheme,
        user,
        password,
        host: decode(&host)?,
        port,
        path: decode(path)?,
        query,
        fragment,
    })
}

impl Url<'_> {
    fn host(&self, raw: &str) -> Result<String, String> {
        if self.host.is_empty() {
            return Err(format!("`{raw}`: the host (or container) is missing"));
        }
        Ok(self.host.clone())
    }

    fn required_port(&self, raw: &str) -> Result<u16, String> {
        self.port.ok_or_else(|| format!("`{raw}`: the port is missing: use tcp://HOST:PORT"))
    }

    /// The password: from the URL, else `?password_file=PATH` (its first line), else the
    /// environment variable the scheme's own client reads.
    fn password(&self, raw: &str, variable: &str) -> Result<Option<String>, String> {
        if let Some(password) = &self.password {
            return Ok(Some(password.clone()));
        }
        if let Some(path) = self.query_value("password_file") {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("`{raw}`: cannot read the password file {path}: {e}"))?;
            return Ok(Some(text.lines().next().unwrap_or("").to_owned()));
        }
        Ok(std::env::var(variable).ok().filter(|p| !p.is_empty()))
    }

    fn query_value(&self, key: &str) -> Option<String> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    /// The `#status=CODE` an HTTP probe wants, if any.
    fn status(&self, raw: &str) -> Result<Option<u16>, String> {
        let Some(s) = self.fragment_value("status") else { return Ok(None) };
        let code = s.parse::<u16>().ok().filter(|s| (100..600).contains(s));
        code.map(Some).ok_or_else(|| format!("`{raw}`: status={s} is not an HTTP status"))
    }

    fn fragment_value(&self, key: &str) -> Option<String> {
        self.fragment.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }
}

fn pairs(raw: &str) -> Result<Vec<(String, String)>, String> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// Percent-decoding (`%20`); `+` stays `+`.
fn decode(raw: &str) -> Result<String, String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or_else(|| format!("`{raw}` has a bad percent escape"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{raw}` decodes to invalid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_parses() {
        assert_eq!(
            Probe::parse("tcp://127.0.0.1:5432").unwrap(),
            Probe::Tcp { host: "127.0.0.1".into(), port: 5432 }
        );
        assert_eq!(
            Probe::parse("tcp://[::1]:80").unwrap(),
            Probe::Tcp { host: "::1".into(), port: 80 }
        );
        assert_eq!(
            Probe::parse("http://localhost:8283/v1/health#status=200&contains=%22ok%22").unwrap(),
            Probe::Http {
                host: "localhost".into(),
                port: 8283,
                path: "/v1/health".into(),
                status: Some(200),
                contains: Some("\"ok\"".into()),
            }
        );
        assert_eq!(
            Probe::parse("https://memories.test/v1/health#status=200").unwrap(),
            Probe::Https {
                host: "memories.test".into(),
                port: 443,
                path: "/v1/health".into(),
                status: Some(200),
                contains: None,
                ca: None,
            }
        );
        assert_eq!(
            Probe::parse("postgres://me:p%40ss@db/app").unwrap(),
            Probe::Postgres {
                host: "db".into(),
                port: 5432,
                user: "me".into(),
                password: Some("p@ss".into()),
                database: "app".into(),
                allow_cleartext: false,
            }
        );
        assert_eq!(
            Probe::parse("redis://:pw@cache").unwrap(),
            Probe::Redis { host: "cache".into(), port: 6379, password: Some("pw".into()) }
        );
        assert_eq!(
            Probe::parse("docker://db-1").unwrap(),
            Probe::Healthy { container: "db-1".into() }
        );
        assert_eq!(
            Probe::parse("compose://proj/db").unwrap(),
            Probe::ComposeHealthy { project: "proj".into(), service: "db".into() }
        );
        assert_eq!(
            Probe::parse("log://db?contains=ready%20to%20accept&times=2").unwrap(),
            Probe::Log { container: "db".into(), text: "ready to accept".into(), times: 2 }
        );
        assert_eq!(
            Probe::parse("exec://db?arg=pg_isready&arg=-q").unwrap(),
            Probe::Exec { container: "db".into(), argv: vec!["pg_isready".into(), "-q".into()] }
        );
        assert_eq!(
            Probe::parse("file:///tmp/ready").unwrap(),
            Probe::File { path: "/tmp/ready".into() }
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let cases = [
            ("localhost:80", "no SCHEME://"),
            ("ftp://x:1", "unknown probe scheme `ftp`"),
            ("tcp://localhost", "the port is missing"),
            ("tcp://localhost:99999", "`99999` is not a port"),
            ("tcp://:80", "host (or container) is missing"),
            ("http://x/#status=999", "not an HTTP status"),
            ("https://x/#status=7", "status=7 is not an HTTP status"),
            ("postgres://db/app", "name the user"),
            ("compose://proj", "compose://PROJECT/SERVICE"),
            ("log://db", "?contains=TEXT"),
            ("log://db?contains=x&times=0", "times=0"),
            ("exec://db", "?arg=PROGRAM"),
            ("file://relative", "absolute path"),
            ("tcp://[::1:80", "unclosed"),
            ("http://x/%zz", "bad percent escape"),
        ];
        for (raw, says) in cases {
            let err = Probe::parse(raw).unwrap_err();
            assert!(err.contains(says), "{raw}: {err}");
        }
    }

    #[test]
    fn passwords_never_reach_errors_and_may_hold_url_characters() {
        let bad_port = Probe::parse("postgres://memories:hunter2@127.0.0.1:5432x/memories");
        let err = bad_port.unwrap_err();
        assert!(!err.contains("hunter2") && err.contains("memories:***@"), "{err}");
        for password in ["a/b", "a#b", "a?b", "a@b:c"] {
            let spec = format!("postgres://me:{password}@db:5433/app");
            match Probe::parse(&spec).unwrap() {
                Probe::Postgres { password: Some(p), host, port, .. } => {
                    assert_eq!((p.as_str(), host.as_str(), port), (password, "db", 5433));
                }
                other => panic!("{other:?}"),
            }
            let redis = Probe::parse(&format!("redis://:{password}@cache:1x")).unwrap_err();
            assert!(!redis.contains(password), "{redis}");
        }
        let escape = Probe::parse("postgres://me:100%zz@db/app").unwrap_err();
        assert!(escape.contains("%25") && !escape.contains("100%"), "{escape}");
        let method = Probe::parse("postgres://me:hunter2@db/app?require_auth=md5").unwrap_err();
        assert!(method.contains("md5") && !method.contains("hunter2"), "{method}");
        assert_eq!(redacted("http://u:pw@h:1/x#contains=a@b"), "http://u:***@h:1/x#contains=a@b");
    }

    #[test]
    fn passwords_come_from_a_file_or_ask_for_cleartext() {
        let dir = std::env::temp_dir().join(format!("xtask-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let spec =
            format!("postgres://me@db/app?password_file={}&require_auth=password", file.display());
        let probe = Probe::parse(&spec).unwrap();
        assert!(
            matches!(&probe, Probe::Postgres { password: Some(p), allow_cleartext: true, .. } if p == "from-file"),
            "{probe:?}"
        );
        assert_eq!(probe.to_string(), "postgres://me:***@db:5432/app?require_auth=password");
        let missing = Probe::parse("redis://cache?password_file=/nonexistent/pw").unwrap_err();
        assert!(missing.contains("cannot read the password file /nonexistent/pw"), "{missing}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn display_hides_passwords_and_round_trips() {
        let pg = Probe::parse("postgres://me:hunter2@db:5433/app").unwrap();
        assert_eq!(pg.to_string(), "postgres://me:***@db:5433/app");
        let redis = Probe::parse("redis://:hunter2@cache:6380").unwrap();
        assert_eq!(redis.to_string(), "redis://:***@cache:6380");
        for plain in [
            "tcp://h:1",
            "http://h:80/x#status=204",
            "docker://c",
            "compose://p/s",
            "log://c?contains=up&times=3",
            "exec://c?arg=true",
            "file:///x",
        ] {
            assert_eq!(Probe::parse(plain).unwrap().to_string(), plain);
        }
    }
}
