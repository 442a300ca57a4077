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

    /// Where a failing Lease call should be looked for.
    pub fn rbac_hint(&self) -> String {
        format!(
            "the Role in {} (logs.events.lease_namespace) grants leases get/create/update, and \
             logs.events.lease_name {:?} is a valid name",
            self.plan.namespace, self.plan.name
        )
    }

    /// One attempt to keep the Lease, or with `take` to take it when it is free or expired,
    /// writing `position` into it when it is past the one it holds. `Ok(true)`: this pod holds
    /// it now. A conflict (someone else wrote it in between) is read again once: an edit that
    /// left this pod the holder (an annotation added with kubectl) does not end its term.
    pub async fn try_acquire_or_renew(
        &mut self,
        position: Option<&EventsPos>,
        take: bool,
    ) -> Result<bool, kube::Error> {
        for _ in 0..2 {
            match self.attempt(position, take).await {
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                other => return other,
            }
        }
        Ok(false)
    }

    async fn attempt(
        &mut self,
        position: Option<&EventsPos>,
        take: bool,
    ) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let Some(existing) = self.api.get_opt(&self.plan.name).await? else {
            if !take {
                return Ok(false);
            }
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
            let created = self.api.create(&PostParams::default(), &lease).await?;
            return Ok(self.took(created));
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
        let mut spec = existing.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
        let mine = holder == self.plan.identity;
        let free = holder.is_empty() || observed_at.elapsed() >= duration;
        let may_write = mine || (take && free);
        if !may_write {
            self.current = Some(existing);
            return Ok(false);
        }
        let mut lease = existing;
        if !mine {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.plan.identity.clone());
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
        lease.spec = Some(spec);
        set_position(&mut lease, position);
        let written = self
            .api
            .replace(&self.plan.name, &PostParams::default(), &lease)
            .await?;
        Ok(self.took(written))
    }

    fn took(&mut self, l: Lease) -> bool {
        self.observed = l
            .metadata
            .resource_version
            .clone()
            .map(|rv| (rv, Instant::now()));
        self.current = Some(l);
        true
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
        let raw = stored_position(self.current.as_ref()?)?;
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

fn stored_position(lease: &Lease) -> Option<&String> {
    lease
        .metadata
        .annotations
        .as_ref()?
        .get(POSITION_ANNOTATION)
}

/// Writes `position` on the Lease when it is past the one there: the annotation never goes
/// back (an ack from an earlier term arriving late, or another holder having moved it on).
fn set_position(lease: &mut Lease, position: Option<&EventsPos>) {
    let Some(p) = position else { return };
    let Ok(new_rv) = p.resource_version.parse::<u64>() else {
        return;
    };
    let stored_rv = stored_position(lease)
        .and_then(|raw| parse_position(raw).ok())
        .and_then(|s| s.resource_version.parse::<u64>().ok());
    if stored_rv.is_some_and(|old| old >= new_rv) {
        return;
    }
    lease
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(POSITION_ANNOTATION.to_string(), render_position(p));
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
    fn the_annotation_never_goes_back() {
        let p = |rv: &str| EventsPos {
            resource_version: rv.into(),
            ts_ns: 1_732_530_000_000_000_000,
        };
        let at = |l: &Lease| {
            stored_position(l)
                .and_then(|raw| parse_position(raw).ok())
                .map(|p| p.resource_version)
        };
        let mut lease = Lease::default();
        set_position(&mut lease, Some(&p("10")));
        assert_eq!(at(&lease).as_deref(), Some("10"));
        set_position(&mut lease, Some(&p("9")));
        assert_eq!(at(&lease).as_deref(), Some("10"));
        set_position(&mut lease, Some(&p("x")));
        assert_eq!(at(&lease).as_deref(), Some("10"));
        set_position(&mut lease, None);
        assert_eq!(at(&lease).as_deref(), Some("10"));
        set_position(&mut lease, Some(&p("11")));
        assert_eq!(at(&lease).as_deref(), Some("11"));
    }
}
