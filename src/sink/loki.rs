//! One push request to Loki: headers, auth, TLS, and what the answer means (protocol-facts §1.4,
//! §2.2): 2xx is stored; 429, 5xx and transport errors are worth retrying; any other status is
//! final, and the batch is a counted drop.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig};

use crate::config;
use crate::telemetry::metrics::METRICS;

/// What one attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Stored,
    /// 429, 5xx, or no answer (status -1); `retry_after` from Loki's (or a gateway's)
    /// `Retry-After` header.
    Retry {
        status: i32,
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Any other status: retrying cannot help.
    Reject {
        status: u16,
        reason: String,
    },
}

pub struct LokiClient {
    agent: ureq::Agent,
    url: String,
    tenant: String,
    bearer_token_file: PathBuf,
    basic_auth: config::BasicAuth,
    /// `host:port` of the URL: the `host` label of the `loki_write_*` metrics.
    pub host: String,
}

impl LokiClient {
    pub fn new(cfg: &config::Loki) -> Result<LokiClient, String> {
        let mut tls = TlsConfig::builder().disable_verification(cfg.tls.insecure_skip_verify);
        if !cfg.tls.ca_file.as_os_str().is_empty() {
            let pem = std::fs::read(&cfg.tls.ca_file).map_err(|e| {
                format!(
                    "loki.tls.ca_file: cannot read {}: {e}; mount the CA bundle there or clear the key",
                    cfg.tls.ca_file.display()
                )
            })?;
            let certs: Vec<_> = parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(PemItem::Certificate(c)) => Some(c.to_owned()),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(format!(
                    "loki.tls.ca_file: {} holds no PEM certificate",
                    cfg.tls.ca_file.display()
                ));
            }
            tls = tls.root_certs(RootCerts::new_with_certs(&certs));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.timeout.0))
            // One kept connection per push that may be in flight: no handshake per request.
            .max_idle_connections(cfg.max_in_flight.max(1))
            .max_idle_connections_per_host(cfg.max_in_flight.max(1))
            // Per connection (ureq's defaults are 128 KiB each): Loki's answers are a few
            // hundred bytes, and bodies go out through the output buffer in 64 KiB writes.
            .input_buffer_size(16 << 10)
            .output_buffer_size(64 << 10)
            .http_status_as_error(false)
            .user_agent(concat!("ringtail/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build()
            .into();
        Ok(LokiClient {
            agent,
            url: cfg.url.clone(),
            tenant: cfg.tenant_id.clone(),
            bearer_token_file: cfg.bearer_token_file.clone(),
            basic_auth: cfg.basic_auth.clone(),
            host: host_of(&cfg.url),
        })
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The `Authorization` header, read from its file on every request so that rotated tokens
    /// are picked up. The value is never logged.
    fn authorization(&self) -> Result<Option<String>, String> {
        let read = |key: &str, p: &PathBuf| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .map_err(|e| format!("{key}: cannot read {}: {e}", p.display()))
        };
        if !self.bearer_token_file.as_os_str().is_empty() {
            let token = read("loki.bearer_token_file", &self.bearer_token_file)?;
            return Ok(Some(format!("Bearer {token}")));
        }
        if !self.basic_auth.username.is_empty() {
            let password = read(
                "loki.basic_auth.password_file",
                &self.basic_auth.password_file,
            )?;
            let raw = format!("{}:{password}", self.basic_auth.username);
            return Ok(Some(format!("Basic {}", base64(raw.as_bytes()))));
        }
        Ok(None)
    }

    /// Sends one snappy-compressed `PushRequest`. `limit` shortens `loki.timeout` when ringtail
    /// is stopping, so that a hung request cannot hold the exit past its deadline.
    pub fn push(&self, body: &[u8], limit: Option<std::time::Duration>) -> Outcome {
        let auth = match self.authorization() {
            Ok(a) => a,
            Err(reason) => {
                return Outcome::Retry {
                    status: -1,
                    reason,
                    retry_after: None,
                }
            }
        };
        let mut req = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/x-protobuf")
            .header("Content-Encoding", "snappy");
        if !self.tenant.is_empty() {
            req = req.header("X-Scope-OrgID", &self.tenant);
        }
        if let Some(a) = &auth {
            req = req.header("Authorization", a);
        }
        let started = Instant::now();
        let result = match limit {
            Some(t) => req.config().timeout_global(Some(t)).build().send(body),
            None => req.send(body),
        };
        let (status, outcome) = match result {
            Err(e) => (
                -1,
                Outcome::Retry {
                    status: -1,
                    reason: e.to_string(),
                    retry_after: None,
                },
            ),
            Ok(mut resp) => {
                let code = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, crate::timefmt::now_ns()));
                let mut text = String::new();
                let _ = resp
                    .body_mut()
                    .as_reader()
                    .take(1024)
                    .read_to_string(&mut text);
                let reason = text.lines().next().unwrap_or("").to_string();
                let outcome = match code {
                    200..=299 => Outcome::Stored,
                    429 | 500..=599 => Outcome::Retry {
                        status: i32::from(code),
                        reason,
                        retry_after,
                    },
                    _ => Outcome::Reject {
                        status: code,
                        reason,
                    },
                };
                (i32::from(code), outcome)
            }
        };
        METRICS
            .request_duration
            .get_or_create(&vec![
                ("status_code", status.to_string()),
                ("host", self.host.clone()),
                ("tenant", self.tenant.clone()),
            ])
            .observe(started.elapsed().as_secs_f64());
        outcome
    }
}

/// `Retry-After` (RFC 9110 §10.2.3): delay-seconds, or an IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`) taken against `now_ns`. None when it is neither.
fn parse_retry_after(v: &str, now_ns: i64) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // IMF-fixdate: day-name "," SP day SP month SP year SP hh:mm:ss SP "GMT".
    let mut f = v.split_once(", ")?.1.split(' ');
    let (day, month, year, time, zone) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|&n| n == month)? as i64 + 1;
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, s) = (hms.next()??, hms.next()??, hms.next()??);
    if zone != "GMT" || f.next().is_some() || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = crate::timefmt::days_from_civil(year.parse().ok()?, m, day.parse().ok()?);
    let at_ns = (days * 86_400 + h * 3600 + mi * 60 + s).checked_mul(1_000_000_000)?;
    Some(Duration::from_nanos(
        at_ns.saturating_sub(now_ns).max(0) as u64
    ))
}

/// `host:port` of a URL, for metric labels.
pub fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.split(['/', '?']).next().unwrap_or(rest);
    hostport.rsplit('@').next().unwrap_or(hostport).to_string()
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for c in input.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_label() {
        assert_eq!(
            host_of("http://loki.loki.svc.cluster.local:3100/loki/api/v1/push"),
            "loki.loki.svc.cluster.local:3100"
        );
        assert_eq!(host_of("https://u:p@gw/loki/api/v1/push"), "gw");
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = crate::timefmt::days_from_civil(1994, 11, 6) * 86_400 * 1_000_000_000
            + (8 * 3600 + 49 * 60 + 7) * 1_000_000_000;
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(30))
        );
        // A date in the past: retry at once.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in [
            "",
            "-1",
            "1.5",
            "soon",
            "Sun, 06 Nov 1994 08:49:37 CET",
            "Sun, 06 Foo 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
