//! Connection settings: parsed from a `postgres://` URL, a libpq `key=value` string or the
//! original (.NET/Npgsql) `Key=Value;Key=Value` connection string, into one typed struct.
//!
//! The three forms accept the same settings. Besides libpq's own keys, the pool and timeout
//! settings of the original are accepted in every form:
//!
//! | setting | URL / libpq key | Npgsql key | default |
//! |---|---|---|---|
//! | host (name, IP, or a unix socket directory starting with `/`) | `host` | `Host`, `Server` | `localhost` |
//! | port | `port` | `Port` | 5432 |
//! | database | `dbname` | `Database`, `DB` | the user name |
//! | user | `user` | `Username`, `User ID`, `User Name`, `UID` | `$USER`, else `postgres` |
//! | password | `password` | `Password`, `PWD` | none |
//! | application name | `application_name` | `Application Name` | `hartonomous` |
//! | SSL mode | `sslmode` | `SSL Mode` | `prefer` |
//! | pool min size | `pool_min` | `Minimum Pool Size` | 0 |
//! | pool max size | `pool_max` | `Maximum Pool Size` | 16 |
//! | idle lifetime of a pooled connection | `pool_idle_lifetime` | `Connection Idle Lifetime` | 300 s |
//! | wait for a pooled connection | `pool_timeout` | `Connection Timeout`¹ | 15 s |
//! | connect timeout | `connect_timeout` | `Timeout` | 15 s |
//! | statement (command) timeout | `command_timeout` | `Command Timeout` | 30 s, `0` = none |
//!
//! ¹ Npgsql has no separate pool wait; `Connection Timeout` is accepted as its alias here.
//! Durations are seconds when bare (`30`), or take a unit (`500ms`, `30s`, `5m`, `1h`).
//! Keys are case-insensitive; Npgsql keys also ignore spaces. An unknown key is an error (a
//! typo must not silently fall back to a default).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A password, never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The password itself, for handing to the driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// TLS policy, as libpq names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// True when a connection without TLS is unacceptable.
    pub fn requires_tls(self) -> bool {
        matches!(self, SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl FromStr for SslMode {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let norm: String = s.chars().filter(|c| !matches!(c, '-' | '_' | ' ')).collect::<String>().to_ascii_lowercase();
        Ok(match norm.as_str() {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verifyca" => SslMode::VerifyCa,
            "verifyfull" => SslMode::VerifyFull,
            _ => {
                return Err(ConfigError::InvalidValue {
                    key: "sslmode".into(),
                    value: s.into(),
                    expected: "disable, allow, prefer, require, verify-ca or verify-full",
                })
            }
        })
    }
}

/// Pool sizing and lifetimes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    /// Connections opened eagerly and kept even when idle.
    pub min: usize,
    /// Upper bound on open connections.
    pub max: usize,
    /// A connection idle for longer is closed (down to `min`).
    pub idle_lifetime: Duration,
    /// How long a caller waits for a free connection before failing.
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            min: 0,
            max: 16,
            idle_lifetime: Duration::from_secs(300),
            acquire_timeout: Duration::from_secs(15),
        }
    }
}

/// Everything needed to reach the database and size the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// Host name, IP address, or a unix socket directory (starts with `/`).
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: Option<Secret>,
    pub application_name: String,
    pub ssl_mode: SslMode,
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout`; `None` = no limit.
    pub command_timeout: Option<Duration>,
    pub pool: PoolSettings,
}

/// Why a connection string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("unknown connection setting {key:?}; known settings: {known}")]
    UnknownKey { key: String, known: &'static str },
    #[error("connection setting {key}={value:?} is invalid: expected {expected}")]
    InvalidValue { key: String, value: String, expected: &'static str },
    #[error("malformed connection string at byte {offset}: {reason}")]
    Syntax { offset: usize, reason: &'static str },
    #[error("pool min size {min} is larger than pool max size {max}")]
    PoolBounds { min: usize, max: usize },
}

const LIBPQ_KEYS: &str = "host, port, dbname, user, password, application_name, sslmode, \
    connect_timeout, command_timeout (or statement_timeout), pool_min, pool_max, \
    pool_idle_lifetime, pool_timeout";
const NPGSQL_KEYS: &str = "Host (Server), Port, Database (DB), Username (User ID, User Name, \
    UID), Password (PWD), Application Name, SSL Mode, Timeout, Command Timeout, Minimum Pool \
    Size, Maximum Pool Size, Connection Idle Lifetime, Connection Timeout";

/// The settings one key sets, whatever form it came in.
#[derive(Clone, Copy)]
enum Field {
    Host,
    Port,
    Database,
    User,
    Password,
    ApplicationName,
    SslMode,
    ConnectTimeout,
    CommandTimeout,
    PoolMin,
    PoolMax,
    PoolIdleLifetime,
    PoolTimeout,
}

fn libpq_field(key: &str) -> Option<Field> {
    Some(match key.to_ascii_lowercase().as_str() {
        "host" => Field::Host,
        "port" => Field::Port,
        "dbname" => Field::Database,
        "user" => Field::User,
        "password" => Field::Password,
        "application_name" => Field::ApplicationName,
        "sslmode" => Field::SslMode,
        "connect_timeout" => Field::ConnectTimeout,
        "command_timeout" | "statement_timeout" => Field::CommandTimeout,
        "pool_min" => Field::PoolMin,
        "pool_max" => Field::PoolMax,
        "pool_idle_lifetime" => Field::PoolIdleLifetime,
        "pool_timeout" => Field::PoolTimeout,
        _ => return None,
    })
}

fn npgsql_field(key: &str) -> Option<Field> {
    let k: String = key.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase();
    Some(match k.as_str() {
        "host" | "server" => Field::Host,
        "port" => Field::Port,
        "database" | "db" => Field::Database,
        "username" | "userid" | "user" | "uid" => Field::User,
        "password" | "pwd" | "psw" => Field::Password,
        "applicationname" => Field::ApplicationName,
        "sslmode" => Field::SslMode,
        "timeout" => Field::ConnectTimeout,
        "commandtimeout" => Field::CommandTimeout,
        "minimumpoolsize" | "minpoolsize" => Field::PoolMin,
        "maximumpoolsize" | "maxpoolsize" => Field::PoolMax,
        "connectionidlelifetime" => Field::PoolIdleLifetime,
        "connectiontimeout" => Field::PoolTimeout,
        _ => return None,
    })
}

/// Settings being assembled; `None` = not given, default applies.
#[derive(Default)]
struct Builder {
    host: Option<String>,
    port: Option<u16>,
    database: Option<String>,
    user: Option<String>,
    password: Option<String>,
    application_name: Option<String>,
    ssl_mode: Option<SslMode>,
    connect_timeout: Option<Duration>,
    command_timeout: Option<Duration>,
    pool_min: Option<usize>,
    pool_max: Option<usize>,
    pool_idle_lifetime: Option<Duration>,
    pool_timeout: Option<Duration>,
}

impl Builder {
    fn set(&mut self, field: Field, key: &str, value: &str) -> Result<(), ConfigError> {
        let invalid = |expected| ConfigError::InvalidValue { key: key.to_string(), value: value.to_string(), expected };
        let duration = || parse_duration(value).ok_or_else(|| invalid("a duration such as 30, 30s, 500ms, 5m"));
        let count = || value.trim().parse::<usize>().map_err(|_| invalid("a non-negative integer"));
        match field {
            Field::Host => self.host = Some(value.to_string()),
            Field::Port => {
                self.port = Some(
                    value
                        .trim()
                        .parse::<u16>()
                        .ok()
                        .filter(|&p| p != 0)
                        .ok_or_else(|| invalid("a TCP port, 1..=65535"))?,
                )
            }
            Field::Database => self.database = Some(value.to_string()),
            Field::User => self.user = Some(value.to_string()),
            Field::Password => self.password = Some(value.to_string()),
            Field::ApplicationName => self.application_name = Some(value.to_string()),
            Field::SslMode => {
                self.ssl_mode = Some(
                    value.parse().map_err(|_| invalid("disable, allow, prefer, require, verify-ca or verify-full"))?,
                )
            }
            Field::ConnectTimeout => self.connect_timeout = Some(duration()?),
            Field::CommandTimeout => self.command_timeout = Some(duration()?),
            Field::PoolMin => self.pool_min = Some(count()?),
            Field::PoolMax => {
                let n = count()?;
                if n == 0 {
                    return Err(invalid("a pool size of at least 1"));
                }
                self.pool_max = Some(n)
            }
            Field::PoolIdleLifetime => self.pool_idle_lifetime = Some(duration()?),
            Field::PoolTimeout => self.pool_timeout = Some(duration()?),
        }
        Ok(())
    }

    fn build(self) -> Result<ConnectionSettings, ConfigError> {
        let defaults = PoolSettings::default();
        let user = self
            .user
            .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "postgres".to_string());
        let pool = PoolSettings {
            min: self.pool_min.unwrap_or(defaults.min),
            max: self.pool_max.unwrap_or(defaults.max),
            idle_lifetime: self.pool_idle_lifetime.unwrap_or(defaults.idle_lifetime),
            acquire_timeout: self.pool_timeout.unwrap_or(defaults.acquire_timeout),
        };
        if pool.min > pool.max {
            return Err(ConfigError::PoolBounds { min: pool.min, max: pool.max });
        }
        Ok(ConnectionSettings {
            host: self.host.filter(|h| !h.is_empty()).unwrap_or_else(|| "localhost".to_string()),
            port: self.port.unwrap_or(5432),
            database: self.database.filter(|d| !d.is_empty()).unwrap_or_else(|| user.clone()),
            user,
            password: self.password.map(Secret),
            application_name: self.application_name.unwrap_or_else(|| "hartonomous".to_string()),
            ssl_mode: self.ssl_mode.unwrap_or(SslMode::Prefer),
            connect_timeout: self.connect_timeout.unwrap_or(Duration::from_secs(15)),
            // 0 means "no limit", as in PostgreSQL and Npgsql.
            command_timeout: match self.command_timeout {
                None => Some(Duration::from_secs(30)),
                Some(d) if d.is_zero() => None,
                Some(d) => Some(d),
            },
            pool,
        })
    }
}

/// `30` (seconds), `30s`, `500ms`, `5m`, `1h`.
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    match unit.trim() {
        "" | "s" => Some(Duration::from_secs(n)),
        "ms" => Some(Duration::from_millis(n)),
        "m" | "min" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

fn percent_decode(s: &str, offset: usize) -> Result<String, ConfigError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(ConfigError::Syntax { offset: offset + i, reason: "'%' must be followed by two hex digits" })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConfigError::Syntax { offset, reason: "percent-encoded bytes are not UTF-8" })
}

fn parse_url(s: &str) -> Result<Builder, ConfigError> {
    let mut b = Builder::default();
    let scheme_end = s.find("://").expect("caller checked the scheme") + 3;
    let rest = &s[scheme_end..];
    let (before_query, query) = match rest.find('?') {
        Some(q) => (&rest[..q], Some((&rest[q + 1..], scheme_end + q + 1))),
        None => (rest, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(p) => (&before_query[..p], Some(&before_query[p + 1..])),
        None => (before_query, None),
    };
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(a) => (Some(&authority[..a]), &authority[a + 1..]),
        None => (None, authority),
    };
    if let Some(ui) = userinfo {
        let (u, p) = match ui.find(':') {
            Some(c) => (&ui[..c], Some(&ui[c + 1..])),
            None => (ui, None),
        };
        if !u.is_empty() {
            b.user = Some(percent_decode(u, scheme_end)?);
        }
        if let Some(p) = p {
            b.password = Some(percent_decode(p, scheme_end)?);
        }
    }
    let host_off = scheme_end + userinfo.map_or(0, |u| u.len() + 1);
    if !hostport.is_empty() {
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            // [IPv6]:port
            let close = h
                .find(']')
                .ok_or(ConfigError::Syntax { offset: host_off, reason: "'[' of an IPv6 address is not closed" })?;
            let port = h[close + 1..].strip_prefix(':');
            (&h[..close], port)
        } else if hostport.contains(',') {
            return Err(ConfigError::Syntax {
                offset: host_off,
                reason: "several hosts are not supported; give one host",
            });
        } else {
            match hostport.rfind(':') {
                Some(c) => (&hostport[..c], Some(&hostport[c + 1..])),
                None => (hostport, None),
            }
        };
        if !host.is_empty() {
            b.host = Some(percent_decode(host, host_off)?);
        }
        if let Some(p) = port.filter(|p| !p.is_empty()) {
            b.set(Field::Port, "port", p)?;
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        b.database = Some(percent_decode(db, scheme_end)?);
    }
    if let Some((q, q_off)) = query {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or(ConfigError::Syntax { offset: q_off, reason: "query parameters are key=value" })?;
            let key = percent_decode(k, q_off)?;
            let value = percent_decode(v, q_off)?;
            let field =
                libpq_field(&key).ok_or_else(|| ConfigError::UnknownKey { key: key.clone(), known: LIBPQ_KEYS })?;
            b.set(field, &key, &value)?;
        }
    }
    Ok(b)
}

/// libpq's `key=value key='quoted value'` form.
fn parse_libpq(s: &str) -> Result<Builder, ConfigError> {
    let mut b = Builder::default();
    let bytes = s.as_bytes();
    let mut i = 0;
    loop {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == bytes.len() {
            break;
        }
        let key_start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &s[key_start..i];
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == bytes.len() || bytes[i] != b'=' {
            return Err(ConfigError::Syntax { offset: key_start, reason: "expected key=value" });
        }
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = Vec::new();
        if i < bytes.len() && bytes[i] == b'\'' {
            let open = i;
            i += 1;
            loop {
                match bytes.get(i) {
                    None => return Err(ConfigError::Syntax { offset: open, reason: "unterminated quoted value" }),
                    Some(b'\\') if i + 1 < bytes.len() => {
                        value.push(bytes[i + 1]);
                        i += 2;
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                value.push(bytes[i]);
                i += 1;
            }
        }
        let value = String::from_utf8(value).expect("split on ASCII boundaries of a str");
        let field =
            libpq_field(key).ok_or_else(|| ConfigError::UnknownKey { key: key.to_string(), known: LIBPQ_KEYS })?;
        b.set(field, key, &value)?;
    }
    Ok(b)
}

/// Npgsql's `Key=Value;Key=Value` form; values may be double-quoted (`""` escapes a quote).
fn parse_npgsql(s: &str) -> Result<Builder, ConfigError> {
    let mut b = Builder::default();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && bytes[i] != b';' {
            i += 1;
        }
        let key = s[start..i].trim();
        if i == bytes.len() || bytes[i] == b';' {
            if !key.is_empty() {
                return Err(ConfigError::Syntax { offset: start, reason: "expected Key=Value" });
            }
            i += 1;
            continue;
        }
        i += 1; // '='
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        let value = if i < bytes.len() && (bytes[i] == b'"' || bytes[i] == b'\'') {
            let quote = bytes[i];
            let open = i;
            i += 1;
            let mut v = Vec::new();
            loop {
                match bytes.get(i) {
                    None => return Err(ConfigError::Syntax { offset: open, reason: "unterminated quoted value" }),
                    Some(&c) if c == quote && bytes.get(i + 1) == Some(&quote) => {
                        v.push(c);
                        i += 2;
                    }
                    Some(&c) if c == quote => {
                        i += 1;
                        break;
                    }
                    Some(&c) => {
                        v.push(c);
                        i += 1;
                    }
                }
            }
            while i < bytes.len() && bytes[i] != b';' {
                if !bytes[i].is_ascii_whitespace() {
                    return Err(ConfigError::Syntax { offset: i, reason: "text after a quoted value; expected ';'" });
                }
                i += 1;
            }
            String::from_utf8(v).expect("split on ASCII boundaries of a str")
        } else {
            let vs = i;
            while i < bytes.len() && bytes[i] != b';' {
                i += 1;
            }
            s[vs..i].trim().to_string()
        };
        i += 1; // ';'
        let field =
            npgsql_field(key).ok_or_else(|| ConfigError::UnknownKey { key: key.to_string(), known: NPGSQL_KEYS })?;
        b.set(field, key, &value)?;
    }
    Ok(b)
}

impl FromStr for ConnectionSettings {
    type Err = ConfigError;

    /// A URL (`postgres://` or `postgresql://`), an Npgsql string (contains `;`, or its
    /// first key is an Npgsql key with a capital letter, e.g. `Host=db`), or libpq's form.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let t = s.trim();
        let builder = if t.starts_with("postgres://") || t.starts_with("postgresql://") {
            parse_url(t)?
        } else if t.contains(';') || looks_npgsql(t) {
            parse_npgsql(t)?
        } else {
            parse_libpq(t)?
        };
        builder.build()
    }
}

/// `Host=x` (a single Npgsql setting without `;`): its key is not a libpq key or is
/// capitalised as Npgsql writes it.
fn looks_npgsql(s: &str) -> bool {
    let key = s.split('=').next().unwrap_or("").trim();
    !key.is_empty()
        && (libpq_field(key).is_none() || key.starts_with(|c: char| c.is_ascii_uppercase()))
        && npgsql_field(key).is_some()
}

impl ConnectionSettings {
    /// The settings as a tokio-postgres configuration (pool settings are separate).
    ///
    /// `allow` and `prefer` both mean "TLS if the server offers it", `verify-*` mean
    /// `require` plus certificate checks done by the TLS connector.
    pub fn to_pg_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .dbname(&self.database)
            .user(&self.user)
            .application_name(&self.application_name)
            .connect_timeout(self.connect_timeout)
            .ssl_mode(match self.ssl_mode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
            });
        if let Some(p) = &self.password {
            c.password(p.expose());
        }
        if let Some(t) = self.command_timeout {
            c.options(format!("-c statement_timeout={}", t.as_millis()));
        }
        c
    }

    /// The same settings with another database (e.g. a fresh test database).
    pub fn with_database(&self, database: impl Into<String>) -> Self {
        ConnectionSettings { database: database.into(), ..self.clone() }
    }

    /// The same settings as another user.
    pub fn with_user(&self, user: impl Into<String>, password: Option<&str>) -> Self {
        ConnectionSettings { user: user.into(), password: password.map(Secret::new), ..self.clone() }
    }

    /// A pool over these settings, without TLS.
    ///
    /// Connections are opened lazily; `pool.min` and `pool.idle_lifetime` are honoured by
    /// [`crate::pool::warm_up`] and [`crate::pool::reap_idle`].
    /// Fails when the SSL mode demands TLS (no TLS connector is built in yet).
    pub fn pool(&self) -> Result<deadpool_postgres::Pool, PoolBuildError> {
        if self.ssl_mode.requires_tls() {
            return Err(PoolBuildError::TlsUnsupported(self.ssl_mode.as_str()));
        }
        let mgr = deadpool_postgres::Manager::from_config(
            self.to_pg_config(),
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast },
        );
        let mut timeouts = deadpool_postgres::Timeouts::new();
        timeouts.wait = Some(self.pool.acquire_timeout);
        timeouts.create = Some(self.connect_timeout);
        timeouts.recycle = Some(self.connect_timeout);
        deadpool_postgres::Pool::builder(mgr)
            .max_size(self.pool.max)
            .timeouts(timeouts)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| PoolBuildError::Build(e.to_string()))
    }
}

/// Why a pool could not be built from valid settings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolBuildError {
    #[error("sslmode={0} needs TLS, which this build does not include yet; use sslmode=disable or prefer on a trusted network")]
    TlsUnsupported(&'static str),
    #[error("could not build the connection pool: {0}")]
    Build(String),
}

impl fmt::Display for ConnectionSettings {
    /// A URL without the password, for logs and error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') && !self.host.starts_with('/') {
            format!("[{}]", self.host)
        } else {
            self.host.replace('/', "%2F")
        };
        write!(f, "postgres://{}@{}:{}/{}", self.user, host, self.port, self.database)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ConnectionSettings {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn url_with_everything() {
        let c = parse(
            "postgres://al%40ice:p%3Ass@db.example:6543/hart%20db?sslmode=require&pool_min=2\
             &pool_max=40&pool_idle_lifetime=90&pool_timeout=2s&connect_timeout=5\
             &command_timeout=1500ms&application_name=hart-test",
        );
        assert_eq!(c.user, "al@ice");
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("p:ss"));
        assert_eq!(c.host, "db.example");
        assert_eq!(c.port, 6543);
        assert_eq!(c.database, "hart db");
        assert_eq!(c.ssl_mode, SslMode::Require);
        assert_eq!(
            c.pool,
            PoolSettings {
                min: 2,
                max: 40,
                idle_lifetime: Duration::from_secs(90),
                acquire_timeout: Duration::from_secs(2),
            }
        );
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.command_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(c.application_name, "hart-test");
    }

    #[test]
    fn url_minimal_ipv6_and_socket() {
        let c = parse("postgresql://[::1]:55432/x");
        assert_eq!((c.host.as_str(), c.port, c.database.as_str()), ("::1", 55432, "x"));
        let c = parse("postgres://%2Ftmp%2Fhart-pg%2Fdata%2Frun/postgres?user=hart");
        assert_eq!(c.host, "/tmp/hart-pg/data/run");
        assert_eq!(c.user, "hart");
        let c = parse("postgres:///db?host=/var/run/postgresql&user=u");
        assert_eq!((c.host.as_str(), c.database.as_str(), c.user.as_str()), ("/var/run/postgresql", "db", "u"));
    }

    #[test]
    fn defaults() {
        let c = parse("postgres://u@h");
        assert_eq!(c.port, 5432);
        assert_eq!(c.database, "u", "database defaults to the user name");
        assert_eq!(c.ssl_mode, SslMode::Prefer);
        assert_eq!(c.pool, PoolSettings::default());
        assert_eq!(c.connect_timeout, Duration::from_secs(15));
        assert_eq!(c.command_timeout, Some(Duration::from_secs(30)));
        assert!(c.password.is_none());
    }

    #[test]
    fn npgsql_string_of_the_original() {
        let c = parse(
            "Host=pg.internal;Port=5433;Database=hartonomous;Username=hart_app;\
             Password=\"se;cr\"\"et\";Minimum Pool Size=5;Maximum Pool Size=100;\
             Connection Idle Lifetime=300;Timeout=15;Command Timeout=0;SSL Mode=VerifyFull",
        );
        assert_eq!(c.host, "pg.internal");
        assert_eq!(c.port, 5433);
        assert_eq!(c.database, "hartonomous");
        assert_eq!(c.user, "hart_app");
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("se;cr\"et"));
        assert_eq!(c.pool.min, 5);
        assert_eq!(c.pool.max, 100);
        assert_eq!(c.pool.idle_lifetime, Duration::from_secs(300));
        assert_eq!(c.connect_timeout, Duration::from_secs(15));
        assert_eq!(c.command_timeout, None, "Command Timeout=0 means no limit");
        assert_eq!(c.ssl_mode, SslMode::VerifyFull);
    }

    #[test]
    fn npgsql_aliases_case_and_trailing_semicolon() {
        let c = parse("server=a; user id=b; pwd=c; db=d; sslmode=disable;");
        assert_eq!((c.host.as_str(), c.user.as_str(), c.database.as_str()), ("a", "b", "d"));
        assert_eq!(c.password.unwrap().expose(), "c");
        assert_eq!(c.ssl_mode, SslMode::Disable);
        // A single Npgsql setting, no ';'.
        assert_eq!(parse("Server=x").host, "x");
    }

    #[test]
    fn libpq_key_value() {
        let c = parse(
            r"host=localhost port = 55432 dbname=postgres user=hart password='it\'s \\ q' sslmode=disable pool_max=4",
        );
        assert_eq!(c.port, 55432);
        assert_eq!(c.user, "hart");
        assert_eq!(c.password.unwrap().expose(), r"it's \ q");
        assert_eq!(c.pool.max, 4);
        assert_eq!(c.ssl_mode, SslMode::Disable);
    }

    #[test]
    fn errors_say_what_and_where() {
        let e = "postgres://h/db?pool_maxx=3".parse::<ConnectionSettings>().unwrap_err();
        assert!(matches!(&e, ConfigError::UnknownKey { key, .. } if key == "pool_maxx"), "{e}");
        assert!(e.to_string().contains("pool_max"), "lists the known keys: {e}");
        let e = "Host=h;Maximum Pool Size=lots".parse::<ConnectionSettings>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "connection setting Maximum Pool Size=\"lots\" is invalid: expected a non-negative integer"
        );
        let e = "postgres://h:99999/db".parse::<ConnectionSettings>().unwrap_err();
        assert!(matches!(e, ConfigError::InvalidValue { .. }), "{e}");
        let e = "host=h password='open".parse::<ConnectionSettings>().unwrap_err();
        assert_eq!(e, ConfigError::Syntax { offset: 16, reason: "unterminated quoted value" });
        let e = "Host=h;Minimum Pool Size=9;Maximum Pool Size=3".parse::<ConnectionSettings>().unwrap_err();
        assert_eq!(e, ConfigError::PoolBounds { min: 9, max: 3 });
        let e = "postgres://h/db?sslmode=sometimes".parse::<ConnectionSettings>().unwrap_err();
        assert!(e.to_string().contains("verify-full"), "{e}");
        assert!("postgres://h/db?pool_timeout=5 parsecs".parse::<ConnectionSettings>().is_err());
    }

    #[test]
    fn secrets_are_not_printed() {
        let c = parse("postgres://u:hunter2@h:1/d");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.to_string(), "postgres://u@h:1/d");
        let c = parse("Host=/run/pg;Username=u;Password=hunter2;Database=d");
        assert_eq!(c.to_string(), "postgres://u@%2Frun%2Fpg:5432/d");
    }

    #[test]
    fn driver_config_carries_the_settings() {
        let c = parse("postgres://u:pw@h:7/d?command_timeout=2&connect_timeout=3&sslmode=disable");
        let pg = c.to_pg_config();
        assert_eq!(pg.get_user(), Some("u"));
        assert_eq!(pg.get_password(), Some(&b"pw"[..]));
        assert_eq!(pg.get_dbname(), Some("d"));
        assert_eq!(pg.get_ports(), &[7]);
        assert_eq!(pg.get_options(), Some("-c statement_timeout=2000"));
        assert_eq!(pg.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(pg.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
        assert!(matches!(
            parse("postgres://h/d?sslmode=require").pool(),
            Err(PoolBuildError::TlsUnsupported("require"))
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("-1"), None);
        assert_eq!(parse_duration("1.5s"), None);
    }
}
