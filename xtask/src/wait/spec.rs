//! Probe specs: URL-like strings parsed into [`Probe`] values, and shown without secrets.

use std::fmt;

/// The accepted spec forms, listed in every parse error and in `wait-for --help`.
pub const FORMS: &str = "\
accepted probe forms:
  tcp://HOST:PORT                          the port accepts a connection
  http://HOST:PORT/PATH[#status=N&contains=TEXT]
                                           GET answers 2xx (or status N), body contains TEXT
  postgres://USER[:PASS]@HOST[:PORT]/DB    a session starts and answers SELECT 1
  redis://[:PASS@]HOST[:PORT]              PING answers PONG
  docker://CONTAINER                       the container's healthcheck reports healthy
  compose://PROJECT/SERVICE                the same, for a compose service's container
  log://CONTAINER?contains=TEXT[&times=N]  the container's log holds TEXT (N times)
  exec://CONTAINER?arg=PROGRAM&arg=ARG...  the command exits 0 inside the container
  file:///PATH                             the file exists";

/// One readiness condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Tcp { host: String, port: u16 },
    Http { host: String, port: u16, path: String, status: Option<u16>, contains: Option<String> },
    Postgres { host: String, port: u16, user: String, password: Option<String>, database: String },
    Redis { host: String, port: u16, password: Option<String> },
    Healthy { container: String },
    ComposeHealthy { project: String, service: String },
    Log { container: String, text: String, times: u32 },
    Exec { container: String, argv: Vec<String> },
    File { path: String },
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
    pub fn parse(raw: &str) -> Result<Probe, String> {
        let url = split(raw)?;
        let probe = match url.scheme {
            "tcp" => Probe::Tcp { port: url.required_port(raw)?, host: url.host(raw)? },
            "http" => {
                let status = match url.fragment_value("status") {
                    Some(s) => Some(
                        s.parse::<u16>()
                            .ok()
                            .filter(|s| (100..600).contains(s))
                            .ok_or_else(|| format!("`{raw}`: status={s} is not an HTTP status"))?,
                    ),
                    None => None,
                };
                Probe::Http {
                    host: url.host(raw)?,
                    port: url.port.unwrap_or(80),
                    path: if url.path.is_empty() { "/".into() } else { url.path.clone() },
                    status,
                    contains: url.fragment_value("contains"),
                }
            }
            "https" => {
                return Err(format!(
                    "`{raw}`: https probes are not supported (no TLS client in xtask): \
                     probe the service's plain-http port, or tcp://HOST:PORT"
                ));
            }
            "postgres" | "postgresql" => {
                let database = url.path.trim_start_matches('/').to_owned();
                let user = url.user.clone().filter(|u| !u.is_empty()).ok_or_else(|| {
                    format!("`{raw}`: name the user: postgres://USER[:PASS]@HOST/DB")
                })?;
                Probe::Postgres {
                    host: url.host(raw)?,
                    port: url.port.unwrap_or(5432),
                    database: if database.is_empty() { user.clone() } else { database },
                    user,
                    password: url.password.clone(),
                }
            }
            "redis" => Probe::Redis {
                host: url.host(raw)?,
                port: url.port.unwrap_or(6379),
                password: url.password.clone(),
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
            Probe::Http { host, port, path, status, contains } => {
                write!(f, "http://{host}:{port}{path}")?;
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
            Probe::Postgres { host, port, user, password, database } => {
                write!(f, "postgres://{user}{}@{host}:{port}/{database}", secret(password))
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

fn split(raw: &str) -> Result<Url<'_>, String> {
    let (scheme, rest) = raw
        .split_once("://")
        .ok_or_else(|| format!("`{raw}` is not a probe spec: it has no SCHEME://"))?;
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
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((name, pass)) => (Some(decode(name)?), Some(decode(pass)?)),
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

    fn query_value(&self, key: &str) -> Option<String> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
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
            Probe::parse("postgres://me:p%40ss@db/app").unwrap(),
            Probe::Postgres {
                host: "db".into(),
                port: 5432,
                user: "me".into(),
                password: Some("p@ss".into()),
                database: "app".into(),
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
            ("https://x/", "https probes are not supported"),
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
