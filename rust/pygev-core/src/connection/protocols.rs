//! The framings a loop runs: the server's own, and those outgoing connections were dialed
//! with. A connection names its framing by a small index into this table, so that it
//! costs the connection two bytes, not a pointer.

use std::collections::HashMap;
use std::sync::Arc;

use crate::protocols::Protocol;

/// A framing in use, and what the loop asks of it often.
struct Entry {
    protocol: Arc<dyn Protocol>,
    /// `protocol.has_ticks()`, asked once.
    ticks: bool,
    /// The most unparsed input a connection may hold with it: the server's
    /// `max_input_buffer`, raised to what one of its frames may need.
    max_input: usize,
    /// Connections using it; the entry is dropped at 0 (never the server's, index 0).
    users: usize,
}

/// The loop's framings, by index; index 0 is the server's.
pub(super) struct ProtocolTable {
    entries: Vec<Option<Entry>>,
    free: Vec<u16>,
    /// Each dialed framing's index, by the address of its object.
    index_of: HashMap<usize, u16>,
    max_input_buffer: usize,
}

/// The server's framing's index.
pub(super) const SERVER_PROTOCOL: u16 = 0;

impl ProtocolTable {
    /// A table holding the server's framing.
    pub(super) fn new(protocol: Arc<dyn Protocol>, max_input_buffer: usize) -> Self {
        let mut table = ProtocolTable {
            entries: Vec::new(),
            free: Vec::new(),
            index_of: HashMap::new(),
            max_input_buffer,
        };
        let entry = table.entry(protocol);
        table.entries.push(Some(entry));
        table
    }

    fn entry(&self, protocol: Arc<dyn Protocol>) -> Entry {
        Entry {
            ticks: protocol.has_ticks(),
            max_input: self.max_input_buffer.max(protocol.max_buffered_input()),
            protocol,
            users: 0,
        }
    }

    fn live(&self, index: u16) -> &Entry {
        self.entries[usize::from(index)]
            .as_ref()
            .expect("a connection's framing stays in the table while it is open")
    }

    /// The framing at `index`.
    #[inline]
    pub(super) fn get(&self, index: u16) -> &Arc<dyn Protocol> {
        &self.live(index).protocol
    }

    /// Whether the framing at `index` has ticks.
    #[inline]
    pub(super) fn ticks(&self, index: u16) -> bool {
        self.live(index).ticks
    }

    /// The most unparsed input a connection with the framing at `index` may hold.
    #[inline]
    pub(super) fn max_input(&self, index: u16) -> usize {
        self.live(index).max_input
    }

    /// The index for one more connection using `protocol` (the entry already holding the
    /// same framing object, or a new one); `None` when the table is full.
    pub(super) fn adopt(&mut self, protocol: Arc<dyn Protocol>) -> Option<u16> {
        if Arc::ptr_eq(self.get(SERVER_PROTOCOL), &protocol) {
            return Some(SERVER_PROTOCOL); // never counted, never released
        }
        let key = object_key(&protocol);
        let index = match self.index_of.get(&key) {
            Some(&index) => index,
            None => {
                let entry = Some(self.entry(protocol));
                let index = match self.free.pop() {
                    Some(index) => {
                        self.entries[usize::from(index)] = entry;
                        index
                    }
                    None => {
                        let index = u16::try_from(self.entries.len()).ok()?;
                        self.entries.push(entry);
                        index
                    }
                };
                self.index_of.insert(key, index);
                index
            }
        };
        if let Some(entry) = self.entries[usize::from(index)].as_mut() {
            entry.users += 1;
        }
        Some(index)
    }

    /// A connection using the framing at `index` closed.
    pub(super) fn release(&mut self, index: u16) {
        if index == SERVER_PROTOCOL {
            return;
        }
        let slot = &mut self.entries[usize::from(index)];
        if let Some(entry) = slot.as_mut() {
            entry.users -= 1;
            if entry.users == 0 {
                self.index_of.remove(&object_key(&entry.protocol));
                *slot = None;
                self.free.push(index);
            }
        }
    }
}

/// What tells framing objects apart: the address of the object (an entry holds it, so
/// the address is not reused while the entry lives).
fn object_key(protocol: &Arc<dyn Protocol>) -> usize {
    Arc::as_ptr(protocol).cast::<()>() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::{ByteOrder, LengthPrefix, Raw};

    #[test]
    fn entries_are_shared_by_object_and_dropped_with_their_last_user() {
        let server: Arc<dyn Protocol> = Arc::new(Raw);
        let mut table = ProtocolTable::new(server.clone(), 1024);
        assert_eq!(table.adopt(server.clone()), Some(SERVER_PROTOCOL));
        let framing: Arc<dyn Protocol> =
            Arc::new(LengthPrefix::new(4, ByteOrder::Big, 1 << 20).unwrap());
        let a = table.adopt(framing.clone()).unwrap();
        assert_eq!(
            table.adopt(framing.clone()),
            Some(a),
            "same object, same entry"
        );
        assert_eq!(table.max_input(a), 1024.max(framing.max_buffered_input()));
        let other: Arc<dyn Protocol> = Arc::new(Raw);
        let b = table.adopt(other.clone()).unwrap();
        assert_ne!(a, b);
        table.release(a);
        assert_eq!(Arc::strong_count(&framing), 2, "one user left");
        table.release(a);
        assert_eq!(Arc::strong_count(&framing), 1, "dropped with its last user");
        let c = table.adopt(framing.clone()).unwrap();
        assert_eq!(c, a, "a freed slot is reused");
        table.release(SERVER_PROTOCOL); // the server's stays
        assert_eq!(table.get(SERVER_PROTOCOL).name(), "raw");
        table.release(b);
        assert_eq!(Arc::strong_count(&other), 1);
    }
}
