//! The configuration file: ringtail's own schema (contract §3), its defaults, and the seed's
//! platform file (`config/dev.yaml` with a top-level `alloy:` block), accepted as it is.
//!
//! Every key has a default that works in the DaemonSet. Errors name the file, the key and the
//! line, and say what to do: they are what an operator sees first.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as a string: `500ms`, `1s`, `5m`, `7h`, `1h30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

/// A size written as a string: `1MiB`, `256KiB`, `256KB` (Loki's units: KB = KiB = 1024), or a
/// plain number of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Default: `$NODE_NAME`, else the hostname.
    pub node_name: String,
    /// Positions and other state; must survive pod recreation (a hostPath).
    pub data_dir: PathBuf,
    pub server: Server,
    pub loki: Loki,
    pub logs: Logs,
    pub tail: Tail,
    pub log: Log,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Serves `/metrics`, `/ready` and `/healthy`.
    pub listen: String,
    /// `/healthy` fails when a batch has waited this long without the writer making progress,
    /// so that the kubelet restarts a wedged writer.
    pub stall_timeout: Dur,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Loki {
    /// Empty: entries go to stdout as JSON lines.
    pub url: String,
    pub tenant_id: String,
    pub bearer_token_file: PathBuf,
    pub basic_auth: BasicAuth,
    pub tls: Tls,
    pub timeout: Dur,
    pub batch: Batch,
    pub retry: Retry,
    pub max_line_size: Size,
    /// Pushes in flight at once: the adaptive limit's ceiling (`sink::concurrency`), and the
    /// number of lanes streams are spread over.
    pub max_in_flight: usize,
    /// Where the adaptive limit starts, and its floor; equal to `max_in_flight`: a fixed
    /// concurrency.
    pub min_in_flight: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BasicAuth {
    pub username: String,
    pub password_file: PathBuf,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    pub ca_file: PathBuf,
    pub insecure_skip_verify: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Batch {
    pub max_bytes: Size,
    pub max_wait: Dur,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    pub min_backoff: Dur,
    pub max_backoff: Dur,
    /// 0: retry until it succeeds.
    pub max_retries: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Logs {
    pub pods: Pods,
    pub events: Events,
    pub journal: Journal,
    pub rke2: Rke2,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Pods {
    pub enabled: bool,
    pub path: PathBuf,
    pub read_from: ReadFrom,
    pub json: Json,
    pub metadata: PodMeta,
}

/// How pod files wait for, and keep, their pods' API objects (`app`, `app_name`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PodMeta {
    /// How long a new pod's files wait for its API object before they are read without it.
    pub wait: Dur,
    /// How long a deleted pod's labels are kept, for the last lines of its files.
    pub grace: Dur,
}

impl Default for PodMeta {
    fn default() -> Self {
        PodMeta {
            wait: Dur(Duration::from_secs(2)),
            grace: Dur(Duration::from_secs(60)),
        }
    }
}

/// Where a file never seen before starts, when ringtail starts. Files that appear while it runs
/// always start at their beginning: they are new, and all of them is unread.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    #[default]
    Beginning,
    End,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Json {
    pub line: JsonLine,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum JsonLine {
    /// Keep the JSON line, so that `| json` works in LogQL.
    #[default]
    Raw,
    /// Send only the `msg` field (the whole line when there is none).
    Msg,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Events {
    pub enabled: bool,
    /// Default: `$POD_NAMESPACE`, else `ringtail`.
    pub lease_namespace: String,
    pub lease_name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Journal {
    pub enabled: bool,
    pub path: PathBuf,
    pub max_age: Dur,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Rke2 {
    pub enabled: bool,
    pub kubelet_log: PathBuf,
    pub containerd_log: PathBuf,
    /// The zone of kubelet.log's klog times, which carry none: empty for the node's own
    /// (`/etc/localtime`, mounted from the host; UTC where there is none), a tz database name
    /// (`Europe/Berlin`), or a TZif file's absolute path.
    pub timezone: String,
}

/// The file tailers (pod logs, and RKE2 files once they are in).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Tail {
    /// Tailer threads, each pinned to a core of the process's cpuset; 0: one per available
    /// core, at most 4.
    pub threads: usize,
    /// Open file descriptors kept across all tailers; past it the least recently read file at
    /// its end is closed, and reopened by identity when it grows.
    pub max_open_files: usize,
    /// `auto` tries io_uring and falls back to `pread` where it is blocked (seccomp,
    /// `io_uring_disabled`); `io_uring` and `pread` force one.
    pub io: IoMode,
    /// Watch the log directories with inotify: a write wakes its file's tailer, a new or
    /// renamed file is looked at at once. Off (or where inotify is unavailable): every file is
    /// polled, and the tree listed every 500 ms.
    pub inotify: bool,
    /// With inotify, how often the whole tree is listed anyway: the backstop for anything an
    /// event did not tell.
    pub rescan: Dur,
    /// Most inotify watches ringtail holds (one per pod and per container directory); 0: as
    /// many as the kernel gives (`fs.inotify.max_user_watches`). Directories past it are polled.
    pub max_watches: usize,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IoMode {
    #[default]
    Auto,
    IoUring,
    Pread,
}

/// ringtail's own logs, on stderr.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub level: LogLevel,
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Logfmt,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_name: String::new(),
            data_dir: PathBuf::from("/var/lib/ringtail"),
            server: Server::default(),
            loki: Loki::default(),
            logs: Logs::default(),
            tail: Tail::default(),
            log: Log::default(),
        }
    }
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: "0.0.0.0:9080".into(),
            stall_timeout: Dur(Duration::from_secs(600)),
        }
    }
}

impl Default for Loki {
    fn default() -> Self {
        Loki {
            url: "http://loki.loki.svc.cluster.local:3100/loki/api/v1/push".into(),
            tenant_id: String::new(),
            bearer_token_file: PathBuf::new(),
            basic_auth: BasicAuth::default(),
            tls: Tls::default(),
            timeout: Dur(Duration::from_secs(10)),
            batch: Batch::default(),
            retry: Retry::default(),
            max_line_size: Size(256 << 10),
            max_in_flight: 32,
            min_in_flight: 1,
        }
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            max_bytes: Size(1 << 20),
            max_wait: Dur(Duration::from_secs(1)),
        }
    }
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            min_backoff: Dur(Duration::from_millis(500)),
            max_backoff: Dur(Duration::from_secs(300)),
            max_retries: 0,
        }
    }
}

impl Default for Pods {
    fn default() -> Self {
        Pods {
            enabled: true,
            path: PathBuf::from("/var/log/pods"),
            read_from: ReadFrom::Beginning,
            json: Json::default(),
            metadata: PodMeta::default(),
        }
    }
}

impl Default for Events {
    fn default() -> Self {
        Events {
            enabled: true,
            lease_namespace: String::new(),
            lease_name: "ringtail-events".into(),
        }
    }
}

impl Default for Journal {
    fn default() -> Self {
        Journal {
            enabled: true,
            path: PathBuf::from("/var/log/journal"),
            max_age: Dur(Duration::from_secs(7 * 3600)),
        }
    }
}

impl Default for Rke2 {
    fn default() -> Self {
        Rke2 {
            enabled: true,
            kubelet_log: PathBuf::from("/var/lib/rancher/rke2/agent/logs/kubelet.log"),
            containerd_log: PathBuf::from("/var/lib/rancher/rke2/agent/containerd/containerd.log"),
            timezone: String::new(),
        }
    }
}

impl Default for Tail {
    fn default() -> Self {
        Tail {
            threads: 0,
            max_open_files: 1024,
            io: IoMode::Auto,
            inotify: true,
            rescan: Dur(Duration::from_secs(30)),
            max_watches: 0,
        }
    }
}

/// A configuration error, already phrased for the operator: file, key, line, what to do.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a config file, and resolves the defaults that come from the
    /// environment (`NODE_NAME`, `POD_NAMESPACE`, the hostname).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "cannot read config file {}: {e}; pass an existing YAML file with --config",
                path.display()
            ))
        })?;
        Config::from_yaml(&text, &path.display().to_string())
    }

    /// Parses `text` (named `origin` in errors): ringtail's schema, or the seed's platform file.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let yaml_err = |e: serde_yaml::Error| ConfigError(describe_yaml_error(&e, text, origin));
        let probe: serde_yaml::Value = serde_yaml::from_str(text).map_err(yaml_err)?;
        let is_seed = probe.as_mapping().is_some_and(|m| m.contains_key("alloy"));
        let mut cfg = if is_seed {
            let seed: SeedFile = serde_yaml::from_str(text).map_err(yaml_err)?;
            seed.into_config()
        } else if probe.is_null() {
            Config::default()
        } else {
            serde_yaml::from_str(text).map_err(yaml_err)?
        };
        cfg.resolve_env();
        cfg.validate(text, origin)?;
        Ok(cfg)
    }

    fn resolve_env(&mut self) {
        if self.node_name.is_empty() {
            self.node_name = std::env::var("NODE_NAME")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(hostname);
        }
        if self.logs.events.lease_namespace.is_empty() {
            self.logs.events.lease_namespace = std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "ringtail".into());
        }
    }

    fn validate(&self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let fail = |key: &str, what: String| {
            let at = line_of(text, key)
                .map(|l| format!(" line {l}"))
                .unwrap_or_default();
            Err(ConfigError(format!("{origin}{at}: {key}: {what}")))
        };
        let url = &self.loki.url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return fail(
                "loki.url",
                format!("{url:?} is not an http:// or https:// URL; set the push endpoint, e.g. http://loki:3100/loki/api/v1/push, or leave it empty for stdout"),
            );
        }
        if self.loki.batch.max_bytes.0 == 0 {
            return fail(
                "loki.batch.max_bytes",
                "must be more than 0, e.g. 1MiB".into(),
            );
        }
        if self.loki.batch.max_wait.0.is_zero() {
            return fail("loki.batch.max_wait", "must be more than 0, e.g. 1s".into());
        }
        if self.loki.timeout.0.is_zero() || self.loki.timeout.0 > Duration::from_secs(3600) {
            return fail(
                "loki.timeout",
                "must be between 1ms and 1h, e.g. 10s".into(),
            );
        }
        if self.loki.retry.max_backoff.0 > Duration::from_secs(24 * 3600) {
            return fail(
                "loki.retry.max_backoff",
                "must be at most 24h, e.g. 5m".into(),
            );
        }
        if self.loki.batch.max_wait.0 > Duration::from_secs(3600) {
            return fail("loki.batch.max_wait", "must be at most 1h, e.g. 1s".into());
        }
        if self.server.stall_timeout.0 > Duration::from_secs(7 * 24 * 3600) {
            return fail(
                "server.stall_timeout",
                "must be at most 7 days, e.g. 10m".into(),
            );
        }
        if self.tail.threads > 64 {
            return fail(
                "tail.threads",
                "must be at most 64 (0: one per core, at most 4)".into(),
            );
        }
        if self.loki.retry.min_backoff.0.is_zero()
            || self.loki.retry.min_backoff > self.loki.retry.max_backoff
        {
            return fail(
                "loki.retry.min_backoff",
                "must be more than 0 and at most loki.retry.max_backoff".into(),
            );
        }
        if self.loki.max_in_flight == 0 || self.loki.max_in_flight > 256 {
            return fail(
                "loki.max_in_flight",
                "must be between 1 and 256, e.g. 32 (1: one push at a time)".into(),
            );
        }
        if self.loki.min_in_flight == 0 || self.loki.min_in_flight > self.loki.max_in_flight {
            return fail(
                "loki.min_in_flight",
                "must be at least 1 and at most loki.max_in_flight (equal: a fixed concurrency)"
                    .into(),
            );
        }
        if self.loki.max_line_size.0 < 1024 || self.loki.max_line_size.0 > (64 << 20) {
            return fail(
                "loki.max_line_size",
                "must be between 1KiB and 64MiB; use Loki's own limit (256KiB by default)".into(),
            );
        }
        let events = &self.logs.events;
        if events.enabled && !is_dns_name(&events.lease_name, 253, true) {
            return fail(
                "logs.events.lease_name",
                format!(
                    "{:?} is not a Kubernetes object name (lower-case letters, digits, '-' and \
                     '.', at most 253); e.g. ringtail-events",
                    events.lease_name
                ),
            );
        }
        if events.enabled && !is_dns_name(&events.lease_namespace, 63, false) {
            return fail(
                "logs.events.lease_namespace",
                format!(
                    "{:?} is not a namespace name (lower-case letters, digits and '-', at most \
                     63); leave it empty for $POD_NAMESPACE",
                    events.lease_namespace
                ),
            );
        }
        if self.logs.pods.metadata.wait.0 > Duration::from_secs(60) {
            return fail(
                "logs.pods.metadata.wait",
                "must be at most 1m, e.g. 2s: new files are not read while they wait".into(),
            );
        }
        if self.logs.pods.metadata.grace.0 > Duration::from_secs(24 * 3600) {
            return fail(
                "logs.pods.metadata.grace",
                "must be at most 24h, e.g. 60s".into(),
            );
        }
        if self.logs.rke2.enabled {
            let localtime = std::path::Path::new(crate::process::plain::LOCALTIME);
            if let Err(e) = crate::process::plain::resolve_zone(&self.logs.rke2.timezone, localtime)
            {
                return fail("logs.rke2.timezone", e);
            }
        }
        if self.tail.max_open_files < 16 {
            return fail("tail.max_open_files", "must be at least 16".into());
        }
        if self.tail.rescan.0 < Duration::from_secs(1) {
            return fail("tail.rescan", "must be at least 1s, e.g. 10s".into());
        }
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return fail(
                "server.listen",
                format!(
                    "{:?} is not an address:port such as 0.0.0.0:9080",
                    self.server.listen
                ),
            );
        }
        Ok(())
    }

    /// The effective configuration, as YAML (what `check-config` prints).
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Phrases a parser error as `FILE line N: dotted.key: what; what to do`. serde_yaml reports the
/// path of the enclosing map for a bad scalar, so the key written on the error's line is added.
fn describe_yaml_error(e: &serde_yaml::Error, text: &str, origin: &str) -> String {
    let full = e.to_string();
    let msg = full.split(" at line ").next().unwrap_or(&full);
    let Some(loc) = e.location() else {
        return format!("{origin}: {msg}; fix the YAML syntax");
    };
    let written = text
        .lines()
        .nth(loc.line().saturating_sub(1))
        .and_then(|l| l.trim_start().trim_start_matches("- ").split(':').next())
        .map(str::trim)
        .filter(|k| !k.is_empty() && !k.contains(' '));
    let msg = match (
        msg.split_once(": "),
        written.filter(|_| !msg.contains("duplicate")),
    ) {
        (Some((path, rest)), Some(key))
            if !path.contains(' ') && path != key && !path.ends_with(&format!(".{key}")) =>
        {
            format!("{path}.{key}: {rest}")
        }
        (None, Some(key)) if !msg.contains(key) => format!("{key}: {msg}"),
        _ => msg.to_string(),
    };
    format!(
        "{origin} line {}: {msg}; fix that key (`ringtail check-config FILE` shows the accepted \
         keys with their defaults)",
        loc.line()
    )
}

/// A DNS-1123 name, as Kubernetes object names (`dots`: subdomain) and namespaces are.
fn is_dns_name(name: &str, max: usize, dots: bool) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || (dots && c == b'.')
        })
}

/// The line of a dotted key in a YAML text, found by indentation, for errors that come from
/// validation rather than from the parser. `None` when the key is not written (a default).
pub fn line_of(text: &str, dotted: &str) -> Option<usize> {
    let mut want = dotted.split('.').peekable();
    let mut depth_indent: Option<usize> = None;
    let mut key = want.next()?;
    for (no, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = raw.len() - trimmed.len();
        if depth_indent.is_some_and(|d| indent <= d) {
            // Left the block we were searching in without finding the key.
            return None;
        }
        let name = trimmed.split(':').next().unwrap_or("").trim();
        if name == key {
            match want.next() {
                Some(next) => {
                    key = next;
                    depth_indent = Some(indent);
                }
                None => return Some(no + 1),
            }
        }
    }
    None
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The seed's platform file: only the keys it documents are read; the rest of the platform's
/// file (other components' settings) is none of ringtail's business.
#[derive(Deserialize)]
struct SeedFile {
    alloy: SeedAlloy,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SeedAlloy {
    loki: SeedLoki,
    logs: SeedLogs,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SeedLoki {
    url: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SeedLogs {
    pods: SeedToggle,
    events: SeedToggle,
    journal: SeedToggle,
    rke2: SeedToggle,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SeedToggle {
    enabled: Option<bool>,
}

impl SeedFile {
    fn into_config(self) -> Config {
        let mut cfg = Config::default();
        let a = self.alloy;
        if let Some(url) = a.loki.url {
            cfg.loki.url = url;
        }
        let set = |t: SeedToggle, v: &mut bool| {
            if let Some(e) = t.enabled {
                *v = e;
            }
        };
        set(a.logs.pods, &mut cfg.logs.pods.enabled);
        set(a.logs.events, &mut cfg.logs.events.enabled);
        set(a.logs.journal, &mut cfg.logs.journal.enabled);
        set(a.logs.rke2, &mut cfg.logs.rke2.enabled);
        cfg
    }
}

impl Dur {
    /// Parses Go-style durations: a sequence of `<number><unit>` with units ns, us, ms, s, m, h.
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty duration; write e.g. 500ms, 1s, 5m".into());
        }
        let mut total = Duration::ZERO;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| format!("{s:?} has no unit; write e.g. {s}s"))?;
            let (num, tail) = rest.split_at(digits);
            let unit_len = tail
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(tail.len());
            let (unit, next) = tail.split_at(unit_len);
            let n: f64 = num
                .parse()
                .map_err(|_| format!("{s:?} is not a duration; write e.g. 500ms, 1s, 5m"))?;
            let secs = match unit {
                "ns" => n / 1e9,
                "us" | "µs" => n / 1e6,
                "ms" => n / 1e3,
                "s" => n,
                "m" => n * 60.0,
                "h" => n * 3600.0,
                _ => {
                    return Err(format!(
                        "{s:?} has an unknown unit {unit:?}; use ms, s, m or h"
                    ))
                }
            };
            total = Duration::try_from_secs_f64(secs)
                .ok()
                .and_then(|d| total.checked_add(d))
                .ok_or_else(|| format!("{s:?} is too long a duration"))?;
            rest = next;
        }
        Ok(Dur(total))
    }
}

impl fmt::Display for Dur {
    /// The largest unit that writes the duration exactly, so that `check-config` output parses
    /// back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos();
        for (unit, size) in [
            ("h", 3_600_000_000_000u128),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1_000),
        ] {
            if ns > 0 && ns.is_multiple_of(size) {
                return write!(f, "{}{unit}", ns / size);
            }
        }
        if ns == 0 {
            f.write_str("0s")
        } else {
            write!(f, "{ns}ns")
        }
    }
}

impl Size {
    pub fn parse(s: &str) -> Result<Size, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size; write e.g. 1MiB or 256KiB"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "KiB" | "kB" | "kb" | "K" => 1 << 10,
            "MB" | "MiB" | "mb" | "M" => 1 << 20,
            "GB" | "GiB" | "gb" | "G" => 1 << 30,
            u => {
                return Err(format!(
                    "{s:?} has an unknown unit {u:?}; use B, KiB, MiB or GiB"
                ))
            }
        };
        n.checked_mul(mult)
            .map(Size)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
            write!(f, "{}GiB", n >> 30)
        } else if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", n >> 20)
        } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", n >> 10)
        } else {
            write!(f, "{n}B")
        }
    }
}

/// Accepts a string, or a bare YAML number (read as the string's digits).
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        S(String),
        N(u64),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::S(s) => s,
        Raw::N(n) => n.to_string(),
    })
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = string_or_number(d)?;
        Size::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_contract_defaults() {
        let c = Config::from_yaml("", "t.yaml").unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/ringtail"));
        assert_eq!(c.server.listen, "0.0.0.0:9080");
        assert_eq!(
            c.loki.url,
            "http://loki.loki.svc.cluster.local:3100/loki/api/v1/push"
        );
        assert_eq!(c.loki.batch.max_bytes, Size(1 << 20));
        assert_eq!(c.loki.batch.max_wait, Dur(Duration::from_secs(1)));
        assert_eq!(c.loki.retry.min_backoff, Dur(Duration::from_millis(500)));
        assert_eq!(c.loki.retry.max_backoff, Dur(Duration::from_secs(300)));
        assert_eq!(c.loki.max_line_size, Size(262_144));
        assert_eq!(c.logs.pods.path, PathBuf::from("/var/log/pods"));
        assert_eq!(c.logs.pods.read_from, ReadFrom::Beginning);
        assert_eq!(c.logs.pods.json.line, JsonLine::Raw);
        assert_eq!(c.logs.events.lease_name, "ringtail-events");
        assert_eq!(c.logs.journal.max_age, Dur(Duration::from_secs(7 * 3600)));
        assert!(!c.node_name.is_empty());
    }

    #[test]
    fn reads_every_contract_key() {
        let text = r#"
node_name: n1
data_dir: /tmp/rt
server: { listen: 127.0.0.1:9999 }
loki:
  url: ""
  tenant_id: team-a
  bearer_token_file: /t
  basic_auth: { username: u, password_file: /p }
  tls: { ca_file: /ca, insecure_skip_verify: true }
  timeout: 3s
  batch: { max_bytes: 512KiB, max_wait: 250ms }
  retry: { min_backoff: 100ms, max_backoff: 1m, max_retries: 3 }
  max_line_size: 1MiB
logs:
  pods: { enabled: false, path: /p, read_from: end, json: { line: msg } }
  events: { enabled: false, lease_namespace: ns, lease_name: l }
  journal: { enabled: false, path: /j, max_age: 1h30m }
  rke2: { enabled: false, kubelet_log: /k, containerd_log: /c }
"#;
        let c = Config::from_yaml(text, "t.yaml").unwrap();
        assert_eq!(c.node_name, "n1");
        assert_eq!(c.loki.url, "");
        assert_eq!(c.loki.basic_auth.username, "u");
        assert!(c.loki.tls.insecure_skip_verify);
        assert_eq!(c.loki.timeout, Dur(Duration::from_secs(3)));
        assert_eq!(c.loki.batch.max_bytes, Size(512 << 10));
        assert_eq!(c.loki.batch.max_wait, Dur(Duration::from_millis(250)));
        assert_eq!(c.loki.retry.max_retries, 3);
        assert_eq!(c.loki.max_line_size, Size(1 << 20));
        assert_eq!(c.logs.pods.read_from, ReadFrom::End);
        assert_eq!(c.logs.pods.json.line, JsonLine::Msg);
        assert_eq!(c.logs.events.lease_namespace, "ns");
        assert_eq!(c.logs.journal.max_age, Dur(Duration::from_secs(5400)));
        assert_eq!(c.logs.rke2.containerd_log, PathBuf::from("/c"));
        // The effective config parses back to itself.
        let again = Config::from_yaml(&c.to_yaml(), "again").unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn accepts_the_seed_platform_file() {
        let text = r#"
features:
  monitoring: { enabled: true }
alloy:
  namespace: alloy
  version: "0.12.0"
  controller:
    type: daemonset
  loki:
    url: "http://loki.example:3100/loki/api/v1/push"
  logs:
    pods: { enabled: true }
    events: { enabled: true }
    journal: { enabled: false }
    rke2: { enabled: false }
"#;
        let c = Config::from_yaml(text, "config/dev.yaml").unwrap();
        assert_eq!(c.loki.url, "http://loki.example:3100/loki/api/v1/push");
        assert!(c.logs.pods.enabled && c.logs.events.enabled);
        assert!(!c.logs.journal.enabled && !c.logs.rke2.enabled);
    }

    #[test]
    fn errors_name_the_key_and_the_line() {
        let e = Config::from_yaml("loki:\n  batch:\n    max_wait: soon\n", "f.yaml").unwrap_err();
        assert!(e.0.contains("f.yaml"), "{e}");
        assert!(e.0.contains("loki.batch.max_wait"), "{e}");
        assert!(e.0.contains("line 3"), "{e}");

        let e = Config::from_yaml("logs:\n  pods:\n    redd_from: end\n", "f.yaml").unwrap_err();
        assert!(e.0.contains("redd_from") && e.0.contains("line 3"), "{e}");

        let e = Config::from_yaml("loki:\n  url: ftp://x\n", "f.yaml").unwrap_err();
        assert!(e.0.contains("loki.url") && e.0.contains("line 2"), "{e}");

        let e = Config::from_yaml("loki:\n  retry:\n    min_backoff: 10m\n", "f.yaml").unwrap_err();
        assert!(
            e.0.contains("loki.retry.min_backoff") && e.0.contains("line 3"),
            "{e}"
        );

        let e = Config::from_yaml(
            "logs:\n  events:\n    lease_name: Ringtail_Events\n",
            "f.yaml",
        )
        .unwrap_err();
        assert!(
            e.0.contains("logs.events.lease_name") && e.0.contains("line 3"),
            "{e}"
        );
        let e = Config::from_yaml("logs:\n  events:\n    lease_namespace: a.b\n", "f.yaml")
            .unwrap_err();
        assert!(e.0.contains("logs.events.lease_namespace"), "{e}");
        // Not checked when Events are off.
        assert!(Config::from_yaml(
            "logs:\n  events:\n    enabled: false\n    lease_name: x_y\n",
            "f.yaml"
        )
        .is_ok());
        assert!(is_dns_name("ringtail-events.v1", 253, true));
        assert!(!is_dns_name("-a", 253, true) && !is_dns_name("", 63, false));
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(Dur::parse("1h30m").unwrap().0, Duration::from_secs(5400));
        assert_eq!(Dur::parse("1.5s").unwrap().0, Duration::from_millis(1500));
        assert!(Dur::parse("5").is_err());
        assert!(Dur::parse("5 parsecs").is_err());
        assert_eq!(Size::parse("256KB").unwrap().0, 262_144);
        assert_eq!(Size::parse("1MiB").unwrap().0, 1 << 20);
        assert_eq!(Size::parse("42").unwrap().0, 42);
        assert!(Size::parse("1 furlong").is_err());
        assert_eq!(Dur(Duration::from_millis(500)).to_string(), "500ms");
        assert_eq!(Dur(Duration::from_micros(500)).to_string(), "500us");
        assert_eq!(Dur(Duration::from_secs(5400)).to_string(), "90m");
        for s in ["500us", "1ns", "90m", "7h", "0s", "1500ms"] {
            let d = Dur::parse(s).unwrap();
            assert_eq!(Dur::parse(&d.to_string()).unwrap(), d, "{s}");
        }
        // Found by the config fuzzer: these panicked in Duration::from_secs_f64.
        assert!(Dur::parse("99999999999999999999h").is_err());
        assert!(Dur::parse("10000000000000000000s10000000000000000000s").is_err());
        assert_eq!(Size(1 << 20).to_string(), "1MiB");
    }
}
