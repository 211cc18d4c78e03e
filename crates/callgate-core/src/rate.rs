//! Rate-limit quotas as written in config and policy annotations: `"10/minute"`, `"5/s"`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// `count` calls per `period`, enforced as a GCRA with a burst of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RateSpec {
    pub count: u32,
    pub period: Duration,
}

impl RateSpec {
    /// Calls per second, for comparing two specs.
    pub fn per_second(&self) -> f64 {
        f64::from(self.count) / self.period.as_secs_f64()
    }
}

impl FromStr for RateSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (n, unit) = s
            .split_once('/')
            .ok_or_else(|| format!("rate {s:?} must look like \"10/minute\""))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("rate {s:?}: {n:?} is not a positive whole number"))?;
        if count == 0 {
            return Err(format!("rate {s:?}: the count must be at least 1"));
        }
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86400),
            other => {
                return Err(format!(
                    "rate {s:?}: unknown period {other:?} (second, minute, hour, day)"
                ));
            }
        };
        // The limiter emits one cell every `period / count`: it must be at least a nanosecond.
        if period.as_nanos() < u128::from(count) {
            return Err(format!(
                "rate {s:?}: more than one call per nanosecond cannot be enforced"
            ));
        }
        Ok(RateSpec { count, period })
    }
}

impl fmt::Display for RateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "second",
            60 => "minute",
            3600 => "hour",
            _ => "day",
        };
        write!(f, "{}/{}", self.count, unit)
    }
}

impl Serialize for RateSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RateSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for RateSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RateSpec".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9]+/(s|sec|second|m|min|minute|h|hour|d|day)$",
            "description": "calls per period, e.g. \"10/minute\""
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(
            "10/minute".parse::<RateSpec>().unwrap(),
            RateSpec {
                count: 10,
                period: Duration::from_secs(60)
            }
        );
        // The largest enforceable rate is one call per nanosecond.
        assert_eq!(
            "1000000000/s".parse::<RateSpec>().unwrap().count,
            1_000_000_000
        );
        for bad in [
            "0/minute",
            "x/minute",
            "10",
            "10/fortnight",
            "-1/s",
            "2000000000/second",
            "4294967295/s",
        ] {
            assert!(bad.parse::<RateSpec>().is_err(), "{bad}");
        }
    }
}
