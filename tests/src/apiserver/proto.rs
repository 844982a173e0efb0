//! Just enough Kubernetes protobuf to read what kubectl's typed clients send
//! us: the `k8s\0` envelope (runtime.Unknown) and a SelfSubjectAccessReview
//! (`kubectl auth can-i`). Other protobuf bodies are refused with 415.

use serde_json::{json, Map, Value};

/// The 4-byte prefix of Kubernetes protobuf bodies.
const MAGIC: &[u8] = b"k8s\0";

#[derive(Debug, thiserror::Error)]
#[error("malformed protobuf: {0}")]
pub struct ProtoError(&'static str);

/// One field of a message: number and value (varint or bytes).
enum Field<'a> {
    Varint(#[allow(dead_code, reason = "varint fields are skipped; the value is decoded to advance")] u64),
    Bytes(&'a [u8]),
}

fn varint(b: &[u8], i: &mut usize) -> Result<u64, ProtoError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i).ok_or(ProtoError("truncated varint"))?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(ProtoError("varint too long"))
}

fn fields(b: &[u8]) -> Result<Vec<(u64, Field<'_>)>, ProtoError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i)?;
        let (num, wire) = (key >> 3, key & 7);
        match wire {
            0 => out.push((num, Field::Varint(varint(b, &mut i)?))),
            1 => i += 8,
            5 => i += 4,
            2 => {
                let len = usize::try_from(varint(b, &mut i)?).map_err(|_| ProtoError("length"))?;
                let end = i.checked_add(len).filter(|e| *e <= b.len()).ok_or(ProtoError("truncated field"))?;
                out.push((num, Field::Bytes(&b[i..end])));
                i = end;
            }
            _ => return Err(ProtoError("unsupported wire type")),
        }
    }
    if i > b.len() {
        return Err(ProtoError("truncated fixed-width field"));
    }
    Ok(out)
}

fn string_fields(b: &[u8], names: &[(u64, &str)]) -> Result<Value, ProtoError> {
    let mut m = Map::new();
    for (num, f) in fields(b)? {
        if let (Some((_, name)), Field::Bytes(s)) = (names.iter().find(|(n, _)| *n == num), f) {
            m.insert(name.to_string(), json!(String::from_utf8_lossy(s)));
        }
    }
    Ok(Value::Object(m))
}

/// Unwraps the envelope: (apiVersion, kind, raw message bytes).
pub fn unwrap(body: &[u8]) -> Result<(String, String, Vec<u8>), ProtoError> {
    let rest = body.strip_prefix(MAGIC).ok_or(ProtoError("missing k8s magic"))?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), Vec::new());
    for (num, f) in fields(rest)? {
        match (num, f) {
            (1, Field::Bytes(tm)) => {
                let t = string_fields(tm, &[(1, "apiVersion"), (2, "kind")])?;
                api_version = t["apiVersion"].as_str().unwrap_or_default().to_string();
                kind = t["kind"].as_str().unwrap_or_default().to_string();
            }
            (2, Field::Bytes(r)) => raw = r.to_vec(),
            _ => {}
        }
    }
    Ok((api_version, kind, raw))
}

/// Decodes a SelfSubjectAccessReview (spec only; metadata and status carry nothing we need).
pub fn self_subject_access_review(raw: &[u8]) -> Result<Value, ProtoError> {
    let mut spec = Map::new();
    for (num, f) in fields(raw)? {
        let (2, Field::Bytes(s)) = (num, f) else { continue };
        for (n, f) in fields(s)? {
            match (n, f) {
                (1, Field::Bytes(ra)) => {
                    let names = [
                        (1, "namespace"),
                        (2, "verb"),
                        (3, "group"),
                        (4, "version"),
                        (5, "resource"),
                        (6, "subresource"),
                        (7, "name"),
                    ];
                    spec.insert("resourceAttributes".into(), string_fields(ra, &names)?);
                }
                (2, Field::Bytes(nra)) => {
                    spec.insert("nonResourceAttributes".into(), string_fields(nra, &[(1, "path"), (2, "verb")])?);
                }
                _ => {}
            }
        }
    }
    Ok(
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "metadata": {}, "spec": spec}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(num: u8, data: &[u8]) -> Vec<u8> {
        let mut v = vec![(num << 3) | 2, data.len() as u8];
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn decodes_can_i() {
        let ra = [field(1, b"default"), field(2, b"create"), field(5, b"pods")].concat();
        let spec = field(1, &ra);
        let ssar = [field(1, b""), field(2, &spec)].concat();
        let tm = [field(1, b"authorization.k8s.io/v1"), field(2, b"SelfSubjectAccessReview")].concat();
        let body = [MAGIC.to_vec(), field(1, &tm), field(2, &ssar)].concat();
        let (av, kind, raw) = unwrap(&body).expect("envelope");
        assert_eq!((av.as_str(), kind.as_str()), ("authorization.k8s.io/v1", "SelfSubjectAccessReview"));
        let v = self_subject_access_review(&raw).expect("ssar");
        assert_eq!(
            v["spec"]["resourceAttributes"],
            json!({"namespace": "default", "verb": "create", "resource": "pods"})
        );
        assert!(unwrap(b"k8s\0\x0a\x05ab").is_err());
    }
}
