//! A client masks every frame it sends (RFC 6455 section 5.3) with a fresh 32-bit key from
//! a strong source of entropy, which the application cannot predict: aws-lc's random
//! generator (the crypto rustls runs on), drawn a kilobyte at a time into a pool per
//! thread, so a key costs a copy of four bytes. The handshake's `Sec-WebSocket-Key` comes
//! from the same generator.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use super::frames::{unmask_into, write_header};

/// Bytes drawn from the generator at a time.
const POOL: usize = 1024;

struct Pool {
    bytes: [u8; POOL],
    used: usize,
    /// The [`FORKS`] count the bytes were drawn under.
    forks: u64,
}

thread_local! {
    static KEYS: RefCell<Pool> =
        const { RefCell::new(Pool { bytes: [0; POOL], used: POOL, forks: 0 }) };
}

/// How many times this process was forked off: a child (a worker process) must not mask
/// with the rest of its parent's pool, which its siblings hold too.
static FORKS: AtomicU64 = AtomicU64::new(0);
static WATCH_FORKS: Once = Once::new();

extern "C" fn forked() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// Draws a new pool (the first one registers the fork watch).
#[cold]
fn refill(pool: &mut Pool, forks: u64) {
    WATCH_FORKS.call_once(|| {
        // SAFETY: `forked` is an `extern "C" fn()` that only increments an atomic, which is
        // async-signal-safe, as a child handler of pthread_atfork must be.
        unsafe { libc::pthread_atfork(None, None, Some(forked)) };
    });
    fill_random(&mut pool.bytes);
    pool.used = 0;
    pool.forks = forks;
}

/// Fills `out` from the operating system's entropy (through aws-lc's generator).
pub fn fill_random(out: &mut [u8]) {
    // NOTE: aws-lc's generator fails only if the system's entropy source does: nothing
    // sensible can go on then.
    aws_lc_rs::rand::fill(out).expect("the system's random generator failed");
}

/// A fresh masking key.
#[inline]
pub fn next_key() -> [u8; 4] {
    KEYS.with(|pool| {
        let mut pool = pool.borrow_mut();
        let forks = FORKS.load(Ordering::Relaxed);
        if pool.used + 4 > POOL || pool.forks != forks {
            refill(&mut pool, forks);
        }
        let at = pool.used;
        pool.used += 4;
        [
            pool.bytes[at],
            pool.bytes[at + 1],
            pool.bytes[at + 2],
            pool.bytes[at + 3],
        ]
    })
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
    write_header(out, kind, fin, rsv1, payload.len(), true);
    out.extend_from_slice(&mask);
    unmask_into(out, payload, mask); // (masking and unmasking are the same XOR)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_forked_child_draws_a_pool_of_its_own() {
        let _ = next_key();
        let inherited = KEYS.with(|pool| {
            let pool = pool.borrow();
            pool.bytes[pool.used.min(POOL - 4)..][..4].to_vec()
        });
        forked(); // as pthread_atfork calls it in the child
        let first = next_key();
        assert_ne!(
            first.to_vec(),
            inherited,
            "the parent's next key was not reused"
        );
        KEYS.with(|pool| assert_eq!(pool.borrow().forks, FORKS.load(Ordering::Relaxed)));
    }

    use super::*;
    use crate::websocket::frames::{opcode, write_frame, Message};
    use crate::websocket::reader::{Deliver, Reader};

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
    fn keys_change_across_refills_and_threads() {
        let first: Vec<[u8; 4]> = (0..1000).map(|_| next_key()).collect();
        let distinct: std::collections::HashSet<_> = first.iter().collect();
        assert!(distinct.len() > 990, "keys repeat");
        let other = std::thread::spawn(|| (0..1000).map(|_| next_key()).collect::<Vec<_>>());
        assert_ne!(
            first,
            other.join().unwrap(),
            "two threads drew the same keys"
        );
    }

    #[test]
    fn a_masked_frame_reads_back_on_the_server_side() {
        for size in [0usize, 5, 125, 126, 65_535, 65_536, 100_000] {
            let payload: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
            let mut wire = Vec::new();
            write_masked_frame(&mut wire, opcode::BINARY, true, false, &payload, next_key());
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
        write_frame(&mut wire, opcode::BINARY, true, false, b"\x00\x01");
        let mut got = Got::default();
        let mut client = Reader::for_client(1 << 20, false);
        assert_eq!(client.read(&wire, &mut got).unwrap(), wire.len());
        assert_eq!(got.0, vec![(true, b"hello".to_vec()), (false, vec![0, 1])]);
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
