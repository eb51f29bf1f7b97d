//! The writer of a fan-out room: a y-websocket client, or a Hocuspocus one.

use std::time::Duration;

use yrelay_client::WsClient;
use yrs::{Array, Doc};

use crate::{WriterOver, hocuspocus};

/// A document whose client ID is 32 bits, as the JavaScript `yjs` makes
/// them (`random.uint32`); yrs draws 53. y-sweet 0.9.1 relays the items of a
/// client ID above 32 bits under another ID, so its readers (and the writer)
/// end up with every item twice — a fault no yjs client can meet. The bench
/// writes as yjs clients do.
pub(crate) fn yjs_doc() -> Doc {
    use std::hash::{BuildHasher, RandomState};
    let id = RandomState::new().hash_one(crate::wall_us()) as u32;
    Doc::with_client_id(id.into())
}

/// The writer of a room.
pub(crate) enum Writer {
    Ws(WsClient),
    Hocuspocus(hocuspocus::Writer),
}

impl Writer {
    pub(crate) async fn connect(url: &str, over: WriterOver) -> Result<Self, String> {
        Ok(match over {
            WriterOver::Ws => {
                let writer = WsClient::connect(url, yjs_doc())
                    .await
                    .map_err(|e| e.to_string())?;
                writer
                    .wait_synced(Duration::from_secs(30))
                    .await
                    .map_err(|e| e.to_string())?;
                Writer::Ws(writer)
            }
            WriterOver::Hocuspocus => Writer::Hocuspocus(hocuspocus::Writer::connect(url).await?),
        })
    }

    /// Pushes `value` into the Y.Array `seq`.
    pub(crate) async fn push(&mut self, value: i64) -> Result<(), String> {
        match self {
            Writer::Ws(writer) => {
                let seq = writer.doc().get_or_insert_array("seq");
                writer.edit(|txn| {
                    seq.push_back(txn, value);
                });
                Ok(())
            }
            Writer::Hocuspocus(writer) => writer.push(value).await,
        }
    }

    pub(crate) fn state(&self) -> Vec<u8> {
        match self {
            Writer::Ws(writer) => writer.state(),
            Writer::Hocuspocus(writer) => writer.state(),
        }
    }
}
