//! Leader election on a `coordination.k8s.io/v1` Lease in ringtail's own namespace, so that one
//! pod per cluster ships Events, and the place where the shipped position is kept.
//!
//! A small loop of our own rather than `kube-lease-manager`: it is client-go's
//! `tryAcquireOrRenew` (read the Lease, take it when it is free or expired, write it with its
//! resourceVersion so that two candidates cannot both win), and the Events position has to be
//! written in the same update anyway. Timing is the Kubernetes components' defaults: a 15 s
//! lease, renewed every 2 s, given up when it could not be renewed for 10 s. Expiry is measured
//! on the local clock from when the Lease was last seen to change, as client-go does, so clock
//! skew between nodes does not matter.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use serde::{Deserialize, Serialize};

use crate::entry::EventsPos;

pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// The annotation that holds the last acked Events position.
pub const POSITION_ANNOTATION: &str = "ringtail.io/events-position";

/// Which Lease, and who we are.
pub struct Plan {
    pub namespace: String,
    pub name: String,
    /// `$POD_NAME`, else the node name: unique per DaemonSet pod, and the same across a
    /// container restart, so a restarted holder takes its Lease back at once.
    pub identity: String,
}

/// One candidate.
pub struct Elector {
    api: Api<Lease>,
    plan: Plan,
    /// The Lease as last read or written.
    current: Option<Lease>,
    /// The resourceVersion last seen, and when it was first seen.
    observed: Option<(String, Instant)>,
}

/// The position as stored in the annotation.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Stored {
    #[serde(rename = "resourceVersion")]
    resource_version: String,
    /// RFC3339 with nanoseconds, UTC.
    timestamp: String,
}

impl Elector {
    pub fn new(client: kube::Client, plan: Plan) -> Elector {
        Elector {
            api: Api::namespaced(client, &plan.namespace),
            plan,
            current: None,
            observed: None,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "Lease {}/{} (as {})",
            self.plan.namespace, self.plan.name, self.plan.identity
        )
    }

    /// One attempt to take or keep the Lease, writing `position` into it when given. `Ok(true)`:
    /// this pod holds it now.
    pub async fn try_acquire_or_renew(
        &mut self,
        position: Option<&EventsPos>,
    ) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let Some(existing) = self.api.get_opt(&self.plan.name).await? else {
            let mut lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.plan.name.clone()),
                    namespace: Some(self.plan.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.plan.identity.clone()),
                    lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            set_position(&mut lease, position);
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(l) => self.took(l),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let rv = existing
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let observed_at = match &self.observed {
            Some((seen, at)) if *seen == rv => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((rv, at));
                at
            }
        };
        let spec = existing.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
        let mine = holder == self.plan.identity;
        if !holder.is_empty() && !mine && observed_at.elapsed() < duration {
            self.current = Some(existing);
            return Ok(false);
        }
        let mut lease = existing;
        let mut spec = spec;
        if !mine {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.plan.identity.clone());
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
        lease.spec = Some(spec);
        set_position(&mut lease, position);
        match self
            .api
            .replace(&self.plan.name, &PostParams::default(), &lease)
            .await
        {
            Ok(l) => self.took(l),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn took(&mut self, l: Lease) -> Result<bool, kube::Error> {
        self.observed = l
            .metadata
            .resource_version
            .clone()
            .map(|rv| (rv, Instant::now()));
        self.current = Some(l);
        Ok(true)
    }

    /// Gives the Lease up (client-go's release on cancel), so another pod takes over at once
    /// instead of after the lease duration. Only when this pod still holds it.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.current.take() else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.plan.identity.as_str()) {
            return Ok(());
        }
        let now = MicroTime(Timestamp::now());
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now.clone());
        spec.acquire_time = Some(now);
        self.api
            .replace(&self.plan.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }

    /// The position recorded on the Lease as last read.
    pub fn position(&self) -> Option<EventsPos> {
        let raw = self
            .current
            .as_ref()?
            .metadata
            .annotations
            .as_ref()?
            .get(POSITION_ANNOTATION)?;
        match parse_position(raw) {
            Ok(p) => Some(p),
            Err(e) => {
                log::warn!(
                    "{}: annotation {POSITION_ANNOTATION} is not a position ({e}); shipping the \
                     Events the API still has",
                    self.describe()
                );
                None
            }
        }
    }
}

fn set_position(lease: &mut Lease, position: Option<&EventsPos>) {
    if let Some(p) = position {
        lease
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(POSITION_ANNOTATION.to_string(), render_position(p));
    }
}

fn render_position(p: &EventsPos) -> String {
    let stored = Stored {
        resource_version: p.resource_version.clone(),
        timestamp: {
            let mut t = String::new();
            crate::timefmt::format_rfc3339_ns(p.ts_ns, &mut t);
            t
        },
    };
    serde_json::to_string(&stored).unwrap_or_default()
}

fn parse_position(raw: &str) -> Result<EventsPos, String> {
    let s: Stored = serde_json::from_str(raw).map_err(|e| e.to_string())?;
    let ts_ns = crate::timefmt::parse_rfc3339_ns(s.timestamp.as_bytes())
        .ok_or_else(|| format!("timestamp {:?} is not RFC3339", s.timestamp))?;
    Ok(EventsPos {
        resource_version: s.resource_version,
        ts_ns,
    })
}

/// Whether `a` is past `b`: by resourceVersion (etcd's revision, which only grows) when both are
/// numbers, as they are on every API server; else by timestamp.
pub fn is_after(a: &EventsPos, b: &EventsPos) -> bool {
    match (
        a.resource_version.parse::<u64>(),
        b.resource_version.parse::<u64>(),
    ) {
        (Ok(x), Ok(y)) => x > y,
        _ => a.ts_ns > b.ts_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_through_the_annotation() {
        let p = EventsPos {
            resource_version: "12345".into(),
            ts_ns: 1_732_530_000_123_456_789,
        };
        let raw = render_position(&p);
        assert_eq!(
            raw,
            r#"{"resourceVersion":"12345","timestamp":"2024-11-25T10:20:00.123456789Z"}"#
        );
        assert_eq!(parse_position(&raw), Ok(p));
        assert!(parse_position("{}").is_err());
        assert!(parse_position(r#"{"resourceVersion":"1","timestamp":"x"}"#).is_err());
    }

    #[test]
    fn order_is_by_resource_version_else_time() {
        let p = |rv: &str, ts| EventsPos {
            resource_version: rv.into(),
            ts_ns: ts,
        };
        assert!(is_after(&p("10", 1), &p("9", 5)));
        assert!(!is_after(&p("9", 5), &p("10", 1)));
        assert!(!is_after(&p("9", 5), &p("9", 5)));
        assert!(is_after(&p("x", 6), &p("9", 5)));
        assert!(!is_after(&p("x", 5), &p("9", 5)));
    }
}
