//! Stripe's request body: `application/x-www-form-urlencoded` with bracket nesting
//! (`metadata[org_id]=acme`, `items[0][price]=price_1`), built from JSON so callers write
//! parameters the way Stripe documents them.

use serde_json::{Map, Value};

/// Flattens a JSON object into Stripe's form pairs (array items in order). Nulls are left
/// out (Stripe reads `key=` as "unset", which is never what an absent field means here).
pub fn pairs(params: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Value::Object(map) = params {
        for (key, value) in map {
            flatten(key.clone(), value, &mut out);
        }
    }
    out
}

fn flatten(prefix: String, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Null => {}
        Value::Bool(b) => out.push((prefix, b.to_string())),
        Value::Number(n) => out.push((prefix, n.to_string())),
        Value::String(s) => out.push((prefix, s.clone())),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                flatten(format!("{prefix}[{index}]"), item, out);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                flatten(format!("{prefix}[{key}]"), item, out);
            }
        }
    }
}

/// The urlencoded body (or query string) of `params`.
pub fn encode(params: &Value) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs(params))
        .finish()
}

/// Reads a bracket-nested form back into JSON (every leaf a string; numeric segments make
/// arrays). The sandbox reads Herald's requests with it.
pub fn decode(body: &str) -> Value {
    let mut root = Value::Object(Map::new());
    for (key, value) in url::form_urlencoded::parse(body.as_bytes()) {
        let mut segments = Vec::new();
        let (head, mut rest) = match key.find('[') {
            Some(at) => (&key[..at], &key[at..]),
            None => (&key[..], ""),
        };
        segments.push(head.to_owned());
        while let Some(stripped) = rest.strip_prefix('[') {
            let Some(end) = stripped.find(']') else { break };
            segments.push(stripped[..end].to_owned());
            rest = &stripped[end + 1..];
        }
        insert(&mut root, &segments, value.into_owned());
    }
    root
}

fn insert(node: &mut Value, segments: &[String], value: String) {
    let Some((first, rest)) = segments.split_first() else {
        return;
    };
    if let Ok(index) = first.parse::<usize>()
        && let Value::Array(items) = node
    {
        while items.len() <= index {
            items.push(Value::Null);
        }
        if rest.is_empty() {
            items[index] = Value::String(value);
        } else {
            if items[index].is_null() {
                items[index] = container_for(&rest[0]);
            }
            insert(&mut items[index], rest, value);
        }
        return;
    }
    if let Value::Object(map) = node {
        if rest.is_empty() {
            map.insert(first.clone(), Value::String(value));
        } else {
            let child = map
                .entry(first.clone())
                .or_insert_with(|| container_for(&rest[0]));
            insert(child, rest, value);
        }
    }
}

fn container_for(segment: &str) -> Value {
    if segment.parse::<usize>().is_ok() {
        Value::Array(Vec::new())
    } else {
        Value::Object(Map::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nests_objects_and_arrays_with_brackets() {
        let params = json!({
            "customer": "cus_1",
            "items": [{"price": "price_a", "quantity": 2}, {"price": "price_b"}],
            "metadata": {"org_id": "acme", "herald_id": "01J"},
            "confirm": true,
            "description": null,
        });
        let mut encoded = pairs(&params);
        encoded.sort();
        let mut expected = vec![
            ("customer".to_owned(), "cus_1".to_owned()),
            ("items[0][price]".to_owned(), "price_a".to_owned()),
            ("items[0][quantity]".to_owned(), "2".to_owned()),
            ("items[1][price]".to_owned(), "price_b".to_owned()),
            ("metadata[org_id]".to_owned(), "acme".to_owned()),
            ("metadata[herald_id]".to_owned(), "01J".to_owned()),
            ("confirm".to_owned(), "true".to_owned()),
        ];
        expected.sort();
        assert_eq!(encoded, expected);
        assert_eq!(
            encode(&json!({"metadata": {"note": "a b&c=d"}})),
            "metadata%5Bnote%5D=a+b%26c%3Dd"
        );
    }

    #[test]
    fn decodes_what_it_encodes() {
        let params = json!({
            "amount": "1000",
            "items": [{"price": "price_a", "quantity": "2"}],
            "metadata": {"org_id": "acme"},
        });
        assert_eq!(decode(&encode(&params)), params);
    }
}
