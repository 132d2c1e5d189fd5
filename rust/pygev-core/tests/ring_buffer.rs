//! `RingBuffer` against a simple model (a `VecDeque` plus a virtual cursor).

use std::collections::VecDeque;

use proptest::prelude::*;
use pygev_core::RingBuffer;

#[derive(Debug, Clone)]
enum Op {
    Write(Vec<u8>),
    Read(usize),
    Retrieve(usize),
    RetrieveAll,
    Peek(usize),
    VirtualRead(usize),
    VirtualFlush,
    VirtualRevert,
    MakeContiguous,
    WriteContiguous(Vec<u8>),
    WriteTo(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..700).prop_map(Op::Write),
        2 => (0usize..800).prop_map(Op::Read),
        2 => (0usize..800).prop_map(Op::Retrieve),
        1 => Just(Op::RetrieveAll),
        1 => (0usize..800).prop_map(Op::Peek),
        3 => (0usize..300).prop_map(Op::VirtualRead),
        1 => Just(Op::VirtualFlush),
        1 => Just(Op::VirtualRevert),
        1 => Just(Op::MakeContiguous),
        2 => prop::collection::vec(any::<u8>(), 0..700).prop_map(Op::WriteContiguous),
        1 => (0usize..900).prop_map(Op::WriteTo),
    ]
}

/// A writer that accepts at most `limit` bytes per call.
struct Limited {
    taken: Vec<u8>,
    limit: usize,
}

impl std::io::Write for Limited {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.limit == 0 {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.limit);
        self.taken.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn behaves_like_a_deque(ops in prop::collection::vec(op(), 1..80)) {
        let mut buf = RingBuffer::new();
        let mut model: VecDeque<u8> = VecDeque::new();
        let mut cursor = 0usize; // virtual reads not yet flushed
        for op in ops {
            match op {
                Op::Write(data) => {
                    buf.write(&data);
                    model.extend(&data);
                }
                Op::Read(n) => {
                    let mut out = vec![0; n];
                    let got = buf.read(&mut out);
                    let want: Vec<u8> = model.drain(..n.min(model.len())).collect();
                    prop_assert_eq!(&out[..got], &want[..]);
                    cursor = 0;
                }
                Op::Retrieve(n) => {
                    buf.retrieve(n);
                    model.drain(..n.min(model.len()));
                    cursor = 0;
                }
                Op::RetrieveAll => {
                    buf.retrieve_all();
                    model.clear();
                    cursor = 0;
                }
                Op::Peek(n) => {
                    let (a, b) = buf.peek(n);
                    let got = [a, b].concat();
                    let want: Vec<u8> = model.iter().take(n).copied().collect();
                    prop_assert_eq!(got, want);
                }
                Op::VirtualRead(n) => {
                    let mut out = vec![0; n];
                    let got = buf.virtual_read(&mut out);
                    let want: Vec<u8> = model.iter().skip(cursor).take(n).copied().collect();
                    prop_assert_eq!(&out[..got], &want[..]);
                    cursor += got;
                }
                Op::VirtualFlush => {
                    buf.virtual_flush();
                    model.drain(..cursor);
                    cursor = 0;
                }
                Op::VirtualRevert => {
                    buf.virtual_revert();
                    cursor = 0;
                }
                Op::MakeContiguous => {
                    let got = buf.make_contiguous().to_vec();
                    prop_assert_eq!(got, model.iter().copied().collect::<Vec<_>>());
                }
                Op::WriteContiguous(data) => {
                    model.extend(&data);
                    let got = buf.write_contiguous(&data).to_vec();
                    prop_assert_eq!(got, model.iter().copied().collect::<Vec<_>>());
                }
                Op::WriteTo(limit) => {
                    let mut sink = Limited { taken: Vec::new(), limit };
                    match buf.write_to(&mut sink) {
                        Ok(n) => {
                            let want: Vec<u8> = model.drain(..n).collect();
                            prop_assert_eq!(sink.taken, want);
                            cursor = 0;
                        }
                        Err(e) => prop_assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
                    }
                }
            }
            prop_assert_eq!(buf.len(), model.len());
            prop_assert_eq!(buf.virtual_length(), model.len() - cursor);
            prop_assert_eq!(buf.bytes(), model.iter().copied().collect::<Vec<_>>());
            prop_assert!(buf.capacity() >= buf.len());
            if buf.is_empty() {
                // An empty buffer holds no memory: idle connections cost nothing.
                prop_assert_eq!(buf.capacity(), 0);
            }
        }
    }

    #[test]
    fn drained_buffer_owns_no_memory(chunks in prop::collection::vec(1usize..5000, 1..10)) {
        let mut buf = RingBuffer::new();
        for n in &chunks {
            buf.write(&vec![7; *n]);
        }
        let total: usize = chunks.iter().sum();
        let mut out = vec![0; total];
        prop_assert_eq!(buf.read(&mut out), total);
        prop_assert_eq!(buf.capacity(), 0);
    }
}
