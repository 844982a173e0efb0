//! Patches: JSON merge patch (RFC 7386), strategic merge patch (the subset the
//! core types need: lists merged by their patch merge key, `$patch` directives)
//! and JSON patch (RFC 6902).

use serde_json::{Map, Value};

use super::status::ApiError;

/// RFC 7386: objects merge recursively, `null` deletes, everything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// The patch merge key of a list field, from the core types' `patchMergeKey` tags.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "containerStatuses"
        | "initContainerStatuses"
        | "ephemeralContainerStatuses"
        | "ownerReferences"
        | "resourceClaims" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ports" => "containerPort",
        "conditions" => "type",
        "hostAliases" => "ip",
        "podIPs" | "hostIPs" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

/// Strategic merge patch over JSON values (built-in types only).
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = p.clone();
        p.remove("$patch");
        *target = Value::Object(p);
        return Ok(());
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return Ok(()) };
    for (k, v) in p {
        // Directives for ordering and retained keys carry no data we keep.
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" || k == "$patch" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(del)) = (t.get_mut(field), v) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (v, merge_key(k)) {
            (Value::Array(items), Some(key)) => {
                let slot = t.entry(k.clone()).or_insert_with(|| Value::Array(vec![]));
                if !slot.is_array() {
                    *slot = Value::Array(vec![]);
                }
                merge_list(slot, items, key)?;
            }
            (Value::Object(_), _) => {
                strategic_merge_patch(t.entry(k.clone()).or_insert(Value::Null), v)?;
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(())
}

fn merge_list(target: &mut Value, items: &[Value], key: &str) -> Result<(), ApiError> {
    let Value::Array(list) = target else { return Ok(()) };
    for item in items {
        let directive = item.get("$patch").and_then(Value::as_str);
        if directive == Some("replace") {
            *list = items.iter().filter(|i| i.get("$patch").is_none()).cloned().collect();
            return Ok(());
        }
        let Some(id) = item.get(key) else {
            return Err(ApiError::bad_request(format!("map: {item} does not contain declared merge key: {key}")));
        };
        let pos = list.iter().position(|e| e.get(key) == Some(id));
        match (directive, pos) {
            (Some("delete"), Some(i)) => {
                list.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => strategic_merge_patch(&mut list[i], item)?,
            (_, None) => {
                let mut fresh = Value::Null;
                strategic_merge_patch(&mut fresh, item)?;
                list.push(fresh);
            }
        }
    }
    Ok(())
}

fn unescape(tok: &str) -> String {
    tok.replace("~1", "/").replace("~0", "~")
}

fn split_ptr(path: &str) -> Result<(String, String), ApiError> {
    let i = path.rfind('/').ok_or_else(|| ApiError::bad_request(format!("invalid JSON pointer {path:?}")))?;
    Ok((path[..i].to_string(), unescape(&path[i + 1..])))
}

fn remove_at(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    let (parent, last) = split_ptr(path)?;
    let missing = || {
        ApiError::new(
            422,
            "Invalid",
            format!("the server rejected our request due to an error in our request: path {path:?} does not exist"),
        )
    };
    match doc.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| missing())?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(missing())
            }
        }
        _ => Err(missing()),
    }
}

fn add_at(doc: &mut Value, path: &str, value: Value) -> Result<(), ApiError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_ptr(path)?;
    let missing = || {
        ApiError::new(
            422,
            "Invalid",
            format!("the server rejected our request due to an error in our request: missing path {path:?}"),
        )
    };
    match doc.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) => {
            let i = if last == "-" { a.len() } else { last.parse().map_err(|_| missing())? };
            if i > a.len() {
                return Err(missing());
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(missing()),
    }
}

/// RFC 6902 JSON patch.
pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), ApiError> {
    let ops = ops.as_array().ok_or_else(|| ApiError::bad_request("json patch must be an array of operations"))?;
    for op in ops {
        let path = op["path"].as_str().unwrap_or_default().to_string();
        match op["op"].as_str().unwrap_or_default() {
            "add" => add_at(doc, &path, op["value"].clone())?,
            "remove" => {
                remove_at(doc, &path)?;
            }
            "replace" => {
                remove_at(doc, &path)?;
                add_at(doc, &path, op["value"].clone())?;
            }
            "move" => {
                let v = remove_at(doc, op["from"].as_str().unwrap_or_default())?;
                add_at(doc, &path, v)?;
            }
            "copy" => {
                let from = op["from"].as_str().unwrap_or_default();
                let v = doc
                    .pointer(from)
                    .cloned()
                    .ok_or_else(|| ApiError::bad_request(format!("missing path {from:?}")))?;
                add_at(doc, &path, v)?;
            }
            "test" => {
                if doc.pointer(&path) != Some(&op["value"]) {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        format!("the server rejected our request due to an error in our request: testing value {path} failed"),
                    ));
                }
            }
            other => return Err(ApiError::bad_request(format!("Unexpected kind: {other}"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_containers_by_name() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "x"}], "ephemeralContainers": []}});
        let patch = json!({"spec": {"ephemeralContainers": [{"name": "dbg", "image": "y"}],
                                     "containers": [{"name": "a", "image": "z"}]}});
        strategic_merge_patch(&mut pod, &patch).expect("patch");
        assert_eq!(pod["spec"]["containers"], json!([{"name": "a", "image": "z"}]));
        assert_eq!(pod["spec"]["ephemeralContainers"][0]["name"], "dbg");
        let del = json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}});
        strategic_merge_patch(&mut pod, &del).expect("patch");
        assert_eq!(pod["spec"]["containers"], json!([]));
    }

    #[test]
    fn json_patch_ops() {
        let mut d = json!({"a": [1, 2], "b": {"c": 1}});
        json_patch(
            &mut d,
            &json!([{"op": "add", "path": "/a/-", "value": 3},
                                  {"op": "replace", "path": "/b/c", "value": 2},
                                  {"op": "remove", "path": "/a/0"}]),
        )
        .expect("patch");
        assert_eq!(d, json!({"a": [2, 3], "b": {"c": 2}}));
        assert!(json_patch(&mut d, &json!([{"op": "test", "path": "/b/c", "value": 9}])).is_err());
    }
}
