//! checkov, the infrastructure-as-code scanner, finds nothing left to decide in what ringtail
//! ships: the manifests of both overlays as `kubectl kustomize` renders them, and the
//! Dockerfile. Every check it fails is either fixed or accepted in `.checkov.yaml`, with a
//! comment that says why; and an accepted check that no longer fails is flagged, so the list
//! does not outlive its reasons.
//!
//! Needs `checkov` (on PATH, or in the virtualenv `scripts/ensure-deps` installs it in) and
//! `kubectl`. Without them these tests fail: run `scripts/ensure-deps`. checkov runs with
//! `--skip-download`: no request to Prisma Cloud, so no guideline links in its findings, and
//! nothing here depends on the network.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::monitoring::kustomize;

const OVERLAYS: [&str; 2] = ["dev", "prod"];

/// Where `scripts/ensure-deps` installs checkov, under `$HOME`, when it is not on PATH.
const VENV_CHECKOV: &str = ".local/share/ringtail/checkov-venv/bin/checkov";

/// A checkov run takes ~3 s here; this is only there so that a wedged one fails the test.
const CHECKOV_TIMEOUT: Duration = Duration::from_secs(120);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn config_file() -> PathBuf {
    repo().join(".checkov.yaml")
}

/// `checkov` on PATH first (what `scripts/ensure-deps` checks first), then its virtualenv.
fn checkov() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(found) = std::env::split_paths(&path)
        .map(|dir| dir.join("checkov"))
        .find(|p| executable(p))
    {
        return found;
    }
    let venv = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(VENV_CHECKOV));
    match venv {
        Some(p) if executable(&p) => p,
        _ => panic!(
            "checkov is not installed (neither `checkov` on PATH nor ~/{VENV_CHECKOV}): \
             run scripts/ensure-deps"
        ),
    }
}

/// The files checkov scans: both overlays rendered into a temporary directory, and the
/// repository's Dockerfile. Rendered once for the whole test binary. The directory is also
/// checkov's working directory: checkov reads a `.checkov.yaml` from there by itself, and the
/// repository's must reach it only through `--config-file` (the run that checks for stale
/// entries must not see its skips). A `~/.checkov.yaml` would still be read.
struct Targets {
    dir: tempfile::TempDir,
    dockerfile: PathBuf,
}

impl Targets {
    /// The arguments of `-f`: `dev.yaml`, `prod.yaml` (relative to [`Targets::dir`]) and the
    /// Dockerfile's absolute path.
    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = OVERLAYS
            .iter()
            .map(|o| PathBuf::from(format!("{o}.yaml")))
            .collect();
        files.push(self.dockerfile.clone());
        files
    }
}

fn targets() -> &'static Targets {
    static TARGETS: OnceLock<Targets> = OnceLock::new();
    TARGETS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temp dir");
        for overlay in OVERLAYS {
            let rendered = render(overlay);
            std::fs::write(dir.path().join(format!("{overlay}.yaml")), rendered)
                .expect("write the rendered overlay");
        }
        let dockerfile = repo().join("Dockerfile");
        assert!(dockerfile.is_file(), "no Dockerfile at the repository root");
        Targets { dir, dockerfile }
    })
}

/// `kubectl kustomize deploy/overlays/<overlay>`.
fn render(overlay: &str) -> String {
    kustomize(&repo().join("deploy/overlays").join(overlay))
}

/// One check's outcome on one resource, as checkov's JSON reports it.
#[derive(Debug)]
struct Finding {
    check_type: String,
    check_id: String,
    check_name: String,
    resource: String,
    /// The scanned file's name: `dev.yaml`, `prod.yaml` or `Dockerfile`.
    file: String,
    lines: String,
    guideline: Option<String>,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} in {} (lines {}): {}; guideline: {}",
            self.check_id,
            self.resource,
            self.file,
            self.lines,
            self.check_name,
            self.guideline
                .as_deref()
                .unwrap_or("none offline (--skip-download)")
        )
    }
}

/// What one checkov run found, per framework (`kubernetes`, `dockerfile`).
#[derive(Debug, Default)]
struct Report {
    passed: Vec<Finding>,
    failed: Vec<Finding>,
    /// Per framework: (resource_count, parsing_errors) from checkov's summary.
    summary: BTreeMap<String, (u64, u64)>,
}

/// Runs checkov on every target with both frameworks, in the targets' directory, and parses
/// its JSON. `extra` comes after the fixed arguments.
fn run_checkov(extra: &[&str]) -> Report {
    let t = targets();
    let checkov = checkov();
    let mut cmd = Command::new(&checkov);
    cmd.arg("-f")
        .args(t.files())
        .args(["--framework", "kubernetes", "dockerfile"])
        .args(["--output", "json", "--skip-download", "--compact"])
        .args(extra)
        .current_dir(t.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (status, stdout, stderr) = output_within(&mut cmd, CHECKOV_TIMEOUT);
    // 0: nothing failed; 1: some check failed. Anything else is checkov itself failing.
    assert!(
        matches!(status.code(), Some(0 | 1)),
        "{} {extra:?} exited with {status}:\n{stderr}",
        checkov.display()
    );
    let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("checkov printed no JSON ({e}):\n{stdout}\n--- stderr:\n{stderr}")
    });
    // One object per framework that found something, in a list when there are several.
    let reports = match json {
        Value::Array(reports) => reports,
        one => vec![one],
    };
    let mut out = Report::default();
    for r in &reports {
        let check_type = r["check_type"]
            .as_str()
            .unwrap_or_else(|| panic!("a checkov report without check_type: {r}"));
        let count = |key: &str| r["summary"][key].as_u64().unwrap_or(0);
        out.summary.insert(
            check_type.to_string(),
            (count("resource_count"), count("parsing_errors")),
        );
        for (key, into) in [
            ("passed_checks", &mut out.passed),
            ("failed_checks", &mut out.failed),
        ] {
            for c in r["results"][key].as_array().into_iter().flatten() {
                into.push(finding(check_type, c));
            }
        }
    }
    out
}

fn finding(check_type: &str, c: &Value) -> Finding {
    let s = |key: &str| c[key].as_str().unwrap_or("?").to_string();
    let file = s("file_path");
    let lines = match c["file_line_range"].as_array().map(Vec::as_slice) {
        Some([a, b]) => format!("{a}-{b}"),
        _ => "?".to_string(),
    };
    Finding {
        check_type: check_type.to_string(),
        check_id: s("check_id"),
        check_name: s("check_name"),
        resource: s("resource"),
        file: file.rsplit('/').next().unwrap_or(&file).to_string(),
        lines,
        guideline: c["guideline"].as_str().map(str::to_string),
    }
}

/// Runs `cmd` to completion, reading its output as it goes; kills it and panics after
/// `timeout`.
fn output_within(
    cmd: &mut Command,
    timeout: Duration,
) -> (std::process::ExitStatus, String, String) {
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = String::new();
            pipe.read_to_string(&mut buf).map(|_| buf)
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for checkov") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{:?} ran longer than {timeout:?}", cmd.get_program());
        }
        thread::sleep(Duration::from_millis(50));
    };
    let text = |h: thread::JoinHandle<std::io::Result<String>>| {
        h.join()
            .expect("reader thread")
            .expect("checkov's output is UTF-8")
    };
    (status, text(stdout), text(stderr))
}

/// The run with the repository's `.checkov.yaml`, shared by the tests that read it.
fn with_config() -> &'static Report {
    static REPORT: OnceLock<Report> = OnceLock::new();
    REPORT.get_or_init(|| {
        let config = config_file();
        // checkov runs without a config, silently, when --config-file names a missing file.
        assert!(config.is_file(), "no {}", config.display());
        run_checkov(&["--config-file", config.to_str().expect("a UTF-8 path")])
    })
}

fn assert_no_failures(report: &Report, check_type: &str) {
    let failed: Vec<String> = report
        .failed
        .iter()
        .filter(|f| f.check_type == check_type)
        .map(|f| format!("  {f}"))
        .collect();
    assert!(
        failed.is_empty(),
        "checkov ({check_type}) fails {} check(s). Fix each in the manifests or the \
         Dockerfile, or accept it in .checkov.yaml with a comment saying why:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// The ids of the checks `resource` in `file` passed.
fn passed_ids<'a>(report: &'a Report, file: &str, resource: &str) -> BTreeSet<&'a str> {
    report
        .passed
        .iter()
        .filter(|f| f.file == file && f.resource == resource)
        .map(|f| f.check_id.as_str())
        .collect()
}

// ---------------------------------------------------------------- the scans

#[test]
fn rendered_overlays_fail_no_check_beyond_the_accepted_ones() {
    let report = with_config();
    let (resources, parsing_errors) = report.summary["kubernetes"];
    assert_eq!(
        parsing_errors, 0,
        "checkov could not parse a rendered overlay"
    );
    assert!(resources > 0, "checkov found no Kubernetes resources");
    assert_no_failures(report, "kubernetes");

    // checkov did judge the DaemonSet of each overlay, and agrees with contract §5 on these.
    let contract = [
        ("CKV_K8S_8", "liveness probe"),
        ("CKV_K8S_9", "readiness probe"),
        ("CKV_K8S_10", "CPU request"),
        ("CKV_K8S_12", "memory request"),
        ("CKV_K8S_13", "memory limit"),
        ("CKV_K8S_16", "not privileged"),
        ("CKV_K8S_17", "no host PID namespace"),
        ("CKV_K8S_18", "no host IPC namespace"),
        ("CKV_K8S_19", "no host network"),
        ("CKV_K8S_20", "allowPrivilegeEscalation: false"),
        ("CKV_K8S_22", "readOnlyRootFilesystem"),
        ("CKV_K8S_28", "no NET_RAW"),
        ("CKV_K8S_31", "seccomp RuntimeDefault"),
        ("CKV_K8S_37", "capabilities dropped"),
        ("CKV_K8S_39", "no SYS_ADMIN"),
    ];
    for overlay in OVERLAYS {
        let file = format!("{overlay}.yaml");
        let passed = passed_ids(report, &file, "DaemonSet.ringtail.ringtail");
        for (id, what) in contract {
            assert!(
                passed.contains(id),
                "{overlay}: the DaemonSet does not pass {id} ({what}); passed: {passed:?}"
            );
        }
    }
}

#[test]
fn dockerfile_fails_no_check_beyond_the_accepted_ones() {
    let report = with_config();
    assert_eq!(
        report.summary.get("dockerfile"),
        Some(&(1, 0)),
        "checkov scans the one Dockerfile, without parsing errors"
    );
    assert_no_failures(report, "dockerfile");
    let resource = format!("{}.USER", targets().dockerfile.display());
    assert_eq!(
        passed_ids(report, "Dockerfile", &resource),
        BTreeSet::from(["CKV_DOCKER_3", "CKV_DOCKER_8"]),
        "the image creates a user and its last USER is not root"
    );
}

#[test]
fn every_accepted_check_still_fails_without_its_skip() {
    let skipped: Vec<String> = skip_entries(&read_config())
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert!(!skipped.is_empty(), ".checkov.yaml skips nothing");
    // Only the skipped checks, without the config: each must still fail somewhere, or its
    // entry is stale (or a typo) and should go.
    let report = run_checkov(&["--check", &skipped.join(",")]);
    let mut failing: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for f in &report.failed {
        failing
            .entry(f.check_id.as_str())
            .or_default()
            .insert(f.file.as_str());
    }
    let stale: Vec<&String> = skipped
        .iter()
        .filter(|id| !failing.contains_key(id.as_str()))
        .collect();
    assert!(
        stale.is_empty(),
        ".checkov.yaml accepts {stale:?}, which no target fails any more: remove the entries \
         and their comments (failing: {failing:?})"
    );
}

// ---------------------------------------------------------------- the reasons

fn read_config() -> String {
    let path = config_file();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// One entry of `skip-check`: its 1-based line and id, and the comment that explains it
/// (the comment line right above the entry, or one at the end of the entry's own line).
#[derive(Debug, PartialEq)]
struct SkipEntry {
    line: usize,
    id: String,
    reason: Option<String>,
}

/// The `skip-check` block list of a checkov config, read as text (a YAML parser drops the
/// comments). Panics on any other shape of `skip-check`: one entry per line is what lets each
/// carry its own reason.
fn skip_entries(text: &str) -> Vec<SkipEntry> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("skip-check:"))
        .unwrap_or_else(|| panic!("no top-level skip-check in the config"));
    let inline = lines[start]["skip-check:".len()..]
        .split('#')
        .next()
        .unwrap_or("")
        .trim();
    assert!(
        inline.is_empty(),
        "skip-check: {inline}: write it as a block list, one id per line, each with its reason"
    );
    let comment = |l: &str| {
        l.trim_start()
            .strip_prefix('#')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
    };
    let mut entries = Vec::new();
    for (i, line) in lines.iter().enumerate().skip(start + 1) {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some(item) = trimmed.strip_prefix("- ") else {
            // A new top-level key ends the list; anything else inside it is not an id.
            assert!(
                !line.starts_with(char::is_whitespace),
                "line {}: {line:?} in skip-check is not a `- ID` entry",
                i + 1
            );
            break;
        };
        let (id, trailing) = match item.split_once('#') {
            Some((id, c)) => (id, comment(&format!("#{c}"))),
            None => (item, None),
        };
        let id = id
            .trim()
            .trim_matches(|c| c == '"' || c == '\'')
            .to_string();
        let above = lines[..i].last().and_then(|l| comment(l));
        entries.push(SkipEntry {
            line: i + 1,
            id,
            reason: trailing.or(above),
        });
    }
    entries
}

#[test]
fn every_accepted_check_has_a_reason() {
    let text = read_config();
    let entries = skip_entries(&text);
    let unexplained: Vec<String> = entries
        .iter()
        .filter(|e| e.reason.is_none())
        .map(|e| format!("line {}: {}", e.line, e.id))
        .collect();
    assert!(
        unexplained.is_empty(),
        ".checkov.yaml accepts checks without saying why (a comment right above the entry, or \
         at the end of its line): {unexplained:?}"
    );

    // What the text says is what checkov reads.
    let parsed: serde_yaml::Value = serde_yaml::from_str(&text).expect(".checkov.yaml is YAML");
    let ids: Vec<&str> = parsed["skip-check"]
        .as_sequence()
        .expect("skip-check is a list")
        .iter()
        .map(|v| v.as_str().expect("a check id"))
        .collect();
    assert_eq!(
        entries.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ids
    );
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an id is skipped twice: {ids:?}");
    for id in ids {
        assert!(
            id.starts_with("CKV_") || id.starts_with("CKV2_"),
            "{id:?} is not a checkov check id"
        );
    }
}

#[test]
fn skip_entries_finds_each_entrys_own_reason() {
    let text = "\
skip-download: true
skip-check:
  # no CPU limit: throttling grows the backlog
  - CKV_K8S_11
  - CKV_K8S_15
  # a comment cut off from its entry by a blank line

  - CKV_K8S_23
  - CKV_K8S_25 # the one capability it needs
  #
  - \"CKV2_K8S_6\"
framework:
  - kubernetes
";
    let reason = |s: &str| Some(s.to_string());
    let entry = |line, id: &str, reason| SkipEntry {
        line,
        id: id.to_string(),
        reason,
    };
    assert_eq!(
        skip_entries(text),
        vec![
            entry(
                4,
                "CKV_K8S_11",
                reason("no CPU limit: throttling grows the backlog")
            ),
            // The entry above has no comment line of its own to lend.
            entry(5, "CKV_K8S_15", None),
            entry(8, "CKV_K8S_23", None),
            entry(9, "CKV_K8S_25", reason("the one capability it needs")),
            // An empty comment says nothing; the list ends at the next top-level key.
            entry(11, "CKV2_K8S_6", None),
        ]
    );
}
