//! Documents as JSON, both ways: the REST API's export (`GET .../json`) and
//! its one-time import (`POST .../import`), the migration path for apps that
//! kept JSON in a database.

use serde_json::{Map, Value};
use yrs::any::Number;
use yrs::updates::decoder::Decode;
use yrs::{
    Any, ArrayRef, Doc, In, MapRef, Out, ReadTxn, StateVector, TextRef, Transact, XmlFragmentRef,
    XmlTextRef,
};
use yrs::{Array as _, GetString as _, Map as _};
use yrs::{ArrayPrelim, MapPrelim, WriteTxn};

/// How deep an export may nest: types as deep as a document may nest them,
/// each value in them as deep as an update may hold it. A document stored
/// before those bounds may nest deeper: it is refused, not walked.
pub const MAX_EXPORT_DEPTH: usize =
    crate::nesting::MAX_TYPE_DEPTH as usize + crate::scan::MAX_VALUE_DEPTH;

/// Why a document cannot be exported as JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    #[error("the document nests deeper than {MAX_EXPORT_DEPTH} levels: export it as an update")]
    TooDeep,
}

/// The root types of `doc` as one JSON object (`{rootName: value}`): maps as
/// objects, arrays as arrays, text and XML as strings.
///
/// A server replica never declared its roots' types (it only applied
/// updates), so each root's type is inferred from its content the way yrs
/// does it. The walk is ours, not yrs's `to_json`, so that its depth is
/// bounded ([`MAX_EXPORT_DEPTH`]).
pub fn doc_to_json(doc: &Doc) -> Result<Value, ExportError> {
    let txn = doc.transact();
    let mut roots = Map::new();
    for (name, out) in typed_roots(&txn) {
        roots.insert(name, out_to_json(&txn, &out, 1)?);
    }
    Ok(Value::Object(roots))
}

/// The root types of a document, each typed as its content says when no
/// one declared its type (a server replica only applies updates).
pub(crate) fn typed_roots<T: ReadTxn>(txn: &T) -> Vec<(String, Out)> {
    txn.root_refs()
        .map(|(name, out)| {
            let out = match out {
                Out::UndefinedRef(branch) => match Out::UndefinedRef(branch).as_prelim_kind(txn) {
                    RootKind::Map => Out::YMap(MapRef::from(branch)),
                    RootKind::Array => Out::YArray(ArrayRef::from(branch)),
                    RootKind::Text => Out::YText(TextRef::from(branch)),
                    RootKind::XmlText => Out::YXmlText(XmlTextRef::from(branch)),
                    RootKind::Xml => Out::YXmlFragment(XmlFragmentRef::from(branch)),
                },
                typed => typed,
            };
            (name.to_owned(), out)
        })
        .collect()
}

fn out_to_json<T: ReadTxn>(txn: &T, out: &Out, depth: usize) -> Result<Value, ExportError> {
    if depth > MAX_EXPORT_DEPTH {
        return Err(ExportError::TooDeep);
    }
    Ok(match out {
        Out::Any(any) => any_to_json(any, depth)?,
        Out::YText(text) => Value::String(text.get_string(txn)),
        Out::YArray(array) => Value::Array(
            array
                .iter(txn)
                .map(|item| out_to_json(txn, &item, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Out::YMap(map) => Value::Object(
            map.iter(txn)
                .map(|(k, v)| Ok((k.to_owned(), out_to_json(txn, &v, depth + 1)?)))
                .collect::<Result<_, _>>()?,
        ),
        // yrs writes XML recursively: at most as deep as types nest.
        Out::YXmlElement(xml) => Value::String(xml.get_string(txn)),
        Out::YXmlFragment(xml) => Value::String(xml.get_string(txn)),
        Out::YXmlText(xml) => Value::String(xml.get_string(txn)),
        Out::YDoc(doc) => Value::String(doc.guid().to_string()),
        _ => Value::Null,
    })
}

enum RootKind {
    Map,
    Array,
    Text,
    XmlText,
    Xml,
}

trait InferKind {
    fn as_prelim_kind<T: ReadTxn>(&self, txn: &T) -> RootKind;
}

impl InferKind for Out {
    fn as_prelim_kind<T: ReadTxn>(&self, txn: &T) -> RootKind {
        use yrs::types::AsPrelim;
        match self.as_prelim(txn) {
            In::Array(_) => RootKind::Array,
            In::Text(_) => RootKind::Text,
            In::XmlText(_) => RootKind::XmlText,
            In::XmlElement(_) | In::XmlFragment(_) => RootKind::Xml,
            _ => RootKind::Map,
        }
    }
}

fn any_to_json(any: &Any, depth: usize) -> Result<Value, ExportError> {
    if depth > MAX_EXPORT_DEPTH {
        return Err(ExportError::TooDeep);
    }
    Ok(match any {
        Any::Null | Any::Undefined => Value::Null,
        Any::Bool(b) => Value::Bool(*b),
        Any::Number(Number::Int(n)) => Value::from(*n),
        Any::Number(Number::Float(n)) => serde_json::Number::from_f64(*n)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Any::String(s) => Value::String(s.to_string()),
        Any::Buffer(b) => Value::Array(b.iter().map(|x| Value::from(*x)).collect()),
        Any::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| any_to_json(v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Any::Map(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), any_to_json(v, depth + 1)?)))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// Why a JSON body cannot become a document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("the import body must be a JSON object (its keys become the entries of the root map)")]
    NotAnObject,
}

/// A new document (as one v1 update) whose root map `root` holds `value`'s
/// entries: objects become Y.Map, arrays Y.Array, scalars plain values.
pub fn json_to_update(root: &str, value: Value) -> Result<Vec<u8>, ImportError> {
    json_to_update_with_progress(root, value, |_, _| {})
}

/// [`json_to_update`], calling `progress(done, total)` after each top-level
/// entry (large imports report progress).
pub fn json_to_update_with_progress(
    root: &str,
    value: Value,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<u8>, ImportError> {
    let Value::Object(entries) = value else {
        return Err(ImportError::NotAnObject);
    };
    let total = entries.len();
    let doc = Doc::new();
    {
        let mut txn = doc.transact_mut();
        let map = txn.get_or_insert_map(root);
        for (done, (key, value)) in entries.into_iter().enumerate() {
            map.insert(&mut txn, key, json_to_in(value));
            progress(done + 1, total);
        }
    }
    Ok(doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default()))
}

fn json_to_in(value: Value) -> In {
    match value {
        Value::Object(entries) => In::Map(MapPrelim::from_iter(
            entries.into_iter().map(|(k, v)| (k, json_to_in(v))),
        )),
        Value::Array(items) => In::Array(ArrayPrelim::from_iter(items.into_iter().map(json_to_in))),
        Value::Null => In::Any(Any::Null),
        Value::Bool(b) => In::Any(Any::Bool(b)),
        Value::Number(n) => In::Any(Any::Number(match n.as_i64() {
            Some(i) => Number::from(i),
            None => Number::from(n.as_f64().unwrap_or(0.0)),
        })),
        Value::String(s) => In::Any(Any::from(s)),
    }
}

/// Applies a v1 update to a fresh document (for tests and the CLI).
pub fn doc_from_update(update: &[u8]) -> Result<Doc, yrs::encoding::read::Error> {
    let doc = Doc::new();
    let update = yrs::Update::decode_v1(update)?;
    doc.transact_mut()
        .apply_update(update)
        .map_err(|e| yrs::encoding::read::Error::Custom(e.to_string()))?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use yrs::{Array, GetString, Text};

    #[test]
    fn imported_json_exports_back_unchanged() {
        let input = json!({
            "center": {"lat": 52.5, "lng": 13.4},
            "zoom": 11,
            "layers": [{"name": "roads", "colour": "#ff0000"}, "labels", true, null],
            "title": "Berlin",
        });
        let update = json_to_update("root", input.clone()).unwrap();
        let doc = doc_from_update(&update).unwrap();
        assert_eq!(doc_to_json(&doc).unwrap(), json!({ "root": input }));
    }

    #[test]
    fn untyped_roots_are_inferred() {
        let source = Doc::new();
        {
            let text = source.get_or_insert_text("t");
            let list = source.get_or_insert_array("a");
            let mut txn = source.transact_mut();
            text.insert(&mut txn, 0, "hello");
            list.push_back(&mut txn, 1);
            list.push_back(&mut txn, "x");
            assert_eq!(text.get_string(&txn), "hello");
        }
        let update = source
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let replica = doc_from_update(&update).unwrap();
        assert_eq!(
            doc_to_json(&replica).unwrap(),
            json!({"t": "hello", "a": [1, "x"]})
        );
    }

    #[test]
    fn only_objects_import() {
        assert_eq!(
            json_to_update("root", json!([1, 2])),
            Err(ImportError::NotAnObject)
        );
    }
}
