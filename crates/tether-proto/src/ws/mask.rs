//! Masking (RFC 6455 §5.3): XOR of the payload with a 4-byte key, repeated.
//!
//! Theory of operation: masking is its own inverse, so one function both masks
//! (client sending) and unmasks (server receiving). A frame's payload may arrive
//! over several reads, so the function takes the position in the key stream
//! (`offset`, the number of payload bytes already processed) and rotates the
//! key accordingly. The hot loop works on 8-byte words (`chunks_exact_mut(8)`
//! with `u64::from_ne_bytes`, which the compiler turns into unaligned word or
//! SIMD loads), and only the tail of fewer than 8 bytes is done a byte at a
//! time. No head loop is needed because word loads here are unaligned-safe.

/// XORs `buf` in place with `key`, where `buf[0]` is byte number `offset` of
/// the payload (so `buf[0]` is combined with `key[offset % 4]`).
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let shift = offset % 4;
    let rotated = [
        key[shift],
        key[(shift + 1) % 4],
        key[(shift + 2) % 4],
        key[(shift + 3) % 4],
    ];
    let word = u64::from_ne_bytes([
        rotated[0], rotated[1], rotated[2], rotated[3], rotated[0], rotated[1], rotated[2], rotated[3],
    ]);
    let mut words = buf.chunks_exact_mut(8);
    for chunk in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        let masked = u64::from_ne_bytes(bytes) ^ word;
        chunk.copy_from_slice(&masked.to_ne_bytes());
    }
    // The tail starts at a multiple of 8, hence of 4: the key phase is unchanged.
    for (i, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= rotated[i % 4];
    }
}

/// The reference byte-at-a-time loop, kept for tests and benchmarks.
pub fn apply_mask_bytewise(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= key[(offset + i) % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    #[test]
    fn matches_bytewise_for_all_lengths_and_offsets() {
        for len in 0..100usize {
            for offset in 0..8usize {
                let original: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let mut fast = original.clone();
                let mut slow = original.clone();
                apply_mask(&mut fast, KEY, offset);
                apply_mask_bytewise(&mut slow, KEY, offset);
                assert_eq!(fast, slow, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn rfc_example_hello() {
        // RFC 6455 §5.7: masked "Hello" with key 37 fa 21 3d.
        let mut payload = *b"Hello";
        apply_mask(&mut payload, KEY, 0);
        assert_eq!(payload, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }

    #[test]
    fn split_processing_equals_whole() {
        let original: Vec<u8> = (0..53u8).collect();
        let mut whole = original.clone();
        apply_mask(&mut whole, KEY, 0);
        for split in 0..original.len() {
            let mut parts = original.clone();
            let (a, b) = parts.split_at_mut(split);
            apply_mask(a, KEY, 0);
            apply_mask(b, KEY, split);
            assert_eq!(parts, whole, "split at {split}");
        }
    }

    proptest! {
        #[test]
        fn prop_matches_bytewise(data in proptest::collection::vec(any::<u8>(), 0..300),
                                 key in any::<[u8; 4]>(), offset in 0usize..64) {
            let mut fast = data.clone();
            let mut slow = data.clone();
            apply_mask(&mut fast, key, offset);
            apply_mask_bytewise(&mut slow, key, offset);
            prop_assert_eq!(&fast, &slow);
            apply_mask(&mut fast, key, offset);
            prop_assert_eq!(fast, data);
        }
    }
}
