//! The embedded store: one redb file, `pigeon.redb`, in the configured data directory.
//!
//! Why redb: copy-on-write B-trees with checksummed commits survive `kill -9` and power loss at
//! any point, freed pages are reused so a queue that fills and drains does not grow the file, and
//! its throughput stays flat under the insert-then-delete churn of offline queues (see
//! ../shared/deps.md §5: an LSM engine's drain rate fell 40-170x on the same workload). It is a
//! single writer, which suits the one persistence thread that group-commits every batch.

use crate::record::*;
use pigeon_codec::ByteStr;
use pigeon_core::store::{LoadedSession, Snapshot, Store, StoreError, StoreOp};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
const SUBSCRIPTIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("subscriptions");
const QUEUE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("queue");
const INCOMING: TableDefinition<&[u8], &[u8]> = TableDefinition::new("incoming_qos2");
const RETAINED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("retained");

pub struct EmbeddedStore {
    db: Database,
    file: PathBuf,
}

impl EmbeddedStore {
    /// The file name inside the data directory.
    pub const FILE_NAME: &'static str = "pigeon.redb";

    /// Opens (or creates) `dir/pigeon.redb`. A file that is not a store, or is damaged beyond
    /// redb's repair, is an error naming the file: the broker never starts empty by accident.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        let file = dir.join(Self::FILE_NAME);
        let err = |message: String| StoreError::Backend {
            path: file.display().to_string(),
            message,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create directory {}: {e}", dir.display())))?;
        let db = Database::create(&file).map_err(|e| err(format!("cannot open: {e}")))?;
        // Create every table so a read transaction finds them.
        let txn = db.begin_write().map_err(|e| err(e.to_string()))?;
        for t in [SESSIONS, SUBSCRIPTIONS, QUEUE, INCOMING, RETAINED] {
            txn.open_table(t).map_err(|e| err(e.to_string()))?;
        }
        txn.commit().map_err(|e| err(e.to_string()))?;
        Ok(EmbeddedStore { db, file })
    }

    pub fn path(&self) -> &Path {
        &self.file
    }

    fn backend_err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Backend {
            path: self.file.display().to_string(),
            message: e.to_string(),
        }
    }

    fn corrupt(&self, table: &'static str, detail: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: self.file.display().to_string(),
            table,
            detail: detail.to_string(),
        }
    }

    fn apply(&self, txn: &redb::WriteTransaction, ops: &[StoreOp]) -> Result<(), redb::Error> {
        let mut sessions = txn.open_table(SESSIONS)?;
        let mut subs = txn.open_table(SUBSCRIPTIONS)?;
        let mut queue = txn.open_table(QUEUE)?;
        let mut incoming = txn.open_table(INCOMING)?;
        let mut retained = txn.open_table(RETAINED)?;
        for op in ops {
            match op {
                StoreOp::SessionPut { client_id, record } => {
                    sessions.insert(
                        client_id.as_bytes().as_ref(),
                        encode_session(record).as_slice(),
                    )?;
                }
                StoreOp::SessionDelete { client_id } => {
                    sessions.remove(client_id.as_bytes().as_ref())?;
                    let start = client_prefix(client_id);
                    let end = prefix_end(&start);
                    let range = start.as_slice()..end.as_slice();
                    subs.retain_in(range.clone(), |_, _| false)?;
                    queue.retain_in(range.clone(), |_, _| false)?;
                    incoming.retain_in(range, |_, _| false)?;
                }
                StoreOp::SubscriptionPut {
                    client_id,
                    filter,
                    options,
                    id,
                } => {
                    let mut key = client_prefix(client_id);
                    key.extend_from_slice(filter.as_bytes());
                    subs.insert(key.as_slice(), encode_subscription(options, *id).as_slice())?;
                }
                StoreOp::SubscriptionDelete { client_id, filter } => {
                    let mut key = client_prefix(client_id);
                    key.extend_from_slice(filter.as_bytes());
                    subs.remove(key.as_slice())?;
                }
                StoreOp::QueuePut {
                    client_id,
                    seq,
                    entry,
                } => {
                    let mut key = client_prefix(client_id);
                    key.extend_from_slice(&seq.to_be_bytes());
                    queue.insert(key.as_slice(), encode_entry(entry).as_slice())?;
                }
                StoreOp::QueueDelete { client_id, seq } => {
                    let mut key = client_prefix(client_id);
                    key.extend_from_slice(&seq.to_be_bytes());
                    queue.remove(key.as_slice())?;
                }
                StoreOp::IncomingPut {
                    client_id,
                    packet_id,
                } => {
                    let mut key = client_prefix(client_id);
                    key.extend_from_slice(&packet_id.to_be_bytes());
                    incoming.insert(key.as_slice(), [].as_slice())?;
                }
                StoreOp::IncomingDelete {
                    client_id,
                    packet_id,
                } => {
                    let mut key = client_prefix(client_id);
                    key.extend_from_slice(&packet_id.to_be_bytes());
                    incoming.remove(key.as_slice())?;
                }
                StoreOp::RetainPut { message } => {
                    let mut value = Vec::with_capacity(32 + message.payload.len());
                    encode_message(message, &mut value);
                    retained.insert(message.topic.as_bytes().as_ref(), value.as_slice())?;
                }
                StoreOp::RetainDelete { topic } => {
                    retained.remove(topic.as_bytes().as_ref())?;
                }
            }
        }
        Ok(())
    }
}

impl Store for EmbeddedStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.backend_err(e))?;
        let open = |t| txn.open_table(t).map_err(|e| self.backend_err(e));
        let mut sessions: BTreeMap<ByteStr, LoadedSession> = BTreeMap::new();
        for row in open(SESSIONS)?.iter().map_err(|e| self.backend_err(e))? {
            let (k, v) = row.map_err(|e| self.backend_err(e))?;
            let client_id = ByteStr::from_utf8(bytes::Bytes::copy_from_slice(k.value()))
                .ok_or_else(|| self.corrupt("sessions", "client id is not UTF-8"))?;
            let record = decode_session(v.value()).map_err(|e| self.corrupt("sessions", e))?;
            sessions.insert(
                client_id.clone(),
                LoadedSession {
                    client_id,
                    record,
                    subscriptions: Vec::new(),
                    queue: Vec::new(),
                    incoming: Vec::new(),
                },
            );
        }
        // Rows of a session that is gone (it cannot happen through `commit`, which deletes them
        // together) are skipped rather than resurrecting a half session.
        for row in open(SUBSCRIPTIONS)?
            .iter()
            .map_err(|e| self.backend_err(e))?
        {
            let (k, v) = row.map_err(|e| self.backend_err(e))?;
            let (client, rest) = split_client_key(k.value())
                .ok_or_else(|| self.corrupt("subscriptions", "bad key"))?;
            let filter = ByteStr::from_utf8(bytes::Bytes::copy_from_slice(rest))
                .ok_or_else(|| self.corrupt("subscriptions", "filter is not UTF-8"))?;
            let (options, id) =
                decode_subscription(v.value()).map_err(|e| self.corrupt("subscriptions", e))?;
            if let Some(s) = sessions.get_mut(&client) {
                s.subscriptions.push((filter, options, id));
            }
        }
        for row in open(QUEUE)?.iter().map_err(|e| self.backend_err(e))? {
            let (k, v) = row.map_err(|e| self.backend_err(e))?;
            let (client, rest) =
                split_client_key(k.value()).ok_or_else(|| self.corrupt("queue", "bad key"))?;
            let seq = u64::from_be_bytes(
                rest.try_into()
                    .map_err(|_| self.corrupt("queue", "bad sequence"))?,
            );
            let entry = decode_entry(v.value()).map_err(|e| self.corrupt("queue", e))?;
            if let Some(s) = sessions.get_mut(&client) {
                s.queue.push((seq, entry));
            }
        }
        for row in open(INCOMING)?.iter().map_err(|e| self.backend_err(e))? {
            let (k, _) = row.map_err(|e| self.backend_err(e))?;
            let (client, rest) = split_client_key(k.value())
                .ok_or_else(|| self.corrupt("incoming_qos2", "bad key"))?;
            let id = u16::from_be_bytes(
                rest.try_into()
                    .map_err(|_| self.corrupt("incoming_qos2", "bad packet id"))?,
            );
            if let Some(s) = sessions.get_mut(&client) {
                s.incoming.push(id);
            }
        }
        let mut retained = Vec::new();
        for row in open(RETAINED)?.iter().map_err(|e| self.backend_err(e))? {
            let (_, v) = row.map_err(|e| self.backend_err(e))?;
            retained.push(Arc::new(
                decode_message(v.value()).map_err(|e| self.corrupt("retained", e))?,
            ));
        }
        Ok(Snapshot {
            sessions: sessions.into_values().collect(),
            retained,
        })
    }

    fn commit(&self, ops: &[StoreOp], sync: bool) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.backend_err(e))?;
        txn.set_durability(if sync {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(|e| self.backend_err(e))?;
        self.apply(&txn, ops).map_err(|e| self.backend_err(e))?;
        txn.commit().map_err(|e| self.backend_err(e))
    }

    fn disk_bytes(&self) -> u64 {
        std::fs::metadata(&self.file).map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use pigeon_codec::{PublishProperties, QoS, SubscriptionOptions};
    use pigeon_core::store::{QueueEntry, SessionRecord};
    use pigeon_core::Message;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pigeon-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn entry(payload: &'static [u8]) -> QueueEntry {
        let m = Message::new(
            ByteStr::from("t/1"),
            Bytes::from_static(payload),
            QoS::AtLeastOnce,
            false,
            PublishProperties::default(),
            None,
        );
        QueueEntry {
            message: Arc::new(m),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![],
            packet_id: 0,
            stage: None,
        }
    }

    #[tokio::test]
    async fn what_is_committed_is_loaded_after_reopening() {
        let dir = temp_dir("reopen");
        let c = ByteStr::from("client-1");
        {
            let store = EmbeddedStore::open(&dir).expect("open");
            let ops = vec![
                StoreOp::SessionPut {
                    client_id: c.clone(),
                    record: SessionRecord {
                        expiry_interval: 60,
                        disconnected_at_ms: Some(5),
                        will: None,
                    },
                },
                StoreOp::SubscriptionPut {
                    client_id: c.clone(),
                    filter: ByteStr::from("t/#"),
                    options: SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        ..Default::default()
                    },
                    id: Some(4),
                },
                StoreOp::QueuePut {
                    client_id: c.clone(),
                    seq: 2,
                    entry: entry(b"two"),
                },
                StoreOp::QueuePut {
                    client_id: c.clone(),
                    seq: 1,
                    entry: entry(b"one"),
                },
                StoreOp::QueuePut {
                    client_id: c.clone(),
                    seq: 3,
                    entry: entry(b"three"),
                },
                StoreOp::QueueDelete {
                    client_id: c.clone(),
                    seq: 2,
                },
                StoreOp::IncomingPut {
                    client_id: c.clone(),
                    packet_id: 9,
                },
            ];
            store.commit(&ops, true).expect("commit");
        }
        let store = EmbeddedStore::open(&dir).expect("reopen");
        let snap = store.load().expect("load");
        assert_eq!(snap.sessions.len(), 1);
        let s = &snap.sessions[0];
        assert_eq!(
            (
                s.client_id.as_str(),
                s.record.expiry_interval,
                s.record.disconnected_at_ms
            ),
            ("client-1", 60, Some(5))
        );
        assert_eq!(s.subscriptions.len(), 1);
        assert_eq!(
            (
                s.subscriptions[0].0.as_str(),
                s.subscriptions[0].1.qos,
                s.subscriptions[0].2
            ),
            ("t/#", QoS::ExactlyOnce, Some(4))
        );
        let payloads: Vec<&[u8]> = s
            .queue
            .iter()
            .map(|(_, e)| &e.message.payload[..])
            .collect();
        assert_eq!(
            payloads,
            vec![&b"one"[..], &b"three"[..]],
            "in sequence order, deleted one gone"
        );
        assert_eq!(s.incoming, vec![9]);

        store
            .commit(&[StoreOp::SessionDelete { client_id: c }], true)
            .expect("delete");
        let snap = store.load().expect("load");
        assert!(snap.sessions.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_that_is_not_a_store_is_an_error_naming_it() {
        let dir = temp_dir("corrupt");
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join(EmbeddedStore::FILE_NAME), vec![0x5a; 8192]).expect("write junk");
        let err = EmbeddedStore::open(&dir).err().expect("junk must not open");
        assert!(err.to_string().contains("pigeon.redb"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
