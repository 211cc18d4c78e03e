//! Phase 5, rate-limit: GCRA limits (governor) per caller and per caller × function.
//!
//! Limiter state outlives config reloads, so editing an unrelated policy does not hand every
//! caller a fresh burst. Limits come from config (`rate_limits`) and from the `@rate_limit`
//! annotation of the permitting policy; when both apply to a function, the stricter wins.

use callgate_core::Call;
use callgate_core::config::RateLimitConfig;
use callgate_core::rate::RateSpec;
use callgate_core::refusal::Refusal;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

type Limiter = DefaultKeyedRateLimiter<String>;

#[derive(Default)]
pub struct RateLimits {
    per_caller: Mutex<HashMap<RateSpec, Arc<Limiter>>>,
    per_function: Mutex<HashMap<(String, RateSpec), Arc<Limiter>>>,
    checks: AtomicU64,
}

fn quota(spec: RateSpec) -> Quota {
    let count = NonZeroU32::new(spec.count).unwrap_or(NonZeroU32::MIN);
    // `RateSpec` parsing keeps `period / count` at a nanosecond or more; never panic here.
    let cell = (spec.period / count.get()).max(std::time::Duration::from_nanos(1));
    Quota::with_period(cell)
        .unwrap_or_else(|| Quota::per_second(count))
        .allow_burst(count)
}

fn limiter<K: std::hash::Hash + Eq + Clone>(
    map: &Mutex<HashMap<K, Arc<Limiter>>>,
    key: K,
    spec: RateSpec,
) -> Arc<Limiter> {
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    m.entry(key)
        .or_insert_with(|| Arc::new(RateLimiter::keyed(quota(spec))))
        .clone()
}

/// Takes one cell for `key`, or says how long to wait.
fn admit(l: &Limiter, key: &String, detail: impl FnOnce() -> String) -> Result<(), Refusal> {
    l.check_key(key).map_err(|not_until| Refusal::RateLimited {
        retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        detail: detail(),
    })
}

impl RateLimits {
    /// Admits the call or refuses it with 429 and how long to wait.
    pub fn check(
        &self,
        cfg: &RateLimitConfig,
        call: &Call,
        obligation: Option<RateSpec>,
    ) -> Result<(), Refusal> {
        let function = &call.function.name;
        let configured = cfg.per_function.get(function).copied();
        let per_fn = match (configured, obligation) {
            (Some(a), Some(b)) => Some(if a.per_second() <= b.per_second() {
                a
            } else {
                b
            }),
            (a, b) => a.or(b),
        };
        // The caller's overall limit first: a call it refuses spends nothing of the
        // function's quota (which would otherwise refuse again, later, for calls never made).
        if let Some(spec) = cfg.per_caller {
            let l = limiter(&self.per_caller, spec, spec);
            admit(&l, &call.principal.subject, || {
                format!("at most {spec} per caller")
            })?;
        }
        if let Some(spec) = per_fn {
            let l = limiter(&self.per_function, (function.clone(), spec), spec);
            admit(&l, &call.principal.subject, || {
                format!("{function} allows {spec} per caller")
            })?;
        }
        // Forget idle keys now and then so the maps don't grow without bound.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 10_000 == 9_999 {
            self.sweep();
        }
        Ok(())
    }

    /// Forgets callers whose state is as if they had not called, and then limiters left with
    /// no caller: those of limits a reload changed or removed go once their callers are idle.
    fn sweep(&self) {
        fn sweep_map<K>(map: &Mutex<HashMap<K, Arc<Limiter>>>) {
            let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
            m.retain(|_, l| {
                l.retain_recent();
                l.shrink_to_fit();
                // A limiter a check holds right now (taken from the map, not yet used) stays.
                !l.is_empty() || Arc::strong_count(l) > 1
            });
        }
        sweep_map(&self.per_caller);
        sweep_map(&self.per_function);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_sweep_drops_limiters_whose_callers_are_idle_and_keeps_busy_ones() {
        let limits = RateLimits::default();
        let fast = RateSpec {
            count: 1000,
            period: Duration::from_millis(1),
        };
        let slow = RateSpec {
            count: 1,
            period: Duration::from_secs(3600),
        };
        // A limit a reload replaced: its caller's one cell is back within a millisecond.
        let old = limiter(&limits.per_function, ("f".to_string(), fast), fast);
        admit(&old, &"ada".to_string(), String::new).unwrap();
        // The current limit, with a caller who spent the hour's only cell.
        let current = limiter(&limits.per_function, ("f".to_string(), slow), slow);
        admit(&current, &"ada".to_string(), String::new).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        // While a check holds the idle limiter, it stays; once let go, it goes.
        limits.sweep();
        let held = limits
            .per_function
            .lock()
            .unwrap()
            .contains_key(&("f".to_string(), fast));
        assert!(held, "a limiter in use was dropped");
        drop((old, current));
        limits.sweep();
        let m = limits.per_function.lock().unwrap();
        assert!(
            !m.contains_key(&("f".to_string(), fast)),
            "idle limiter kept"
        );
        assert!(
            m.contains_key(&("f".to_string(), slow)),
            "busy limiter dropped"
        );
        // The busy caller is still refused: nothing was forgotten that limits them.
        let kept = m[&("f".to_string(), slow)].clone();
        drop(m);
        assert!(admit(&kept, &"ada".to_string(), String::new).is_err());
    }
}
