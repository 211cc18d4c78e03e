//! JSON arguments → Cedar values, following the function's declared types.
//!
//! | JSON Schema type | Cedar type | notes |
//! |---|---|---|
//! | `string` | `String` | `like` for prefixes and globs |
//! | `integer` | `Long` | outside the 64-bit signed range → 422 |
//! | `number` | `decimal` | at most 4 fraction digits, else 422 |
//! | `boolean` | `Bool` | |
//! | `array` with typed `items` | `Set` | `contains`, `containsAll`, `containsAny` |
//! | `object` with `properties` | `Record` | optional properties need `has` |
//! | no `type` | not visible | policy cannot constrain untyped arguments |
//!
//! Absent optional arguments and `null` values are left out of the record, so a policy tests
//! them with `context.arguments has x`.

use callgate_core::args::pointer_token;
use callgate_core::refusal::{FieldError, Refusal};
use callgate_core::registry::ArgType;
use cedar_policy::RestrictedExpression;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

fn unrepresentable(pointer: &str, what: &str) -> Refusal {
    Refusal::InvalidArguments {
        errors: vec![FieldError {
            pointer: pointer.to_string(),
            detail: what.to_string(),
        }],
    }
}

/// A JSON number as a Cedar `decimal` literal, if it has at most four fraction digits.
fn decimal_literal(n: &serde_json::Number) -> Option<String> {
    let text = n.to_string();
    if text.contains(['e', 'E']) {
        return None;
    }
    let (int, frac) = text.split_once('.').unwrap_or((&text, "0"));
    if frac.len() > 4 || int.trim_start_matches('-').len() > 15 {
        return None;
    }
    // Cedar keeps a decimal as a 64-bit count of ten-thousandths.
    let units: i128 = int.trim_start_matches('-').parse::<i128>().ok()? * 10_000
        + format!("{frac:0<4}").parse::<i128>().ok()?;
    let units = if int.starts_with('-') { -units } else { units };
    if i64::try_from(units).is_err() {
        return None;
    }
    Some(format!("{int}.{frac}"))
}

/// Whether values of `ty` reach policy at all: not when their type is unknown (`Any`), also
/// as the items of an array — the Cedar schema leaves such arguments out.
fn in_policy(ty: &ArgType) -> bool {
    match ty {
        ArgType::Any => false,
        ArgType::Array(item) => in_policy(item),
        _ => true,
    }
}

/// Converts one value of type `ty` at `pointer`.
pub fn to_cedar(
    pointer: &str,
    v: &Value,
    ty: &ArgType,
) -> Result<Option<RestrictedExpression>, Refusal> {
    if !in_policy(ty) {
        return Ok(None);
    }
    Ok(Some(match (ty, v) {
        (_, Value::Null) | (ArgType::Any, _) => return Ok(None),
        (ArgType::String, Value::String(s)) => RestrictedExpression::new_string(s.clone()),
        (ArgType::Integer, Value::Number(n)) => {
            let i = n
                .as_i64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                        .map(|f| f as i64)
                })
                .ok_or_else(|| {
                    unrepresentable(pointer, "integer outside the 64-bit signed range")
                })?;
            RestrictedExpression::new_long(i)
        }
        (ArgType::Number, Value::Number(n)) => {
            let lit = decimal_literal(n).ok_or_else(|| {
                unrepresentable(
                    pointer,
                    "number needs more than 4 fraction digits or is too large",
                )
            })?;
            RestrictedExpression::new_decimal(lit)
        }
        (ArgType::Boolean, Value::Bool(b)) => RestrictedExpression::new_bool(*b),
        (ArgType::Array(item), Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, it) in items.iter().enumerate() {
                match to_cedar(&format!("{pointer}/{i}"), it, item)? {
                    Some(e) => out.push(e),
                    None => {
                        return Err(unrepresentable(
                            &format!("{pointer}/{i}"),
                            "null inside an array",
                        ));
                    }
                }
            }
            RestrictedExpression::new_set(out)
        }
        (ArgType::Object(fields), Value::Object(map)) => record(pointer, map, fields)?,
        _ => {
            return Err(unrepresentable(
                pointer,
                "value does not have the declared type",
            ));
        }
    }))
}

/// Converts an object with declared `fields` into a Cedar record.
pub fn record(
    pointer: &str,
    map: &Map<String, Value>,
    fields: &BTreeMap<String, (ArgType, bool)>,
) -> Result<RestrictedExpression, Refusal> {
    let mut out = Vec::new();
    for (name, (ty, _)) in fields {
        if let Some(v) = map.get(name) {
            let p = format!("{pointer}/{}", pointer_token(name));
            if let Some(e) = to_cedar(&p, v, ty)? {
                out.push((name.clone(), e));
            }
        }
    }
    RestrictedExpression::new_record(out).map_err(|e| Refusal::Internal {
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn untyped_arrays_stay_out_of_policy() {
        let untyped = ArgType::Array(Box::new(ArgType::Any));
        assert!(
            to_cedar("/tags", &json!(["a", 1]), &untyped)
                .unwrap()
                .is_none()
        );
        let nested = ArgType::Array(Box::new(untyped));
        assert!(to_cedar("/t", &json!([["a"]]), &nested).unwrap().is_none());
        // A typed array still reaches policy, and a null inside it is refused.
        let typed = ArgType::Array(Box::new(ArgType::String));
        assert!(to_cedar("/t", &json!(["a"]), &typed).unwrap().is_some());
        assert!(to_cedar("/t", &json!(["a", null]), &typed).is_err());
    }

    #[test]
    fn decimals_beyond_cedars_range_are_refused_as_arguments() {
        for ok in [json!(1.5), json!(-3), json!(-922337203685477_i64)] {
            assert!(
                to_cedar("/a", &ok, &ArgType::Number).unwrap().is_some(),
                "{ok}"
            );
        }
        assert!(decimal_literal(&serde_json::Number::from(922337203685477_i64)).is_some());
        for bad in [
            serde_json::Number::from(999999999999999_i64),
            serde_json::Number::from(-999999999999999_i64),
            serde_json::Number::from(922337203685478_i64),
        ] {
            assert_eq!(decimal_literal(&bad), None, "{bad}");
            let r = to_cedar("/amount", &Value::Number(bad), &ArgType::Number).unwrap_err();
            assert_eq!(r.status(), 422);
        }
    }
}
