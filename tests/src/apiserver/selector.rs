//! Label and field selectors, parsed and matched as kube-apiserver does.

use serde_json::Value;

use super::resources::ResourceDef;
use super::status::ApiError;

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Exists,
    NotExists,
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Gt(i64),
    Lt(i64),
}

/// A parsed `labelSelector` query (`app=api,tier in (a,b),!canary`).
#[derive(Debug, Clone, Default)]
pub struct LabelSelector {
    reqs: Vec<(String, Op)>,
}

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn bad(req: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("unable to parse requirement: {why}: {req:?}"))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63 && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= 316 && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector { reqs });
        }
        for raw in split_top(s) {
            let r = raw.trim();
            if r.is_empty() {
                return Err(bad(raw, "found '', expected: identifier"));
            }
            let req = if let Some(k) = r.strip_prefix('!') {
                (k.trim().to_string(), Op::NotExists)
            } else if let Some((k, v)) = r.split_once("!=") {
                (k.trim().to_string(), Op::NotEq(v.trim().to_string()))
            } else if let Some((k, v)) = r.split_once("==") {
                (k.trim().to_string(), Op::Eq(v.trim().to_string()))
            } else if let Some((k, v)) = r.split_once('=') {
                (k.trim().to_string(), Op::Eq(v.trim().to_string()))
            } else if let Some((k, v)) = r.split_once('>') {
                let n =
                    v.trim().parse().map_err(|_| bad(r, "for 'Gt', 'Lt' operators, the value must be an integer"))?;
                (k.trim().to_string(), Op::Gt(n))
            } else if let Some((k, v)) = r.split_once('<') {
                let n =
                    v.trim().parse().map_err(|_| bad(r, "for 'Gt', 'Lt' operators, the value must be an integer"))?;
                (k.trim().to_string(), Op::Lt(n))
            } else if let Some(open) = r.find('(') {
                let head = r[..open].trim();
                let close = r.rfind(')').ok_or_else(|| bad(r, "found end of string, expected: ')'"))?;
                let values: Vec<String> =
                    r[open + 1..close].split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect();
                let mut words = head.split_whitespace();
                let (key, op) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                match op {
                    "in" => (key.to_string(), Op::In(values)),
                    "notin" => (key.to_string(), Op::NotIn(values)),
                    other => return Err(bad(r, &format!("found '{other}', expected: in, notin"))),
                }
            } else if r.contains(char::is_whitespace) {
                return Err(bad(r, "found unexpected token, expected: in, notin, =, ==, !="));
            } else {
                (r.to_string(), Op::Exists)
            };
            if !valid_key(&req.0) {
                return Err(ApiError::bad_request(format!(
                    "unable to parse requirement: values[0][{}]: Invalid value: {:?}: name part must consist of \
                     alphanumeric characters, '-', '_' or '.'",
                    req.0, req.0
                )));
            }
            let values: Vec<&String> = match &req.1 {
                Op::Eq(v) | Op::NotEq(v) => vec![v],
                Op::In(vs) | Op::NotIn(vs) => vs.iter().collect(),
                _ => vec![],
            };
            if let Some(v) = values.into_iter().find(|v| !valid_value(v)) {
                return Err(ApiError::bad_request(format!(
                    "unable to parse requirement: values[0][{}]: Invalid value: {v:?}: a valid label must be an \
                     empty string or consist of alphanumeric characters, '-', '_' or '.'",
                    req.0
                )));
            }
            reqs.push(req);
        }
        Ok(LabelSelector { reqs })
    }

    /// Builds a selector from a `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`).
    pub fn from_object(sel: &Value) -> Self {
        let mut reqs = Vec::new();
        if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in m {
                reqs.push((k.clone(), Op::Eq(v.as_str().unwrap_or_default().to_string())));
            }
        }
        for e in sel.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
            let key = e["key"].as_str().unwrap_or_default().to_string();
            let values: Vec<String> = e["values"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                .unwrap_or_default();
            let op = match e["operator"].as_str().unwrap_or_default() {
                "In" => Op::In(values),
                "NotIn" => Op::NotIn(values),
                "Exists" => Op::Exists,
                _ => Op::NotExists,
            };
            reqs.push((key, op));
        }
        LabelSelector { reqs }
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        self.reqs.iter().all(|(k, op)| {
            let v = labels.and_then(|l| l.get(k)).and_then(Value::as_str);
            match op {
                Op::Exists => v.is_some(),
                Op::NotExists => v.is_none(),
                Op::Eq(want) => v == Some(want.as_str()),
                Op::NotEq(want) => v != Some(want.as_str()),
                Op::In(set) => v.is_some_and(|v| set.iter().any(|s| s == v)),
                Op::NotIn(set) => v.is_none_or(|v| !set.iter().any(|s| s == v)),
                Op::Gt(n) => v.and_then(|v| v.parse::<i64>().ok()).is_some_and(|x| x > *n),
                Op::Lt(n) => v.and_then(|v| v.parse::<i64>().ok()).is_some_and(|x| x < *n),
            }
        })
    }
}

/// A parsed `fieldSelector` query (`spec.nodeName=n1,metadata.name!=x`).
#[derive(Debug, Clone, Default)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

impl FieldSelector {
    pub fn parse(s: &str, res: &ResourceDef) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for r in s.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (field, eq, value) = if let Some((k, v)) = r.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = r.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = r.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!("invalid selector: '{s}'; can't understand '{r}'")));
            };
            let field = field.trim();
            let known = field == "metadata.name"
                || (field == "metadata.namespace" && res.namespaced)
                || res.field_labels.contains(&field);
            if !known {
                return Err(ApiError::bad_request(format!("field label not supported: {field}")));
            }
            reqs.push((field.to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector { reqs })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(field, eq, want)| {
            let ptr = format!("/{}", field.replace('.', "/"));
            let have = match obj.pointer(&ptr) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                // spec.hostNetwork defaults to false; absent fields compare as "".
                None if field == "spec.hostNetwork" => "false".into(),
                _ => String::new(),
            };
            (have == *want) == *eq
        })
    }

    /// The `metadata.name=` value, if the selector pins one name (kubectl's wait uses this).
    pub fn pinned_name(&self) -> Option<&str> {
        self.reqs.iter().find(|(f, eq, _)| f == "metadata.name" && *eq).map(|(_, _, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_operators() {
        let pod = json!({"metadata": {"labels": {"app": "api", "tier": "web"}}});
        let ok = |s: &str| LabelSelector::parse(s).expect(s).matches(&pod);
        assert!(ok("app=api"));
        assert!(ok("app==api,tier"));
        assert!(!ok("app!=api"));
        assert!(ok("tier in (web, db)"));
        assert!(!ok("tier notin (web)"));
        assert!(ok("canary notin (x),!canary"));
        assert!(!ok("canary"));
        assert!(ok(""));
        assert!(LabelSelector::parse("a b").is_err());
        assert!(LabelSelector::parse("app=a b").is_err());
    }
}
