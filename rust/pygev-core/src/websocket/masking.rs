//! A client masks every frame it sends (RFC 6455 section 5.3) with a fresh 32-bit key that
//! the application cannot predict: here from a fast generator (wyrand) seeded once from
//! the operating system's randomness, never a constant and never a key the caller picks.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use super::frames::unmask_into;

/// Masking keys for one loop's client connections.
#[derive(Debug, Clone)]
pub struct MaskKeys {
    state: u64,
}

impl Default for MaskKeys {
    fn default() -> Self {
        Self::new()
    }
}

impl MaskKeys {
    /// A generator seeded from the operating system (through the standard library's
    /// randomly keyed hasher, which draws its keys from it).
    pub fn new() -> Self {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(std::process::id().into());
        MaskKeys {
            state: hasher.finish(),
        }
    }

    /// The next key.
    #[inline]
    pub fn next_key(&mut self) -> [u8; 4] {
        // wyrand: one multiply per key, passes the usual statistical tests.
        self.state = self.state.wrapping_add(0xa076_1d64_78bd_642f);
        let product = u128::from(self.state) * u128::from(self.state ^ 0xe703_7ed1_a0b4_28db);
        let mixed = (product >> 64) as u64 ^ product as u64;
        (mixed as u32).to_ne_bytes()
    }
}

/// Appends a client frame (masked with `mask`) of `kind` carrying `payload`.
pub fn write_masked_frame(
    out: &mut Vec<u8>,
    kind: u8,
    fin: bool,
    rsv1: bool,
    payload: &[u8],
    mask: [u8; 4],
) {
    out.reserve(payload.len() + 14);
    out.push(u8::from(fin) << 7 | u8::from(rsv1) << 6 | kind);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    unmask_into(out, payload, mask); // (masking and unmasking are the same XOR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::websocket::frames::{opcode, write_frame, Deliver, Message, Reader};

    /// What a reader delivered: (is text, payload) per data message, and control frames.
    #[derive(Default)]
    struct Got(Vec<(bool, Vec<u8>)>, Vec<Message>);

    impl Deliver for Got {
        fn data(&mut self, text: bool, payload: &[u8]) {
            self.0.push((text, payload.to_vec()));
        }
        fn control(&mut self, message: Message) {
            self.1.push(message);
        }
    }

    #[test]
    fn keys_change_and_generators_differ() {
        let mut keys = MaskKeys::new();
        let first: Vec<[u8; 4]> = (0..64).map(|_| keys.next_key()).collect();
        let distinct: std::collections::HashSet<_> = first.iter().collect();
        assert!(distinct.len() > 60, "keys repeat: {first:?}");
        let mut other = MaskKeys::new();
        let second: Vec<[u8; 4]> = (0..64).map(|_| other.next_key()).collect();
        assert_ne!(first, second, "two generators gave the same keys");
    }

    #[test]
    fn a_masked_frame_reads_back_on_the_server_side() {
        let mut keys = MaskKeys::new();
        for size in [0usize, 5, 125, 126, 65_535, 65_536, 100_000] {
            let payload: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
            let mut wire = Vec::new();
            write_masked_frame(
                &mut wire,
                opcode::BINARY,
                true,
                false,
                &payload,
                keys.next_key(),
            );
            let mut got = Got::default();
            let used = Reader::new(1 << 20, false).read(&wire, &mut got).unwrap();
            assert_eq!(used, wire.len());
            assert_eq!(got.0, vec![(false, payload)]);
        }
    }

    #[test]
    fn a_client_reads_unmasked_frames_and_refuses_masked_ones() {
        let mut wire = Vec::new();
        write_frame(&mut wire, opcode::TEXT, true, false, b"hello");
        let mut got = Got::default();
        let mut client = Reader::for_client(1 << 20, false);
        assert_eq!(client.read(&wire, &mut got).unwrap(), wire.len());
        assert_eq!(got.0, vec![(true, b"hello".to_vec())]);
        let mut masked = Vec::new();
        write_masked_frame(
            &mut masked,
            opcode::TEXT,
            true,
            false,
            b"hello",
            [1, 2, 3, 4],
        );
        let err = Reader::for_client(1 << 20, false)
            .read(&masked, &mut Got::default())
            .unwrap_err();
        assert_eq!(err.code, 1002);
    }
}
