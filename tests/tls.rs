//! TLS to Loki: `loki.tls.ca_file` and `insecure_skip_verify`, against a real TLS endpoint
//! (socat, with a certificate made by openssl for this test) in front of the test receiver.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

/// A TLS endpoint on 127.0.0.1 that forwards to `backend_port`; killed on drop.
struct TlsFront {
    child: Child,
    port: u16,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test CA and a server certificate it signed for 127.0.0.1: (ca, cert, key) paths.
fn test_pki(dir: &Path) -> (String, String, String) {
    let p = |name: &str| dir.join(name).display().to_string();
    let ext = dir.join("leaf.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let steps: [Vec<String>; 3] = [
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=ringtail-test-ca",
        ]
        .map(String::from)
        .into_iter()
        .chain(["-keyout".into(), p("ca.key"), "-out".into(), p("ca.pem")])
        .collect(),
        [
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
        ]
        .map(String::from)
        .into_iter()
        .chain(["-keyout".into(), p("key.pem"), "-out".into(), p("leaf.csr")])
        .collect(),
        ["x509", "-req", "-days", "1", "-CAcreateserial"]
            .map(String::from)
            .into_iter()
            .chain([
                "-in".into(),
                p("leaf.csr"),
                "-CA".into(),
                p("ca.pem"),
                "-CAkey".into(),
                p("ca.key"),
                "-extfile".into(),
                ext.display().to_string(),
                "-out".into(),
                p("cert.pem"),
            ])
            .collect(),
    ];
    for args in steps {
        let status = Command::new("openssl")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl is missing: run scripts/ensure-deps");
        assert!(status.success(), "openssl {args:?} failed");
    }
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

fn tls_front(cert: &str, key: &str, backend_port: u16) -> TlsFront {
    let port = free_port();
    let child = Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={cert},key={key},verify=0"
        ))
        .arg(format!("TCP:127.0.0.1:{backend_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat is missing: run scripts/ensure-deps");
    assert!(
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "socat did not listen"
    );
    TlsFront { child, port }
}

fn config(dir: &Path, pods: &Path, url: &str, port: u16, tls: &str) -> String {
    pods_only_config(&dir.join("data"), pods, url, port).replacen(
        "loki:\n",
        &format!("loki:\n  tls: {tls}\n"),
        1,
    )
}

#[test]
fn tls_with_a_ca_file_or_skipping_verification() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(dir.path());
    let rx = LokiReceiver::start();
    let front = tls_front(&cert, &key, rx.port());
    let url = format!("https://127.0.0.1:{}/loki/api/v1/push", front.port);

    // Trusting the test CA: delivered.
    let pods = dir.path().join("pods");
    PodDir::new(&pods, "ns", "p", "u")
        .container("c")
        .write_line(Stream::Stdout, "over tls");
    let port = free_port();
    let run1 = dir.path().join("run1");
    std::fs::create_dir_all(&run1).unwrap();
    let mut rt = Ringtail::start(
        &config(&run1, &pods, &url, port, &format!("{{ ca_file: {ca} }}")),
        &run1,
    );
    assert!(
        rx.wait_for_entries(1, Duration::from_secs(30)),
        "{}",
        rt.logs()
    );
    assert_eq!(rx.lines(), ["over tls"]);
    rt.sigterm();
    assert!(rt.wait_exit(Duration::from_secs(10)).is_some());

    // The system roots do not know the test CA: every attempt fails, nothing is stored.
    let run2 = dir.path().join("run2");
    std::fs::create_dir_all(&run2).unwrap();
    let port2 = free_port();
    let mut rt = Ringtail::start(&config(&run2, &pods, &url, port2, "{ }"), &run2);
    assert!(
        wait_until(Duration::from_secs(20), || try_metrics(port2).is_ok_and(
            |m| m.contains("loki_write_request_duration_seconds_count{status_code=\"-1\"")
        )),
        "{}",
        rt.logs()
    );
    assert_eq!(rx.entry_count(), 1);
    assert!(
        rt.stderr_text().contains("push to Loki failed"),
        "{}",
        rt.logs()
    );
    rt.sigterm();
    assert!(rt.wait_exit(Duration::from_secs(15)).is_some());

    // insecure_skip_verify: delivered without the CA.
    let run3 = dir.path().join("run3");
    std::fs::create_dir_all(&run3).unwrap();
    let port3 = free_port();
    let mut rt = Ringtail::start(
        &config(&run3, &pods, &url, port3, "{ insecure_skip_verify: true }"),
        &run3,
    );
    assert!(
        rx.wait_for_entries(2, Duration::from_secs(30)),
        "{}",
        rt.logs()
    );
    rt.sigterm();
    assert!(rt.wait_exit(Duration::from_secs(10)).is_some());
}

#[test]
fn a_ca_file_without_certificates_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("ca.pem");
    std::fs::write(&bogus, "not a certificate\n").unwrap();
    let pods = dir.path().join("pods");
    std::fs::create_dir_all(&pods).unwrap();
    let cfg = config(
        dir.path(),
        &pods,
        "https://127.0.0.1:9/loki/api/v1/push",
        free_port(),
        &format!("{{ ca_file: {} }}", bogus.display()),
    );
    let mut rt = Ringtail::start(&cfg, dir.path());
    let status = rt.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(!status.success());
    assert!(
        rt.stderr_text().contains("loki.tls.ca_file"),
        "{}",
        rt.logs()
    );
}
