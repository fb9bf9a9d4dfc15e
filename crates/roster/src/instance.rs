//! A service instance and its registry value.
//!
//! The value is etcd's endpoint JSON (`{"Op":0,"Addr":…,"Metadata":…}`), so
//! etcd's own Go gRPC resolver (`etcd:///services/hello`) can read what
//! Roster writes. Our fields travel in `Metadata` as a JSON *string* that
//! holds a JSON object:
//!
//! ```text
//! {"Op":0,"Addr":"10.0.0.7:50051","Metadata":"{\"id\":\"a1\",\"weight\":100,…}"}
//! ```
//!
//! etcd's resolver copies `Metadata` into grpc-go's `resolver.Address`, and
//! older grpc-go (1.33, as Debian ships it with etcd's Go client) uses
//! addresses as map keys: a JSON object decodes to a Go map, which panics
//! with "hash of unhashable type", while a string hashes. Go users still
//! get our fields, one `json.Unmarshal` away.
//!
//! Readers are tolerant: they accept that form, the JSON object Roster
//! wrote before, etcd endpoint JSON with any other metadata, and a plain
//! `host:port`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One running copy of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub service: String,
    /// Stable for the life of the process; the last segment of the key.
    pub id: String,
    /// `host:port` callers connect to.
    pub addr: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

fn default_weight() -> u32 {
    100
}

/// etcd's endpoint record, as its Go resolver reads it.
#[derive(Serialize, Deserialize)]
struct EndpointJson {
    #[serde(rename = "Op", default)]
    op: u8,
    #[serde(rename = "Addr")]
    addr: String,
    #[serde(rename = "Metadata", default)]
    metadata: Option<serde_json::Value>,
}

impl Instance {
    /// An instance with defaults: weight 100, id = `addr`.
    pub fn new(service: impl Into<String>, addr: impl Into<String>) -> Self {
        let addr = addr.into();
        Instance {
            service: service.into(),
            id: addr.clone(),
            addr,
            weight: default_weight(),
            zone: String::new(),
            version: String::new(),
            protocol: String::new(),
            tags: Vec::new(),
            meta: BTreeMap::new(),
        }
    }

    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    pub fn with_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = zone.into();
        self
    }

    pub fn with_meta(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.meta.insert(k.into(), v.into());
        self
    }

    /// Checks what the key layout and callers rely on.
    pub fn validate(&self) -> Result<(), String> {
        if self.service.is_empty() || self.service.contains('/') {
            return Err(format!("service name {:?} must be non-empty and contain no '/'", self.service));
        }
        if self.id.is_empty() || self.id.contains('/') {
            return Err(format!("instance id {:?} must be non-empty and contain no '/'", self.id));
        }
        let port = self.addr.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>()));
        match port {
            Some((host, Ok(p))) if !host.is_empty() && p != 0 => {}
            _ => return Err(format!("address {:?} must be host:port", self.addr)),
        }
        Ok(())
    }

    /// The registry value: etcd endpoint JSON with our fields as metadata,
    /// a string of JSON (see the module doc for why not an object).
    pub fn to_value(&self) -> String {
        let fields = serde_json::to_string(self).expect("an Instance always serializes");
        serde_json::to_string(&EndpointJson {
            op: 0,
            addr: self.addr.clone(),
            metadata: Some(serde_json::Value::String(fields)),
        })
        .expect("an endpoint always serializes")
    }

    /// Reads a registry value for key `<prefix>/<service>/<id>`. Accepts
    /// Roster's JSON, any etcd endpoint JSON, and a plain `host:port`.
    pub fn from_value(service: &str, id: &str, value: &[u8]) -> Result<Instance, String> {
        let text = std::str::from_utf8(value).map_err(|_| "value is not UTF-8".to_owned())?.trim();
        if text.starts_with('{') {
            let ep: EndpointJson = serde_json::from_str(text).map_err(|e| format!("bad endpoint JSON: {e}"))?;
            if ep.addr.is_empty() {
                return Err("endpoint JSON has no Addr".into());
            }
            let mut inst = Instance::new(service, ep.addr.clone()).with_id(id);
            let metadata = match ep.metadata {
                // Ours: an object in a string. Any other string is kept as is.
                Some(serde_json::Value::String(text)) => match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(object @ serde_json::Value::Object(_)) => Some(object),
                    _ => {
                        inst.meta.insert("metadata".into(), text);
                        None
                    }
                },
                other => other,
            };
            if let Some(serde_json::Value::Object(m)) = metadata {
                // Our own metadata when present; otherwise keep what we can.
                match serde_json::from_value::<Instance>(serde_json::Value::Object(m.clone())) {
                    Ok(ours) => {
                        inst = Instance { service: service.into(), id: id.into(), addr: ep.addr, ..ours };
                    }
                    Err(_) => {
                        for (k, v) in m {
                            let v = match v {
                                serde_json::Value::String(s) => s,
                                other => other.to_string(),
                            };
                            inst.meta.insert(k, v);
                        }
                    }
                }
            }
            return Ok(inst);
        }
        if text.is_empty() || text.contains(char::is_whitespace) || !text.contains(':') {
            return Err(format!("value {text:?} is neither endpoint JSON nor host:port"));
        }
        Ok(Instance::new(service, text).with_id(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_round_trips_and_is_etcd_endpoint_json() {
        let i =
            Instance::new("hello", "10.0.0.7:50051").with_id("a1").with_zone("eu-1").with_weight(5).with_meta("k", "v");
        let v = i.to_value();
        let json: serde_json::Value = serde_json::from_str(&v).unwrap();
        assert_eq!(json["Op"], 0);
        assert_eq!(json["Addr"], "10.0.0.7:50051");
        let fields: serde_json::Value =
            serde_json::from_str(json["Metadata"].as_str().expect("Metadata is a string")).unwrap();
        assert_eq!(fields["weight"], 5);
        assert_eq!(Instance::from_value("hello", "a1", v.as_bytes()).unwrap(), i);
    }

    /// What Roster wrote before Metadata became a string: still read whole.
    #[test]
    fn metadata_written_as_an_object_still_reads() {
        let old = br#"{"Op":0,"Addr":"10.0.0.7:50051","Metadata":{"id":"a1","service":"hello","addr":"10.0.0.7:50051","weight":5,"zone":"eu-1","meta":{"k":"v"}}}"#;
        let want =
            Instance::new("hello", "10.0.0.7:50051").with_id("a1").with_zone("eu-1").with_weight(5).with_meta("k", "v");
        assert_eq!(Instance::from_value("hello", "a1", old).unwrap(), want);
        let foreign_string =
            Instance::from_value("hello", "x", br#"{"Addr":"1.2.3.4:5","Metadata":"opaque"}"#).unwrap();
        assert_eq!((foreign_string.addr.as_str(), foreign_string.meta["metadata"].as_str()), ("1.2.3.4:5", "opaque"));
        let null = Instance::from_value("hello", "x", br#"{"Addr":"1.2.3.4:5","Metadata":null}"#).unwrap();
        assert_eq!(null.weight, 100);
    }

    #[test]
    fn readers_are_tolerant() {
        let plain = Instance::from_value("hello", "x", b"127.0.0.1:9000").unwrap();
        assert_eq!((plain.addr.as_str(), plain.weight), ("127.0.0.1:9000", 100));
        let foreign =
            Instance::from_value("hello", "x", br#"{"Addr":"1.2.3.4:5","Metadata":{"region":"r1","n":3}}"#).unwrap();
        assert_eq!(foreign.meta["region"], "r1");
        assert_eq!(foreign.meta["n"], "3");
        let bare = Instance::from_value("hello", "x", br#"{"Op":0,"Addr":"1.2.3.4:5"}"#).unwrap();
        assert_eq!(bare.addr, "1.2.3.4:5");
        assert!(Instance::from_value("hello", "x", b"garbage").is_err());
        assert!(Instance::from_value("hello", "x", b"{not json").is_err());
        assert!(Instance::from_value("hello", "x", b"\xff\xfe").is_err());
    }

    #[test]
    fn validation() {
        assert!(Instance::new("hel/lo", "a:1").validate().is_err());
        assert!(Instance::new("hello", "").validate().is_err());
        assert!(Instance::new("hello", "nope").validate().is_err());
        assert!(Instance::new("hello", "host:0").validate().is_err());
        assert!(Instance::new("hello", "[::1]:80").validate().is_ok());
        assert!(Instance::new("hello", "a:1").validate().is_ok());
    }
}
