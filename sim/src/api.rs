//! The simulated Kubernetes API server: objects as JSON, one resourceVersion counter, and
//! the checks the operator relies on: resourceVersion preconditions (409), create of an
//! existing object (409), missing objects (404), finalizers holding a deletion, owner
//! references collected with their owner.
//!
//! Server-side apply is approximated: one field manager per object, whose applied `data`
//! replaces the object's, labels, annotations and owner references merged in, a
//! `managedFields` entry naming the manager's data keys; an apply of a missing object
//! creates it (as the real one does without a resourceVersion; with one, the real server
//! answers 409/404 — see docs/simulation.md). Field ownership conflicts between managers
//! are not modelled (every apply the operator sends forces). JSON patch is refused (415):
//! the operator sends none.

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::Full;
use jiff::Timestamp;
use serde_json::{Value, json};

use crate::hub::ApiReply;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub resource: &'static str,
    pub ns: String,
    pub name: String,
}

/// An object changed (or went): watchers of its kind see it, later.
#[derive(Clone, Debug)]
pub struct Change {
    pub key: Key,
    /// `None`: deleted.
    pub object: Option<Value>,
}

#[derive(Default)]
pub struct Api {
    pub objects: BTreeMap<Key, Value>,
    pub rv: u64,
    pub changes: Vec<Change>,
    /// Events published, by (namespace, credential).
    pub events: BTreeMap<(String, String), u64>,
    pub uid: u64,
    /// Keep every version written (scripted runs: what a watch would have seen).
    pub record: bool,
    pub log: Vec<(Key, Option<Value>)>,
    /// `rv`, for the processes' tasks to stamp what they send with.
    pub shared_rv: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

fn resource(name: &str) -> Option<&'static str> {
    Some(match name {
        "secrets" => "secrets",
        "eagleeyecredentials" => "eagleeyecredentials",
        "events" => "events",
        "leases" => "leases",
        "pods" => "pods",
        _ => return None,
    })
}

pub fn status(code: u16, reason: &str) -> ApiReply {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": reason, "reason": reason, "code": code,
    });
    reply(code, &body)
}

fn reply(code: u16, body: &Value) -> ApiReply {
    http::Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(body).unwrap_or_default(),
        )))
        .map_err(|e| e.to_string())
}

fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

pub fn rv_of(v: &Value) -> Option<&str> {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
}

impl Api {
    fn next_rv(&mut self) -> String {
        self.rv += 1;
        (self.shared_rv).store(self.rv, std::sync::atomic::Ordering::Relaxed);
        self.rv.to_string()
    }

    /// Stores `object` under `key` as a write by anyone (the driver's people use it too).
    pub fn put(&mut self, key: Key, mut object: Value) -> Value {
        let rv = self.next_rv();
        let m = object
            .as_object_mut()
            .expect("object")
            .entry("metadata")
            .or_insert(json!({}));
        m["resourceVersion"] = json!(rv);
        m["name"] = json!(key.name);
        m["namespace"] = json!(key.ns);
        if m.get("uid").is_none() {
            self.uid += 1;
            m["uid"] = json!(format!("uid-{}", self.uid));
        }
        if key.resource == "secrets" {
            // stringData is write-only: folded into data.
            if let Some(Value::Object(sd)) =
                object.as_object_mut().and_then(|o| o.remove("stringData"))
            {
                let data = object
                    .as_object_mut()
                    .expect("object")
                    .entry("data")
                    .or_insert(json!({}));
                for (k, v) in sd {
                    let text = v.as_str().unwrap_or_default();
                    data[k] = json!(b64(text.as_bytes()));
                }
            }
        }
        if key.resource == "secrets" || key.resource == "eagleeyecredentials" {
            self.changes.push(Change {
                key: key.clone(),
                object: Some(object.clone()),
            });
        }
        if self.record {
            self.log.push((key.clone(), Some(object.clone())));
        }
        self.objects.insert(key, object.clone());
        object
    }

    /// Deletes `key`, or marks it deleted while finalizers hold it; a deleted object's
    /// dependents (owner references with its uid) go too.
    pub fn delete(&mut self, key: &Key, now: Timestamp) {
        let Some(obj) = self.objects.get(key).cloned() else {
            return;
        };
        let held = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if held {
            if obj.pointer("/metadata/deletionTimestamp").is_none() {
                let mut obj = obj;
                obj["metadata"]["deletionTimestamp"] = json!(secs(now));
                self.put(key.clone(), obj);
            }
            return;
        }
        self.objects.remove(key);
        if self.record {
            self.log.push((key.clone(), None));
        }
        self.changes.push(Change {
            key: key.clone(),
            object: None,
        });
        let uid = obj.pointer("/metadata/uid").cloned();
        let dependents: Vec<Key> = self
            .objects
            .iter()
            .filter(|(k, o)| {
                k.ns == key.ns
                    && o.pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .is_some_and(|refs| refs.iter().any(|r| r.get("uid") == uid.as_ref()))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for d in dependents {
            self.delete(&d, now);
        }
    }

    pub fn get(&self, resource: &'static str, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&Key {
            resource,
            ns: ns.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Serves one request that reached the server.
    pub fn serve(
        &mut self,
        method: &http::Method,
        path: &str,
        query: &str,
        content_type: &str,
        body: &[u8],
        now: Timestamp,
    ) -> ApiReply {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        // /api/v1/namespaces/ns/res[/name[/sub]] or /apis/g/v/namespaces/ns/res[/name[/sub]]
        let rest = match parts.first() {
            Some(&"api") => &parts[2..],
            Some(&"apis") => &parts[3.min(parts.len())..],
            _ => return status(404, "NotFound"),
        };
        if rest.len() < 3 || rest[0] != "namespaces" {
            return status(404, "NotFound");
        }
        let ns = rest[1].to_owned();
        let Some(res) = resource(rest[2]) else {
            return status(404, "NotFound");
        };
        let name = rest.get(3).map(|s| s.to_string());
        let sub = rest.get(4).copied();
        let body: Value = match body.is_empty() {
            true => Value::Null,
            false => match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(_) => return status(400, "BadRequest"),
            },
        };
        let Some(name) = name else {
            return match *method {
                http::Method::GET => reply(
                    200,
                    &json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {}, "items": []}),
                ),
                http::Method::POST => self.create(res, ns, body),
                _ => status(405, "MethodNotAllowed"),
            };
        };
        let key = Key {
            resource: res,
            ns,
            name,
        };
        let current = self.objects.get(&key).cloned();
        let precondition = |body: &Value, current: &Value| match rv_of(body) {
            Some(rv) => rv == rv_of(current).unwrap_or_default(),
            None => true,
        };
        match *method {
            http::Method::GET => match current {
                Some(o) => reply(200, &o),
                None => status(404, "NotFound"),
            },
            http::Method::PUT => {
                let Some(current) = current else {
                    return status(404, "NotFound");
                };
                if !precondition(&body, &current) {
                    return status(409, "Conflict");
                }
                let mut next = body;
                for keep in [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "ownerReferences",
                    "managedFields",
                ] {
                    if let Some(v) = current.pointer(&format!("/metadata/{keep}"))
                        && (next["metadata"].get(keep).is_none()
                            || keep == "uid"
                            || keep == "creationTimestamp")
                    {
                        next["metadata"][keep] = v.clone();
                    }
                }
                if res == "eagleeyecredentials" {
                    next["status"] = current.get("status").cloned().unwrap_or(Value::Null);
                }
                let written = self.put(key, next);
                reply(200, &written)
            }
            http::Method::PATCH => {
                let apply = content_type.starts_with("application/apply-patch");
                let merge_patch = content_type.starts_with("application/merge-patch");
                if !apply && !merge_patch {
                    return status(415, "UnsupportedMediaType");
                }
                let manager = url::form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == "fieldManager")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                let Some(current) = current else {
                    if apply && sub.is_none() && res == "secrets" {
                        // SSA of a missing object creates it.
                        let mut created =
                            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {}});
                        apply_secret(&mut created, &body, &manager);
                        if let Some(m) = created["metadata"].as_object_mut() {
                            m.remove("resourceVersion");
                        }
                        let written = self.put(key, created);
                        return reply(201, &written);
                    }
                    return status(404, "NotFound");
                };
                if !precondition(&body, &current) {
                    return status(409, "Conflict");
                }
                let mut next = current.clone();
                match (sub, apply) {
                    (Some("status"), _) => {
                        if let Some(s) = body.get("status") {
                            match apply {
                                true => next["status"] = s.clone(),
                                false => merge(&mut next["status"], s),
                            }
                        }
                    }
                    (None, true) if res == "secrets" => apply_secret(&mut next, &body, &manager),
                    (None, false) => {
                        let mut patch = body.clone();
                        if let Some(m) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
                            m.remove("resourceVersion");
                        }
                        merge(&mut next, &patch);
                    }
                    _ => return status(415, "UnsupportedMediaType"),
                }
                let finalized = res == "eagleeyecredentials"
                    && next.pointer("/metadata/deletionTimestamp").is_some()
                    && next
                        .pointer("/metadata/finalizers")
                        .and_then(Value::as_array)
                        .is_none_or(|f| f.is_empty());
                let written = self.put(key.clone(), next);
                if finalized {
                    self.delete(&key, now);
                }
                reply(200, &written)
            }
            _ => status(405, "MethodNotAllowed"),
        }
    }

    fn create(&mut self, res: &'static str, ns: String, body: Value) -> ApiReply {
        if res == "events" {
            let regarding = body
                .pointer("/regarding/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            *self.events.entry((ns, regarding)).or_default() += 1;
            let mut body = body;
            body["metadata"]["resourceVersion"] = json!("1");
            return reply(201, &body);
        }
        let Some(name) = body.pointer("/metadata/name").and_then(Value::as_str) else {
            return status(422, "Invalid");
        };
        let key = Key {
            resource: res,
            ns,
            name: name.to_owned(),
        };
        if self.objects.contains_key(&key) {
            return status(409, "AlreadyExists");
        }
        let mut body = body;
        let manager = body.pointer("/metadata/managedFields").is_none();
        if res == "secrets" && manager {
            let keys: serde_json::Map<String, Value> = body
                .get("data")
                .and_then(Value::as_object)
                .map(|d| d.keys().map(|k| (format!("f:{k}"), json!({}))).collect())
                .unwrap_or_default();
            body["metadata"]["managedFields"] = json!([{
                "manager": eagle_eye_operator::controller::FIELD_MANAGER,
                "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:data": keys},
            }]);
        }
        let written = self.put(key, body);
        reply(201, &written)
    }
}

/// Server-side apply of a Secret by one manager, as far as the operator relies on it.
fn apply_secret(next: &mut Value, body: &Value, manager: &str) {
    for field in ["labels", "annotations"] {
        if let Some(v) = body.pointer(&format!("/metadata/{field}")) {
            merge(&mut next["metadata"][field], v);
        }
    }
    if let Some(refs) = body.pointer("/metadata/ownerReferences") {
        next["metadata"]["ownerReferences"] = refs.clone();
    }
    if let Some(t) = body.get("type") {
        next["type"] = t.clone();
    }
    if let Some(data) = body.get("data") {
        next["data"] = data.clone();
        let keys: serde_json::Map<String, Value> = data
            .as_object()
            .map(|d| d.keys().map(|k| (format!("f:{k}"), json!({}))).collect())
            .unwrap_or_default();
        next["metadata"]["managedFields"] = json!([{
            "manager": manager, "operation": "Apply", "apiVersion": "v1",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:data": keys},
        }]);
    }
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn unb64(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_default()
}

pub fn secs(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}
