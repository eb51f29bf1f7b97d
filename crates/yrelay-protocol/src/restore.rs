//! Restoring a document to an earlier state of its own: the one ordinary
//! update that, applied to the current state, makes every root type's
//! content equal the old state's (maps, arrays, text with its formatting,
//! XML, nested types).
//!
//! The way Yjs apps revert to a snapshot: take the old state, apply to it
//! every change made since (tracked by an undo manager), undo them all, and
//! send the current state what that undo wrote. It only adds items and
//! deletions, so clients that were offline merge their own edits on top.

use yrs::undo::Options;
use yrs::updates::decoder::Decode;
use yrs::{Doc, Out, ReadTxn, StateVector, Transact, UndoManager, Update};

use crate::json::typed_roots;

/// Why no restoring update could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("a state does not decode: {0}")]
    Decode(String),
}

/// The update that brings a document holding `current` (a full v1 state)
/// back to `old` (a full v1 state of the same document, earlier). Empty
/// when nothing changed since.
pub fn restoring_update(current: &[u8], old: &[u8]) -> Result<Vec<u8>, RestoreError> {
    let now = decoded(current)?;
    let then = decoded(old)?;
    let now_sv = now.transact().state_vector();
    let since = now
        .transact()
        .encode_diff_v1(&then.transact().state_vector());

    // Every root the document has now, typed alike in the old state (a
    // root created since is empty there).
    let mut undo = UndoManager::with_options(Options {
        capture_timeout_millis: u64::MAX,
        ..Options::default()
    });
    let roots = typed_roots(&now.transact());
    for (name, out) in roots {
        match out {
            Out::YMap(_) => undo.expand_scope(&then, &then.get_or_insert_map(name)),
            Out::YArray(_) => undo.expand_scope(&then, &then.get_or_insert_array(name)),
            Out::YText(_) | Out::YXmlText(_) => {
                undo.expand_scope(&then, &then.get_or_insert_text(name))
            }
            _ => undo.expand_scope(&then, &then.get_or_insert_xml_fragment(name)),
        }
    }
    const REPLAY: &str = "replay";
    undo.include_origin(REPLAY);
    {
        let update = Update::decode_v1(&since).map_err(|e| RestoreError::Decode(e.to_string()))?;
        let mut txn = then.transact_mut_with(REPLAY);
        txn.apply_update(update)
            .map_err(|e| RestoreError::Decode(e.to_string()))?;
    }
    while undo.undo_blocking() {}
    Ok(encode_missing(&then, &now_sv))
}

fn decoded(state: &[u8]) -> Result<Doc, RestoreError> {
    let doc = Doc::new();
    let update = Update::decode_v1(state).map_err(|e| RestoreError::Decode(e.to_string()))?;
    doc.transact_mut()
        .apply_update(update)
        .map_err(|e| RestoreError::Decode(e.to_string()))?;
    Ok(doc)
}

fn encode_missing(doc: &Doc, sv: &StateVector) -> Vec<u8> {
    doc.transact().encode_diff_v1(sv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::doc_to_json;
    use yrs::types::Attrs;
    use yrs::updates::encoder::Encode;
    use yrs::{
        Any, Array, ArrayPrelim, Map, MapPrelim, Text, WriteTxn, XmlElementPrelim, XmlFragment,
        XmlTextPrelim,
    };

    fn state(doc: &Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    fn apply(doc: &Doc, update: &[u8]) {
        doc.transact_mut()
            .apply_update(Update::decode_v1(update).unwrap())
            .unwrap();
    }

    /// A document with every kind of root type and nesting.
    fn rich(doc: &Doc) {
        let mut txn = doc.transact_mut();
        let map = txn.get_or_insert_map("settings");
        map.insert(&mut txn, "theme", "dark");
        let nested = map.insert(&mut txn, "inner", MapPrelim::default());
        nested.insert(&mut txn, "n", 1);
        let list = txn.get_or_insert_array("list");
        list.push_back(&mut txn, "a");
        list.push_back(
            &mut txn,
            ArrayPrelim::from(vec![Any::from(1), Any::from(2)]),
        );
        let text = txn.get_or_insert_text("text");
        text.insert(&mut txn, 0, "hello world");
        let bold = Attrs::from([("bold".into(), Any::Bool(true))]);
        text.format(&mut txn, 0, 5, bold);
        let xml = txn.get_or_insert_xml_fragment("prosemirror");
        let p = xml.push_back(&mut txn, XmlElementPrelim::empty("paragraph"));
        p.push_back(&mut txn, XmlTextPrelim::new("first"));
    }

    /// Breaks everything `rich` wrote: edits, deletes, a new root.
    fn vandalize(doc: &Doc) {
        let mut txn = doc.transact_mut();
        let map = txn.get_or_insert_map("settings");
        map.insert(&mut txn, "theme", "light");
        map.remove(&mut txn, "inner");
        map.insert(&mut txn, "added", true);
        let list = txn.get_or_insert_array("list");
        list.remove_range(&mut txn, 0, 2);
        list.push_back(&mut txn, "z");
        let text = txn.get_or_insert_text("text");
        text.remove_range(&mut txn, 0, 6);
        text.insert(&mut txn, 0, "bye ");
        let xml = txn.get_or_insert_xml_fragment("prosemirror");
        xml.remove_range(&mut txn, 0, 1);
        xml.push_back(&mut txn, XmlTextPrelim::new("other"));
        let fresh = txn.get_or_insert_text("fresh");
        fresh.insert(&mut txn, 0, "new root");
    }

    #[test]
    fn a_restore_brings_back_every_kind_of_type_and_formatting() {
        let doc = Doc::new();
        rich(&doc);
        let old = state(&doc);
        let old_json = doc_to_json(&doc).unwrap();
        let old_delta = doc
            .get_or_insert_text("text")
            .diff(&doc.transact(), yrs::types::text::YChange::identity);
        vandalize(&doc);
        assert_ne!(doc_to_json(&doc).unwrap()["settings"], old_json["settings"]);

        let fix = restoring_update(&state(&doc), &old).unwrap();
        apply(&doc, &fix);
        let mut now = doc_to_json(&doc).unwrap();
        // A root made since stays, emptied.
        assert_eq!(now.as_object_mut().unwrap().remove("fresh").unwrap(), "");
        assert_eq!(now, old_json);
        let delta = doc
            .get_or_insert_text("text")
            .diff(&doc.transact(), yrs::types::text::YChange::identity);
        assert_eq!(delta, old_delta, "formatting restored");
    }

    #[test]
    fn an_offline_client_merges_its_edits_on_top_of_a_restore() {
        let server = Doc::new();
        rich(&server);
        let old = state(&server);
        let offline = Doc::new();
        apply(&offline, &old);
        vandalize(&server);
        let fix = restoring_update(&state(&server), &old).unwrap();
        apply(&server, &fix);
        // Offline meanwhile: one more entry in the list.
        offline
            .get_or_insert_array("list")
            .push_back(&mut offline.transact_mut(), "offline");
        apply(&server, &state(&offline));
        apply(&offline, &state(&server));
        let list = server.get_or_insert_array("list");
        let items: Vec<String> = list
            .iter(&server.transact())
            .map(|v| v.to_string(&server.transact()))
            .collect();
        assert!(items.contains(&"offline".to_owned()), "{items:?}");
        assert!(items.contains(&"a".to_owned()), "{items:?}");
        let fresh = |doc: &Doc| doc_to_json(&decoded(&state(doc)).unwrap()).unwrap();
        assert_eq!(fresh(&server), fresh(&offline));
    }

    #[test]
    fn nothing_changed_since_restores_to_an_empty_change() {
        let doc = Doc::new();
        rich(&doc);
        let fix = restoring_update(&state(&doc), &state(&doc)).unwrap();
        let before = doc.transact().state_vector().encode_v1();
        apply(&doc, &fix);
        assert_eq!(doc.transact().state_vector().encode_v1(), before);
    }
}
