//! Bounds what anonymous traffic writes to the audit log: per source address and minute, the
//! first refusals of callers with no verified identity are recorded one by one, the rest are
//! counted and recorded as one record (`repeated`, `first_ms`) when the minute is over.
//!
//! Every refusal stays accounted for — a summary names how many it stands for, by code — but
//! 3,000 unauthenticated requests from one address cost a handful of records, not 3,000.
//! Addresses beyond [`MAX_SOURCES`] tracked at once share one window (no source), so the table
//! itself stays bounded too. The sampler does no IO: [`crate::audit::Audit`] feeds it and
//! queues what it returns.

use callgate_audit::record::RefusedEvent;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

/// The window over which `per_window` refusals are recorded one by one.
pub const WINDOW_MS: u64 = 60_000;
/// Source addresses tracked at once; further ones share the window of no source.
pub const MAX_SOURCES: usize = 10_000;

#[derive(Default)]
struct Window {
    start_ms: u64,
    recorded: u32,
    count: u64,
    first_ms: u64,
    by_code: BTreeMap<String, u64>,
    last: Option<RefusedEvent>,
}

impl Window {
    /// The record standing for this window's counted refusals, if any.
    fn summary(self, now_ms: u64) -> Option<RefusedEvent> {
        let mut last = self.last?;
        let codes: Vec<String> = self
            .by_code
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        last.detail = format!(
            "{} more refused requests without a verified identity from this address, past the first {} of the minute (by code: {}); the last: {}",
            self.count,
            self.recorded,
            codes.join(", "),
            last.detail
        );
        last.repeated = Some(self.count);
        last.first_ms = Some(self.first_ms);
        last.time_ms = now_ms;
        Some(last)
    }
}

/// What to do with one anonymous refusal.
pub struct Verdict {
    /// The summary of the window it ended, to record first.
    pub ended: Option<RefusedEvent>,
    /// Whether to record it one by one (else it was counted into its window).
    pub record: bool,
}

pub struct Sampler {
    per_window: u32,
    windows: Mutex<HashMap<Option<IpAddr>, Window>>,
}

impl Sampler {
    pub fn new(per_window: u32) -> Sampler {
        Sampler {
            per_window,
            windows: Mutex::default(),
        }
    }

    /// Takes one anonymous refusal at `now_ms`.
    pub fn admit(&self, event: RefusedEvent, source: Option<IpAddr>, now_ms: u64) -> Verdict {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let key = if windows.len() >= MAX_SOURCES && !windows.contains_key(&source) {
            None
        } else {
            source
        };
        let mut ended = None;
        let w = windows.entry(key).or_insert_with(|| Window {
            start_ms: now_ms,
            ..Window::default()
        });
        if now_ms.saturating_sub(w.start_ms) >= WINDOW_MS {
            let old = std::mem::replace(
                w,
                Window {
                    start_ms: now_ms,
                    ..Window::default()
                },
            );
            ended = old.summary(now_ms);
        }
        if w.recorded < self.per_window {
            w.recorded += 1;
            return Verdict {
                ended,
                record: true,
            };
        }
        if w.count == 0 {
            w.first_ms = event.time_ms;
        }
        w.count += 1;
        *w.by_code.entry(event.code.clone()).or_default() += 1;
        w.last = Some(event);
        Verdict {
            ended,
            record: false,
        }
    }

    /// The summaries of windows over by `now_ms` (all of them with `all`, at shutdown); their
    /// sources are forgotten.
    pub fn due(&self, now_ms: u64, all: bool) -> Vec<RefusedEvent> {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let over: Vec<_> = windows
            .iter()
            .filter(|(_, w)| all || now_ms.saturating_sub(w.start_ms) >= WINDOW_MS)
            .map(|(k, _)| *k)
            .collect();
        over.into_iter()
            .filter_map(|k| windows.remove(&k)?.summary(now_ms))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(n: u64, code: &str) -> RefusedEvent {
        RefusedEvent {
            time_ms: n,
            request_id: format!("r{n}"),
            session: None,
            subject: None,
            function: None,
            source: Some("192.0.2.1".into()),
            ingress: "proxy".into(),
            status: 401,
            code: code.into(),
            detail: "no credential".into(),
            repeated: None,
            first_ms: None,
        }
    }

    #[test]
    fn a_flood_from_one_address_is_a_few_records_and_one_count() {
        let s = Sampler::new(3);
        let ip: Option<IpAddr> = Some("192.0.2.1".parse().unwrap());
        let other: Option<IpAddr> = Some("192.0.2.2".parse().unwrap());
        let mut recorded = 0;
        for n in 0..1000 {
            let code = if n % 10 == 0 {
                "bad-request"
            } else {
                "unauthenticated"
            };
            let v = s.admit(refusal(n, code), ip, 1_000 + n);
            assert!(v.ended.is_none());
            recorded += usize::from(v.record);
        }
        assert_eq!(recorded, 3);
        // Another address has places of its own.
        assert!(s.admit(refusal(5, "unauthenticated"), other, 2_000).record);
        assert!(s.due(30_000, false).is_empty(), "the minute is not over");
        // The next minute's first refusal ends the window: its summary comes first.
        let v = s.admit(refusal(2000, "unauthenticated"), ip, 61_000);
        assert!(v.record, "a new minute records again");
        let sum = v.ended.expect("the ended minute's summary");
        assert_eq!(sum.repeated, Some(997));
        assert_eq!(sum.first_ms, Some(3));
        assert_eq!(sum.request_id, "r999");
        assert!(
            sum.detail.contains("bad-request 99, unauthenticated 898"),
            "{}",
            sum.detail
        );
        // The other address's window had nothing counted: no summary, and it is forgotten.
        assert!(s.due(200_000, false).is_empty());
        assert!(s.windows.lock().unwrap().is_empty());
    }

    #[test]
    fn summaries_are_due_when_the_minute_is_over_or_at_shutdown() {
        let s = Sampler::new(1);
        let ip: Option<IpAddr> = Some("2001:db8::1".parse().unwrap());
        for n in 0..5 {
            s.admit(refusal(n, "unauthenticated"), ip, n);
        }
        let due = s.due(10, true);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].repeated, Some(4));
        assert!(s.due(100_000, true).is_empty(), "each is summed once");
        // With none recorded one by one, every refusal is counted.
        let s = Sampler::new(0);
        assert!(!s.admit(refusal(1, "unauthenticated"), ip, 1).record);
        assert_eq!(s.due(WINDOW_MS + 1, false)[0].repeated, Some(1));
    }

    #[test]
    fn the_table_of_addresses_stays_bounded() {
        let s = Sampler::new(1);
        for i in 0..(MAX_SOURCES as u32 + 500) {
            let ip = Some(IpAddr::from(std::net::Ipv4Addr::from(i)));
            s.admit(refusal(1, "unauthenticated"), ip, 1);
        }
        assert_eq!(s.windows.lock().unwrap().len(), MAX_SOURCES + 1);
    }
}
