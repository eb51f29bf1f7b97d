//! Yjs v1 updates: the one check every incoming update passes, and the
//! merge that compaction and multi-update broadcasts use.
//!
//! yrs may panic on some adversarial inputs; every entry point here catches
//! that and reports it as a bad update, so bad input can never take down the
//! instance.

use std::panic::{AssertUnwindSafe, catch_unwind};

use yrs::updates::decoder::Decode;

use crate::scan::scan_update;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

/// Why an update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error("update is not a decodable Yjs v1 update")]
    Undecodable,
    #[error("update cannot be applied: {0}")]
    Unappliable(String),
    #[error("update refused: {0}")]
    Refused(#[from] crate::scan::ScanError),
}

/// An update that decoded and applied cleanly to an empty document.
#[derive(Debug, Clone)]
pub struct CheckedUpdate {
    bytes: Vec<u8>,
    empty: bool,
}

impl CheckedUpdate {
    /// True when the update carries neither inserts nor deletions (`[0, 0]`):
    /// such updates are never stored and never create a document.
    pub fn is_empty(&self) -> bool {
        self.empty
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Checks that `bytes` is a v1 update that yjs can decode ([`scan_update`])
/// and yrs can decode and apply.
pub fn check_update(bytes: Vec<u8>) -> Result<CheckedUpdate, UpdateError> {
    scan_update(&bytes)?;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let update = Update::decode_v1(&bytes).map_err(|_| UpdateError::Undecodable)?;
        let empty = update.is_empty();
        if !empty {
            let doc = Doc::new();
            doc.transact_mut()
                .apply_update(update)
                .map_err(|e| UpdateError::Unappliable(e.to_string()))?;
        }
        Ok(empty)
    }));
    match outcome {
        Ok(Ok(empty)) => Ok(CheckedUpdate { bytes, empty }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(UpdateError::Undecodable),
    }
}

/// Applies one v1 update to `doc`, turning a yrs panic into an error. The
/// update is walked first ([`scan_update`]) wherever it comes from: a
/// stored one from before that walk existed could be too deep for yrs.
pub fn apply_update(doc: &Doc, bytes: &[u8]) -> Result<(), UpdateError> {
    scan_update(bytes)?;
    catch_unwind(AssertUnwindSafe(|| {
        let update = Update::decode_v1(bytes).map_err(|_| UpdateError::Undecodable)?;
        doc.transact_mut()
            .apply_update(update)
            .map_err(|e| UpdateError::Unappliable(e.to_string()))
    }))
    .unwrap_or(Err(UpdateError::Undecodable))
}

/// Merges updates into one by applying them to a fresh document (with GC)
/// and re-encoding its whole state. This is what compaction stores.
pub fn merge_updates<'a>(
    updates: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>, UpdateError> {
    let doc = Doc::new();
    for update in updates {
        apply_update(&doc, update)?;
    }
    Ok(doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default()))
}

/// Decodes a v1 state vector (an empty input means "nothing", as in y-protocols).
pub fn decode_state_vector(bytes: &[u8]) -> Result<StateVector, UpdateError> {
    if bytes.is_empty() {
        return Ok(StateVector::default());
    }
    StateVector::decode_v1(bytes).map_err(|_| UpdateError::Undecodable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use yrs::updates::encoder::Encode;
    use yrs::{Array, GetString, Map, Text};

    #[derive(Debug, Clone)]
    enum Edit {
        Text(u8, String),
        Del(u8),
        Map(u8, i64),
        Push(i64),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (any::<u8>(), "[a-z]{1,5}").prop_map(|(i, s)| Edit::Text(i, s)),
            any::<u8>().prop_map(Edit::Del),
            (0u8..4, any::<i64>()).prop_map(|(k, v)| Edit::Map(k, v)),
            any::<i64>().prop_map(Edit::Push),
        ]
    }

    /// Each client makes edits on its own doc (synced with some of the others
    /// first); every edit yields one update.
    fn updates_from(clients: &[Vec<Edit>]) -> Vec<Vec<u8>> {
        let mut updates: Vec<Vec<u8>> = Vec::new();
        for (n, edits) in clients.iter().enumerate() {
            let doc = Doc::with_client_id(n as u64 + 1);
            for u in &updates {
                apply_update(&doc, u).unwrap();
            }
            let text = doc.get_or_insert_text("text");
            let map = doc.get_or_insert_map("map");
            let array = doc.get_or_insert_array("array");
            for e in edits {
                let before = doc.transact().state_vector();
                {
                    let mut txn = doc.transact_mut();
                    let len = text.len(&txn);
                    match e {
                        Edit::Text(i, s) => text.insert(&mut txn, *i as u32 % (len + 1), s),
                        Edit::Del(i) if len > 0 => text.remove_range(&mut txn, *i as u32 % len, 1),
                        Edit::Del(_) => {}
                        Edit::Map(k, v) => {
                            map.insert(&mut txn, format!("k{k}"), *v);
                        }
                        Edit::Push(v) => {
                            array.push_back(&mut txn, *v);
                        }
                    }
                }
                updates.push(doc.transact().encode_diff_v1(&before));
            }
        }
        updates
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn merging_equals_applying(
            clients in proptest::collection::vec(proptest::collection::vec(edit(), 0..8), 1..4),
            order in any::<u64>(),
        ) {
            let mut updates = updates_from(&clients);
            // any delivery order converges
            let n = updates.len().max(1);
            updates.rotate_left(order as usize % n);

            let applied = Doc::new();
            for u in &updates {
                apply_update(&applied, u).unwrap();
            }
            let merged = merge_updates(updates.iter().map(Vec::as_slice)).unwrap();
            let from_merged = Doc::new();
            apply_update(&from_merged, &merged).unwrap();

            let text_a = applied.get_or_insert_text("text");
            let text_b = from_merged.get_or_insert_text("text");
            let (a, b) = (applied.transact(), from_merged.transact());
            prop_assert_eq!(a.state_vector(), b.state_vector());
            prop_assert_eq!(
                a.encode_state_as_update_v1(&StateVector::default()),
                b.encode_state_as_update_v1(&StateVector::default())
            );
            prop_assert_eq!(text_a.get_string(&a), text_b.get_string(&b));
            // and merging is idempotent
            let twice = merge_updates([merged.as_slice(), merged.as_slice()]).unwrap();
            prop_assert_eq!(twice, merged);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = check_update(bytes);
        }
    }

    #[test]
    fn empty_update_is_recognised() {
        assert!(check_update(vec![0, 0]).unwrap().is_empty());
        assert!(check_update(vec![0, 0]).is_ok());
        assert!(matches!(
            check_update(vec![5, 200, 1]).unwrap_err(),
            UpdateError::Refused(_)
        ));
        let sv = StateVector::default().encode_v1();
        assert_eq!(decode_state_vector(&sv).unwrap(), StateVector::default());
        assert!(decode_state_vector(&[]).unwrap().is_empty());
    }
}
