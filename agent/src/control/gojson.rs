//! Reading JSON the way flannel's Go code does: `encoding/json` matches an
//! object's keys to struct fields ignoring case, so `{"network":…}` and
//! `{"Backend":{"type":"vxlan"}}` mean to flannel what their capitalised
//! spellings mean, and must to us too.

use serde_json::{Map, Value};

/// The value of field `name`: the key spelled exactly so if there is one,
/// else the first key equal to it ignoring ASCII case.
pub fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    })
}

/// The keys of `obj` that match none of `known`, ignoring case.
pub fn unknown_keys<'a>(obj: &'a Map<String, Value>, known: &[&str]) -> Vec<&'a str> {
    obj.keys()
        .filter(|key| !known.iter().any(|k| k.eq_ignore_ascii_case(key)))
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_ignoring_case_exact_first() {
        let obj: Map<String, Value> =
            serde_json::from_str(r#"{"network":"a","VNI":1,"vni":2,"Extra":true}"#)
                .expect("object");
        assert_eq!(field(&obj, "Network"), Some(&Value::from("a")));
        assert_eq!(field(&obj, "VNI"), Some(&Value::from(1)));
        assert_eq!(field(&obj, "Port"), None);
        assert_eq!(unknown_keys(&obj, &["Network", "VNI"]), vec!["Extra"]);
    }
}
