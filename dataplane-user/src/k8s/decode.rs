//! Kubernetes objects from YAML or JSON text, as `kubectl get -o yaml|json` prints them:
//! multi-document YAML, concatenated JSON, `kind: List` (and `ServiceList`-style) wrappers.

use std::{fmt, path::Path, sync::Arc};

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{
    objects::Objects,
    problem::{Problem, Subject},
};

/// How a manifest is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// The format a file's extension names: .yaml/.yml or .json; None for anything else.
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// What one manifest held.
#[derive(Clone, Debug, Default)]
pub struct Decoded {
    /// The Services, EndpointSlices and Nodes that decoded.
    pub objects: Objects,
    /// Objects of those kinds that did not decode (wrong type, missing required field), each
    /// naming the field.
    pub problems: Vec<Problem>,
    /// Objects of other kinds, ignored.
    pub ignored: usize,
}

/// The text is not YAML/JSON at all; nothing of it is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError(pub String);

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SyntaxError {}

/// Decodes every Service, EndpointSlice and Node in `text`.
pub fn decode(text: &str, format: Format) -> Result<Decoded, SyntaxError> {
    let mut decoded = Decoded::default();
    for document in documents(text, format)? {
        decode_value(document, None, &mut decoded);
    }
    Ok(decoded)
}

/// The documents of a multi-document YAML text or of a stream of JSON values; empty YAML
/// documents are skipped.
pub fn documents(text: &str, format: Format) -> Result<Vec<Value>, SyntaxError> {
    match format {
        Format::Json => serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .map_err(|e| SyntaxError(e.to_string())),
        Format::Yaml => serde_saphyr::from_multiple_with_options(text, yaml_options())
            .map_err(|e| SyntaxError(e.to_string())),
    }
}

/// serde-saphyr's default budget stops at 1,024 documents and 250,000 nodes; a benchmark
/// manifest of 10,000 services is far bigger. The alias limits (YAML bombs) stay as they are.
fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    if let Some(budget) = options.budget.as_mut() {
        budget.max_documents = 10_000_000;
        budget.max_nodes = 100_000_000;
        budget.max_events = 400_000_000;
        budget.max_total_scalar_bytes = 1 << 30;
    }
    options
}

/// Decodes one object (or list), `item_type` being the (apiVersion, kind) its list implies.
fn decode_value(value: Value, item_type: Option<(&str, &str)>, out: &mut Decoded) {
    let field = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_owned);
    let (api_version, kind) = match (field("apiVersion"), field("kind"), item_type) {
        (Some(api_version), Some(kind), _) => (api_version, kind),
        (_, _, Some((api_version, kind))) => (api_version.to_owned(), kind.to_owned()),
        (api_version, kind, None) => {
            log::debug!("manifests: ignoring a document without apiVersion/kind ({api_version:?}, {kind:?})");
            out.ignored += 1;
            return;
        }
    };
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Service") => push_typed(value, "Service", out, |o| &mut o.services),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            push_typed(value, "EndpointSlice", out, |o| &mut o.endpoint_slices)
        }
        ("v1", "Node") => push_typed(value, "Node", out, |o| &mut o.nodes),
        (_, list) if list.ends_with("List") && value.get("items").is_some() => {
            decode_list(value, &api_version, list, out)
        }
        _ => {
            log::debug!(
                "manifests: ignoring {api_version} {kind} {}",
                raw_name(&value)
            );
            out.ignored += 1;
        }
    }
}

/// `kind: List` (items carry their own kinds) or `kind: ServiceList` etc. (as the API returns
/// lists: items without apiVersion/kind).
fn decode_list(mut value: Value, api_version: &str, kind: &str, out: &mut Decoded) {
    let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
    let items = match value.get_mut("items").map(Value::take) {
        Some(Value::Array(items)) => items,
        Some(Value::Null) | None => Vec::new(),
        Some(_) => {
            log::debug!("manifests: ignoring a {kind} whose items are not a list");
            out.ignored += 1;
            return;
        }
    };
    for item in items {
        decode_value(item, item_kind.map(|k| (api_version, k)), out);
    }
}

fn push_typed<K: DeserializeOwned>(
    value: Value,
    kind: &'static str,
    out: &mut Decoded,
    list: impl FnOnce(&mut Objects) -> &mut Vec<Arc<K>>,
) {
    let subject = Subject::new(kind, raw_name(&value));
    match serde_path_to_error::deserialize::<_, K>(value) {
        Ok(object) => list(&mut out.objects).push(Arc::new(object)),
        Err(error) => {
            let path = error.path().to_string();
            let field = if path == "." {
                "(object)".to_owned()
            } else {
                path
            };
            out.problems.push(subject.invalid(field, error.inner()));
        }
    }
}

/// "namespace/name" (or "name" for cluster-scoped Nodes) of an undecoded object, for messages.
fn raw_name(value: &Value) -> String {
    let meta = |key: &str| {
        value
            .get("metadata")
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
    };
    let name = meta("name").unwrap_or("<unnamed>");
    if value.get("kind").and_then(Value::as_str) == Some("Node") {
        return name.to_owned();
    }
    format!(
        "{}/{name}",
        meta("namespace")
            .filter(|ns| !ns.is_empty())
            .unwrap_or("default")
    )
}
